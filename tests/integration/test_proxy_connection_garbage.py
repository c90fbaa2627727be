"""A closed connection is freed when it ends, by reference counting: none of its objects are
left in reference cycles for the garbage collector. That matters beyond the collector's work:
the proxy freezes its heap after each config swap (`reload.settle_heap`), and a frozen object
in a cycle is never collected, so every connection open at a reload would have stayed in
memory for good once closed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.upstream import UpstreamConnection
from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import connect, get, raw_upstream, read_request, read_response

CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def alive(kind: type) -> int:
    """Objects of ``kind`` the collector tracks: alive, or cyclic garbage not yet collected."""
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()  # what earlier tests left
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_closed_client_and_upstream_connections_leave_no_cycles(
    start_proxy: StartProxy,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # odd requests end their upstream connection, even ones keep it
            head, _ = await read_request(reader)
            n = int(head.split(b" ", 2)[1].strip(b"/"))
            writer.write(CLOSE if n % 2 else KEEP)
            await writer.drain()
            if n % 2:
                return  # (raw_upstream closes it)

    async with raw_upstream(answer) as up:
        proxy = await start_proxy(route(up.url))
        ctx = proxy.ctx
        assert ctx is not None
        with collector_off():
            for n in range(40):  # each on a new client connection, closed by the client
                async with connect(proxy.listen_port) as (reader, writer):
                    writer.write(get(f"/{n}"))
                    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
            for _ in range(100):  # the proxy sees each close
                if not ctx.connections:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not ctx.connections
            assert up.closed >= 20  # the upstream ended half of its connections
            assert alive(ClientConnection) == 0
            pooled = sum(pool.open_count for pool in proxy.pools.pools.values())
            assert alive(UpstreamConnection) == pooled  # only the ones kept for reuse


async def test_upstream_connections_that_never_connect_leave_no_cycles(
    start_proxy: StartProxy, refused_port: Callable[[], int]
) -> None:
    proxy = await start_proxy(route(f"http://127.0.0.1:{refused_port()}"))
    with collector_off():
        for n in range(20):
            async with connect(proxy.listen_port) as (reader, writer):
                writer.write(get(f"/{n}"))
                assert (await asyncio.wait_for(read_response(reader), 5)).status == 502
        await asyncio.sleep(0.05)
        # uvloop makes the protocol before it connects, and one whose connect fails gets no
        # `connection_lost`
        assert alive(UpstreamConnection) == 0
