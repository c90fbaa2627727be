"""The usual response's head without `response_head` (`Exchange.upstream_head`, from
`heads.Prepared.framed`): a kept upstream head that comes back gives each client the bytes the
full computation gives, whatever differs per response (the request id, the client's version
and keep-alive, a HEAD request, a sticky cookie to set, a head that closes or is chunked)."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitproxy.dataplane import exchange as exchange_module
from splitproxy.dataplane.context import RequestIds
from tests.unit.dataplane.harness import CANDIDATE_URL, STABLE_URL, Proxy

ROUTES: dict[str, Any] = {
    "routes": [
        {
            "name": "app",
            "stable": STABLE_URL,
            "candidate": CANDIDATE_URL,
            "weight": 50,
            "sticky": {"cookie": "sid"},
        }
    ]
}

# upstream heads that come back again and again (each kept by its bytes after the first)
UPSTREAM_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nServer: s\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Request-ID: theirs\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: %d\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nServer: s\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: s\r\nContent-Length: %d\r\n\r\n",
]

requests = st.tuples(
    st.sampled_from([b"GET", b"GET", b"HEAD"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"", b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n"]),
    st.sampled_from([b"", b"", b"X-Request-ID: mine-1\r\n", b"X-Request-ID: mine-2\r\n"]),
    st.sampled_from([b"Cookie: sid=u1\r\n", b"Cookie: sid=u1\r\n", b""]),
    st.integers(0, len(UPSTREAM_HEADS) - 1),
)


class _NotFields:
    """Stands for `heads.Fields` in the exchange: no head is ever taken for a kept one."""


async def _run(exchanges: list[tuple[bytes, bytes, bytes, bytes, bytes, int]]) -> list[bytes]:
    """What the client and the upstream connections got, request by request."""
    proxy = Proxy(ROUTES, rng=random.Random(7).getrandbits)
    proxy.ctx.request_ids = RequestIds(b"t")
    client = proxy.client()
    seen: list[bytes] = []
    for method, version, connection, rid, cookie, which in exchanges:
        client.send(
            b"%s /p HTTP%s\r\nHost: app.test\r\n%s%s%s\r\n"
            % (method, version[4:], connection, rid, cookie)
        )
        await client.settle()  # (a connection to open)
        ex = proxy.observer.started[-1] if proxy.observer.started else None
        if ex is None or ex.up is None:
            break  # (the connection closed after the last answer: no more requests read)
        head = UPSTREAM_HEADS[which]
        body = b"0123456789"
        if b"chunked" in head:
            reply = head + b"a\r\n0123456789\r\n0\r\n\r\n"
        elif b"204" in head:
            reply = head
        else:
            reply = (head % len(body)) + (body if method != b"HEAD" else b"")
        up = ex.up
        up.data_received(reply)
        if not ex.finished:  # (a body until close: its end)
            up.connection_lost(None)
        assert ex.finished
        seen.append(client.transport.take())
        proxy.observer.started.clear()
        if client.transport.closed:
            break
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=8))
async def test_a_kept_upstream_head_gives_the_full_paths_bytes(
    exchanges: list[tuple[bytes, bytes, bytes, bytes, bytes, int]],
) -> None:
    got = await _run(exchanges)
    with mock.patch.object(exchange_module, "Fields", _NotFields):
        want = await _run(exchanges)
    assert got == want
    assert got  # (the first request is always answered)


async def test_the_same_upstream_head_twice_echoes_each_requests_own_id() -> None:
    got = await _run(
        [
            (b"GET", b"HTTP/1.1", b"", b"X-Request-ID: first\r\n", b"Cookie: sid=u1\r\n", 0),
            (b"GET", b"HTTP/1.1", b"", b"X-Request-ID: second\r\n", b"Cookie: sid=u1\r\n", 0),
        ]
    )
    assert [b"X-Request-ID: first\r\n" in r for r in got] == [True, False]
    assert [b"X-Request-ID: second\r\n" in r for r in got] == [False, True]
    assert all(r.count(b"X-Request-ID") == 1 for r in got)
