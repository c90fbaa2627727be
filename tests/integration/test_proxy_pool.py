"""Connections: keep-alive on both sides, pipelining, the upstream pool (stale and idle
connections, no hidden cap)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import (
    Seen,
    connect,
    exchange,
    get,
    raw_upstream,
    read_eof,
    read_request,
    read_response,
    recording_app,
)


async def test_keep_alive_on_both_sides(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        for i in range(20):
            writer.write(get(f"/{i}"))
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            assert resp.header("Connection") is None
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.get(f"http://127.0.0.1:{proxy.listen_port}/s{i}") as r:
                assert r.status == 200
                await r.read()
    assert len(seen) == 40
    assert len({r.peer_port for r in seen}) == 1  # one upstream connection served all


async def test_client_connection_close_does_not_close_the_upstream_connection(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    for _ in range(5):
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(get(extra="Connection: close\r\n"))
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            assert resp.header("Connection") == "close"
            assert await read_eof(reader) == b""
    assert len({r.peer_port for r in seen}) == 1


async def test_http10_client_keep_alive(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        for _ in range(3):
            writer.write(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            assert resp.header("Connection") == "keep-alive"
            assert resp.body == b"ok"
        writer.write(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.header("Connection") == "close"
        assert await read_eof(reader) == b""


async def test_pipelined_requests_are_answered_in_order(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("delay", "0")))
        body = await request.read()
        return web.Response(body=request.path.encode() + b"|" + body)

    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen, respond))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(
            get("/1?delay=0.2")
            + b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
            + b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"2\r\nch\r\n0\r\n\r\n"
            + b"HEAD /4 HTTP/1.1\r\nHost: a\r\n\r\n"
            + get("/5?delay=0.05")
            + get("/6", extra="Connection: close\r\n")
            + get("/7")  # after Connection: close: never answered
        )
        bodies = []
        for i in range(6):
            resp = await asyncio.wait_for(read_response(reader, head_only=i == 3), 5)
            assert resp.status == 200
            bodies.append(resp.body)
        assert bodies == [b"/1|", b"/2|body", b"/3|ch", b"", b"/5|", b"/6|"]
        assert resp.header("Connection") == "close"
        assert await read_eof(reader) == b""
    assert [r.raw_path.split("?")[0] for r in seen] == ["/1", "/2", "/3", "/4", "/5", "/6"]


async def test_a_malformed_pipelined_request_is_answered_in_turn(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.1)
        return web.Response(text=request.path)

    up = await aiohttp_server(recording_app([], respond))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(get("/1") + b"GET /2 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader), 5)
        assert (first.status, first.body) == (200, b"/1")
        second = await asyncio.wait_for(read_response(reader), 5)
        assert second.status == 400
        assert second.header("Connection") == "close"
        assert await read_eof(reader) == b""


async def test_a_client_that_half_closes_still_gets_its_answer(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.1)
        return web.Response(text="answered")

    up = await aiohttp_server(recording_app([], respond))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(get())
        writer.write_eof()
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.body == b"answered"
        assert resp.header("Connection") == "close"
        assert await read_eof(reader) == b""
    # pipelined requests then a half-close (``printf ... | nc -N``): all of them are answered
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(get() * 3)
        writer.write_eof()
        for i in range(3):
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.body == b"answered"
            assert resp.header("Connection") == ("close" if i == 2 else None)
        assert await read_eof(reader) == b""


async def test_upstream_connection_close_is_honoured(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # the proxy is the one to close

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(3):
                writer.write(get())
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.body == b"ok"
                assert resp.header("Connection") is None  # the client keeps its connection
        assert up.accepted == 3


async def test_upstream_that_closes_after_each_response_silently(start_proxy: StartProxy) -> None:
    """No Connection: close, yet the connection ends after each response: the pool notices
    the close and never sends a request into it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(10):
                writer.write(get())
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert (resp.status, resp.body) == (200, b"ok")
                await asyncio.sleep(0.01)
        # POST bodies cannot be replayed: they must never meet a dead pooled connection
        for _ in range(5):
            resp = await exchange(
                proxy.listen_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            )
            assert resp.status == 200
            await asyncio.sleep(0.01)


async def test_stale_pooled_connection_is_replaced(start_proxy: StartProxy) -> None:
    """The close/reuse race: the upstream drops an idle connection just as the proxy sends
    the next request into it (modelled by an upstream that serves one response per
    connection and hangs up on the next request without answering)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(5):
                for method in (b"GET", b"HEAD", b"DELETE"):
                    writer.write(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
                    resp = await asyncio.wait_for(
                        read_response(reader, head_only=method == b"HEAD"), 5
                    )
                    assert resp.status == 200
        assert up.accepted == 15  # each request after the first met a dead one first


async def test_upstream_keepalive_timeout_shorter_than_the_pool(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen), keepalive_timeout=0.2)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), upstream_idle_timeout=30)
    async with connect(proxy.listen_port) as (reader, writer):
        for _ in range(3):
            writer.write(get())
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
            await asyncio.sleep(0.4)  # the upstream closes its idle connection meanwhile
    assert len(seen) == 3
    assert len({r.peer_port for r in seen}) == 3


async def test_idle_pooled_connections_are_closed(start_proxy: StartProxy) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            closed.set()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url), upstream_idle_timeout=0.3)
        assert (await exchange(proxy.listen_port, get())).status == 200
        pool = proxy.pools.pools[("127.0.0.1", up.port)]
        assert pool.idle_count == 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(closed.wait(), 3)
        assert loop.time() - t0 > 0.15
        assert pool.idle_count == 0
        assert pool.open_count == 0
        # and a new request opens a new connection
        assert (await exchange(proxy.listen_port, get())).status == 200
        assert up.accepted == 2


async def test_no_silent_connection_cap(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    n = 200
    active = 0
    peak = 0
    all_in = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active >= n:
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 5)
        finally:
            active -= 1
        return web.Response(text="slow")

    app = web.Application()
    app.router.add_get("/", slow)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_upstream_connections=0)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> int:
            async with s.get(f"http://127.0.0.1:{proxy.listen_port}/") as r:
                await r.read()
                return r.status

        statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 15)
    assert statuses == [200] * n
    assert peak == n


async def test_max_upstream_connections_bounds_the_pool(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_upstream_connections=2)
    for _ in range(10):
        assert (await exchange(proxy.listen_port, get())).status == 200
    assert len({r.peer_port for r in seen}) == 1


async def test_a_retry_does_not_meet_another_dead_pooled_connection(
    start_proxy: StartProxy,
) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/hold" in head:
            await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # every connection dies on its second request

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        # two requests at once leave two idle (and, for the next request, dead) connections
        held = [asyncio.create_task(exchange(proxy.listen_port, get("/hold"))) for _ in range(2)]
        while up.accepted < 2:
            await asyncio.sleep(0.01)
        release.set()
        assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
        pool = proxy.pools.pools[("127.0.0.1", up.port)]
        assert pool.idle_count == 2
        resp = await exchange(proxy.listen_port, get())
        assert (resp.status, resp.body) == (200, b"ok")
        assert up.accepted == 3


async def test_a_client_that_does_not_read_gets_nothing_buffered_for_it(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    """Pipelined requests from a client that reads nothing: each next response is held back
    at the upstream too (the proxy's own write buffer stays near its high-water mark)."""
    body = b"r" * 200_000

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body)

    up = await aiohttp_server(recording_app([], respond))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    assert proxy.ctx is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", proxy.listen_port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    try:
        writer.write(get() * 300)
        peak = 0
        for _ in range(40):
            await asyncio.sleep(0.025)
            for conn in proxy.ctx.connections:
                if conn.transport is not None:
                    peak = max(peak, conn.transport.get_write_buffer_size())
        assert peak < 2 * len(body) + 256 * 1024, peak
        # then it reads: every response arrives, in order and whole
        for _ in range(300):
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.body == body
    finally:
        writer.close()
        await writer.wait_closed()
