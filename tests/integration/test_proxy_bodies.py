"""Bodies through the proxy: request and response framing, streaming, no transformation,
HEAD/204/304, and ``Expect: 100-continue``."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
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
    read_request,
    read_response,
    recording_app,
)


def echo_digest_app(seen: list[Seen]) -> web.Application:
    async def respond(request: web.Request) -> web.StreamResponse:
        body = seen[-1].body
        return web.json_response({"len": len(body), "sha": hashlib.sha256(body).hexdigest()})

    return recording_app(seen, respond)


async def test_content_length_request_body(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(echo_digest_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    data = os.urandom(3 * 1024 * 1024 + 7)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{proxy.listen_port}/up", data=io.BytesIO(data)) as r,
    ):
        assert r.status == 200
        assert await r.json() == {"len": len(data), "sha": hashlib.sha256(data).hexdigest()}
    req = seen[0]
    assert req.all("Content-Length") == [str(len(data))]
    assert "transfer-encoding" not in req.names()


async def test_chunked_request_body(start_proxy: StartProxy, aiohttp_server: AiohttpServer) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(echo_digest_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    pieces = [os.urandom(n) for n in (1, 100, 65536, 300_000, 5)]

    async def gen() -> AsyncIterator[bytes]:
        for p in pieces:
            yield p
            await asyncio.sleep(0)

    data = b"".join(pieces)
    async with (
        aiohttp.ClientSession() as s,
        s.put(f"http://127.0.0.1:{proxy.listen_port}/up", data=gen()) as r,
    ):
        assert r.status == 200
        assert await r.json() == {"len": len(data), "sha": hashlib.sha256(data).hexdigest()}
    req = seen[0]
    assert req.all("Transfer-Encoding") == ["chunked"]
    assert "content-length" not in req.names()


async def test_chunked_request_with_extensions_and_trailers(start_proxy: StartProxy) -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        got.append(body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        resp = await exchange(
            proxy.listen_port,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        assert resp.status == 200
    assert got == [b"abc0123456789"]


async def test_chunked_response_body(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    data = os.urandom(2 * 1024 * 1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 100_000):
            await resp.write(data[i : i + 100_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        for _ in range(2):
            writer.write(get())
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            assert resp.chunked
            assert resp.body == data


@pytest.mark.parametrize("upstream_version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_close_delimited_response_body(
    start_proxy: StartProxy, upstream_version: bytes
) -> None:
    data = os.urandom(500_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(upstream_version + b" 200 OK\r\nContent-Type: application/x-raw\r\n\r\n")
        for i in range(0, len(data), 65536):
            writer.write(data[i : i + 65536])
            await writer.drain()
        writer.close()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            # an HTTP/1.1 client gets it re-chunked and keeps its connection
            for _ in range(2):
                writer.write(get())
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.status == 200
                assert resp.chunked
                assert resp.body == data
        # an HTTP/1.0 client gets it delimited by the close of the connection
        resp = await exchange(proxy.listen_port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        assert resp.status == 200
        assert resp.header("Connection") == "close"
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == data
        assert up.accepted == 3


async def test_gzip_response_passes_byte_exact(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    plain = b"splitproxy " * 10_000
    compressed = gzip.compress(plain, mtime=0)

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Accept-Encoding") == "gzip"
        return web.Response(
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", "Vary": "Accept"},
        )

    app = web.Application()
    app.router.add_get("/", handler)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(proxy.listen_port, get(extra="Accept-Encoding: gzip\r\n"))
    assert resp.status == 200
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.header("Content-Length") == str(len(compressed))
    assert resp.body == compressed
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(
            f"http://127.0.0.1:{proxy.listen_port}/",
            headers={"Accept-Encoding": "gzip"},
            skip_auto_headers=["Accept-Encoding"],
        ) as r,
    ):
        assert await r.read() == compressed


async def test_gzip_request_body_passes_byte_exact(start_proxy: StartProxy) -> None:
    compressed = gzip.compress(b'{"k": "v"}' * 1000, mtime=0)
    got: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        request = (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(compressed)
        ) + compressed
        resp = await exchange(proxy.listen_port, request)
        assert resp.status == 200
    head, body = got[0]
    assert b"\r\nContent-Encoding: gzip\r\n" in head
    assert body == compressed


async def test_response_is_streamed_not_buffered(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    """The first event of a stream reaches the client while the upstream still waits."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await asyncio.wait_for(release.wait(), 5)
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{proxy.listen_port}/") as r,
    ):
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 2)
        assert first == b"data: first\n\n"
        release.set()
        assert await r.content.read() == b"data: second\n\n"


async def test_request_is_streamed_not_buffered(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    """The upstream sees the start of the body before the client has sent the rest."""
    first_seen = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        first = await request.content.readexactly(5)
        first_seen.set()
        rest = await request.content.read()
        return web.Response(body=first + rest)

    app = web.Application()
    app.router.add_post("/", handler)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))

    async def gen() -> AsyncIterator[bytes]:
        yield b"hello"
        await asyncio.wait_for(first_seen.wait(), 2)
        yield b" world"

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{proxy.listen_port}/", data=gen()) as r,
    ):
        assert await r.read() == b"hello world"


def _status_app() -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "204":
            return web.Response(status=204, headers={"X-Kind": "204"})
        if name == "304":
            return web.Response(status=304, headers={"ETag": '"e1"', "X-Kind": "304"})
        return web.Response(body=b"x" * 1234, headers={"X-Kind": "full"})

    app = web.Application()
    app.router.add_route("*", "/{name}", handler)
    return app


async def test_head_keeps_content_length_and_the_connection_keeps_working(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(_status_app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        for _ in range(2):
            writer.write(b"HEAD /full HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            assert resp.status == 200
            assert resp.header("Content-Length") == "1234"
            assert resp.header("Transfer-Encoding") is None
            assert resp.header("X-Kind") == "full"
            writer.write(get("/full"))
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            assert resp.body == b"x" * 1234
        # no stray body bytes are left on the connection
        writer.write(b"HEAD /full HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_head_to_a_chunked_resource(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                )

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            assert resp.status == 200
            writer.write(get())
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.body == b"ok"
        assert up.accepted == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, status: int
) -> None:
    up = await aiohttp_server(_status_app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        for _ in range(2):
            writer.write(get(f"/{status}", extra='If-None-Match: "e1"\r\n'))
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == status
            assert resp.header("X-Kind") == str(status)
            assert resp.header("Transfer-Encoding") is None
            if status == 304:
                assert resp.header("ETag") == '"e1"'
            writer.write(get("/full"))
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.body == b"x" * 1234


async def test_expect_100_continue(start_proxy: StartProxy, aiohttp_server: AiohttpServer) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(echo_digest_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    body = os.urandom(100_000)
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(
            b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 200
        assert resp.body.decode().count(hashlib.sha256(body).hexdigest()) == 1
    assert seen[0].body == body
    assert "expect" not in seen[0].names()
    # aiohttp's client waits for the 100 before it sends the body
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{proxy.listen_port}/e", data=body, expect100=True) as r,
    ):
        assert r.status == 200
        assert (await r.json())["len"] == len(body)
    assert seen[1].body == body


async def test_expect_100_continue_without_a_body_gets_no_interim(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(
        proxy.listen_port, get(extra="Expect: 100-continue\r\nContent-Length: 0\r\n")
    )
    assert resp.status == 200


async def test_http10_client_gets_a_chunked_response_close_delimited(
    start_proxy: StartProxy,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        for _ in range(2):
            resp = await exchange(proxy.listen_port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
            assert resp.head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert resp.header("Transfer-Encoding") is None
            assert resp.header("Connection") == "close"
            assert resp.body == b"hello world"
        assert up.accepted == 1  # the upstream side kept its connection


async def test_upstream_interim_responses_are_not_forwarded(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 1\r\n\r\nfinal"
            )

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(2):
                writer.write(get())
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.status == 200
                assert resp.header("X-Final") == "1"
                assert resp.header("Link") is None
                assert resp.body == b"final"


async def test_expect_100_continue_with_a_body_over_the_limit(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), max_body_bytes=100)
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
        )
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 413  # final answer at once, no 100 first
