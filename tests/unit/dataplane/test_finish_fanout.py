"""A finished exchange reaches the recorder and then the access log (`ProxyContext.log`),
called by the exchange itself, in the order and with the exchanges the former fan-out object
(`logs.Observers`) gave them, whatever the exchange's end."""

from __future__ import annotations

import pytest

from splitproxy.dataplane.exchange import Exchange
from splitproxy.logs import Observers
from tests.unit.dataplane.harness import Proxy, get

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Heard:
    """What the recorder and the log heard, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, int]] = []

    def exchange_started(self, ex: Exchange) -> None:
        self.events.append(("started", ex.target, ex.status))

    def exchange_finished(self, ex: Exchange) -> None:
        self.events.append(("finished", ex.target, ex.status))

    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None:
        self.events.append((f"failed {version} {kind}", ex.target, ex.status))

    def log(self, ex: Exchange) -> None:
        self.events.append(("logged", ex.target, ex.status))


async def serve(through_observers: bool, ending: str) -> list[tuple[str, bytes, int]]:
    heard = Heard()
    proxy = Proxy()
    if through_observers:  # as before: one object fanned each exchange out to both
        proxy.ctx.observer = Observers(heard, heard)  # type: ignore[arg-type]
    else:
        proxy.ctx.observer, proxy.ctx.log = heard, heard.log
    client = proxy.client()
    if ending == "bad request":  # answered by the proxy before any routing
        client.send(b"GET /a HTTP/1.1\r\n\r\n")
        await client.settle()
        return heard.events
    client.send(get("/a"))
    await client.settle()
    up = await proxy.upstream()
    if ending == "answered":
        up.reply(OK)
    elif ending == "reset":  # and again on the replay: a 502
        up.lost()
        await client.settle()
        (await proxy.upstream(n=2)).lost()
    else:
        client.conn.connection_lost(None)
    await client.settle()
    return heard.events


@pytest.mark.parametrize("ending", ["answered", "reset", "client gone", "bad request"])
async def test_the_recorder_then_the_log_hear_each_exchange_as_through_observers(
    ending: str,
) -> None:
    direct = await serve(False, ending)
    assert direct == await serve(True, ending)
    assert [e for e, _, _ in direct if e in ("finished", "logged")] == ["finished", "logged"]
