"""What the proxy answers itself: 502/503/504 for upstream trouble, 400/408/413/431 for bad
or slow clients, each with a JSON body carrying the request id, and never a crash."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import (
    RawResponse,
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


def assert_error(resp: RawResponse, status: int, code: str) -> dict[str, str]:
    """A proxy error response: status, JSON error body, request id in header and body."""
    assert resp.status == status, resp
    assert resp.header("Content-Type") == "application/json"
    payload = json.loads(resp.body)
    err: dict[str, str] = payload["error"]
    assert err["code"] == code
    assert err["message"]
    rid = resp.header("X-Request-ID")
    assert rid
    assert err["request_id"] == rid
    return err


async def test_502_when_the_upstream_refuses(
    start_proxy: StartProxy, refused_port: Callable[[], int]
) -> None:
    proxy = await start_proxy(route(f"http://127.0.0.1:{refused_port()}"))
    resp = await exchange(proxy.listen_port, get(extra="X-Request-ID: refused-1\r\n"))
    err = assert_error(resp, 502, "bad_gateway")
    assert err["request_id"] == "refused-1"
    # the proxy keeps serving
    resp = await exchange(proxy.listen_port, get())
    assert resp.status == 502


async def test_502_when_the_upstream_resets(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        resp = await exchange(proxy.listen_port, get())
        assert_error(resp, 502, "bad_gateway")
        # an idempotent request is tried twice, never more
        assert up.accepted == 2
        resp = await exchange(
            proxy.listen_port,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        )
        assert_error(resp, 502, "bad_gateway")
        assert up.accepted == 3


async def test_502_when_the_upstream_closes_without_answering(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        assert_error(await exchange(proxy.listen_port, get()), 502, "bad_gateway")


async def test_502_when_the_upstream_sends_garbage(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        assert_error(await exchange(proxy.listen_port, get()), 502, "bad_gateway")


async def test_504_when_the_upstream_is_too_slow(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    up = await aiohttp_server(recording_app([], slow))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), read_timeout=0.3)
    try:
        t0 = time.monotonic()
        resp = await exchange(proxy.listen_port, get())
        elapsed = time.monotonic() - t0
        assert_error(resp, 504, "upstream_timeout")
        assert 0.25 < elapsed < 2.0
    finally:
        release.set()


async def test_503_with_retry_after_when_the_connection_limit_is_reached(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return web.Response(text="done")

    up = await aiohttp_server(recording_app([], slow))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_upstream_connections=1)
    first = asyncio.create_task(exchange(proxy.listen_port, get("/slow")))
    try:
        await asyncio.wait_for(entered.wait(), 5)
        resp = await exchange(proxy.listen_port, get("/other"))
        assert_error(resp, 503, "upstream_busy")
        assert resp.header("Retry-After") == "1"
    finally:
        release.set()
    assert (await first).body == b"done"
    # the connection is free again (and reused)
    assert (await exchange(proxy.listen_port, get("/other"))).body == b"done"


async def test_413_for_a_declared_content_length(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_body_bytes=1000)
    resp = await exchange(
        proxy.listen_port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 10,
    )
    assert_error(resp, 413, "body_too_large")
    assert resp.header("Connection") == "close"
    # at the limit is fine
    resp = await exchange(
        proxy.listen_port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000,
    )
    assert resp.status == 200
    assert len(seen) == 1


async def test_413_reaches_a_client_that_keeps_sending(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    """The proxy answers, then reads and discards the rest for a while instead of
    resetting the connection under the client's feet (which would lose the 413)."""
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_body_bytes=1000)
    data = os.urandom(32 * 1024 * 1024)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(f"http://127.0.0.1:{proxy.listen_port}/", data=io.BytesIO(data)) as r:
                assert r.status == 413
                body = await r.json()
                assert body["error"]["code"] == "body_too_large"


async def test_413_for_a_chunked_body(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_body_bytes=1000)
    assert (await exchange(proxy.listen_port, get())).status == 200  # a pooled connection
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"190\r\n" + b"y" * 400 + b"\r\n")
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert_error(resp, 413, "body_too_large")
        await read_eof(reader)
    # the upstream connection that carried part of the body is dropped, not left bound
    pool = next(iter(proxy.pools.pools.values()))
    assert pool.open_count == 0
    assert pool.idle_count == 0
    # a chunked body within the limit passes
    resp = await exchange(
        proxy.listen_port,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"190\r\n" + b"y" * 400 + b"\r\n0\r\n\r\n",
    )
    assert resp.status == 200
    assert seen[-1].body == b"y" * 400
    assert len(seen) == 2


async def test_431_for_headers_too_large(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_header_bytes=2048)
    resp = await exchange(proxy.listen_port, get(extra=f"X-Big: {'b' * 3000}\r\n"))
    assert_error(resp, 431, "headers_too_large")
    many = "".join(f"X-H{i}: {'v' * 30}\r\n" for i in range(80))
    assert_error(await exchange(proxy.listen_port, get(extra=many)), 431, "headers_too_large")
    # one header line that never ends is cut off too, without waiting for its end
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")

        async def endless() -> None:
            for _ in range(1000):
                writer.write(b"z" * 8192)
                await writer.drain()
                await asyncio.sleep(0.001)

        sender = asyncio.create_task(endless())
        try:
            resp = await asyncio.wait_for(read_response(reader), 5)
        finally:
            sender.cancel()
        assert_error(resp, 431, "headers_too_large")
        assert not sender.done() or sender.cancelled()
    assert (await exchange(proxy.listen_port, get())).status == 200


async def test_431_for_too_many_headers(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_headers=10)
    many = "".join(f"X-H{i}: v\r\n" for i in range(12))
    assert_error(await exchange(proxy.listen_port, get(extra=many)), 431, "headers_too_large")


# a TLS ClientHello's random part: fixed, so every test process collects the same test ids
HELLO_RANDOM = random.Random(0x5EED).randbytes(64)


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + HELLO_RANDOM + b"\r\n\r\n",
            "bad_request",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", "bad_request"),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", "bad_request"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            "bad_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            "bad_request",
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "bad_request"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "duplicate_header"),
        (b"GET / HTTP/1.1\r\n\r\n", "bad_request"),
        (b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n X-Folded: x\r\n\r\n", "bad_request"),
    ],
)
async def test_400_for_malformed_requests(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, garbage: bytes, code: str
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(garbage)
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert_error(resp, 400, code)
        assert resp.header("Connection") == "close"
        await read_eof(reader)
    assert seen == []
    # the proxy still serves the next connection
    assert (await exchange(proxy.listen_port, get())).status == 200


async def test_408_and_cut_off_when_headers_never_finish(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    # the trickle ends well before the deadline: a write after the 408's close can reset the
    # connection and lose the 408 (a loaded machine stretched a trickle as long as the deadline)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), header_timeout=0.6)
    async with connect(proxy.listen_port) as (reader, writer):
        t0 = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for _ in range(3):  # trickling bytes does not extend the deadline
            await asyncio.sleep(0.05)
            writer.write(b"X-Slow: 1\r\n")
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert_error(resp, 408, "request_timeout")
        assert await read_eof(reader) == b""
        assert time.monotonic() - t0 < 2.0
    assert (await exchange(proxy.listen_port, get())).status == 200


async def test_idle_keep_alive_client_is_closed(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    # 1 s: the second request, 0.15 s after the first answer, must beat the timeout even when
    # a loaded machine delays this client (0.5 s was once too little there)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), client_idle_timeout=1.0)
    async with connect(proxy.listen_port) as (reader, writer):
        t0 = time.monotonic()
        writer.write(get())
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        # a request within the idle timeout keeps the connection
        await asyncio.sleep(0.15)
        writer.write(get())
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        t1 = time.monotonic()
        assert await read_eof(reader) == b""
        assert 0.7 < time.monotonic() - t1 < 2.5  # (0.35 s, 0.4 s at 0.5 s: scaled)
        assert time.monotonic() - t0 > 0.8
    # a connection that never sends anything is closed too
    async with connect(proxy.listen_port) as (reader, _):
        assert await read_eof(reader) == b""


async def test_body_timeout_cuts_a_stalled_upload(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), body_timeout=0.3)
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        t0 = time.monotonic()
        await read_eof(reader)
        assert time.monotonic() - t0 < 2.0


async def test_upstream_dying_mid_body_aborts_the_client(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(get())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"Content-Length: 100000" in head
            rest = await read_eof(reader)
            assert len(rest) < 100_000


async def test_no_route_is_404(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {"routes": [{"name": "app", "match": {"path_prefix": "/api"}, "stable": "http://x:1"}]}
    )
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(get("/web") + b"HEAD /web HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert_error(resp, 404, "no_route")
        # a keep-alive connection survives a 404, and a HEAD gets no body
        resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
        assert resp.status == 404
        writer.write(get("/web", extra="Connection: close\r\n"))
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 404
        assert await read_eof(reader) == b""


async def test_413_survives_a_client_that_sends_before_it_reads(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_body_bytes=1000)
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        for _ in range(10):
            writer.write(b"b" * 100_000)
            await writer.drain()
            await asyncio.sleep(0.02)
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert_error(resp, 413, "body_too_large")
        assert await read_eof(reader) == b""
