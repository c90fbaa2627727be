"""WebSocket through the proxy: the 101 is relayed, then bytes flow both ways until a close."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import (
    Seen,
    connect,
    raw_upstream,
    read_eof,
    read_request,
    read_response,
    recording_app,
)


class WsUpstream:
    """An aiohttp echo server; ``/close`` closes from the server side with code 4001."""

    def __init__(self) -> None:
        self.closed_with: list[int | None] = []
        self.headers: list[dict[str, str]] = []
        self.ended = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.echo)
        app.router.add_get("/close", self.close_first)
        return app

    async def echo(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=("chat", "superchat"), max_msg_size=0)
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            self.closed_with.append(ws.close_code)
        finally:  # the test server cancels handlers whose connection is lost
            self.ended.set()
        return ws

    async def close_first(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("bye")
        await ws.close(code=4001, message=b"server says bye")
        self.ended.set()
        return ws


async def test_websocket_echo_and_client_close(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    ws_up = WsUpstream()
    up = await aiohttp_server(ws_up.app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    big = os.urandom(3 * 1024 * 1024)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"http://127.0.0.1:{proxy.listen_port}/ws",
            protocols=("superchat",),
            headers={"X-Request-ID": "ws-1"},
            max_msg_size=0,
        ) as ws,
    ):
        assert ws.protocol == "superchat"
        for i in range(20):
            await ws.send_str(f"hello {i}")
            assert await asyncio.wait_for(ws.receive_str(), 5) == f"echo:hello {i}"
        await ws.send_bytes(big)
        assert await asyncio.wait_for(ws.receive_bytes(), 5) == big
        await ws.close(code=WSCloseCode.GOING_AWAY)
        assert ws.closed
    await asyncio.wait_for(ws_up.ended.wait(), 5)
    assert ws_up.closed_with == [WSCloseCode.GOING_AWAY]
    headers = ws_up.headers[0]
    assert headers["X-Request-ID"] == "ws-1"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["Upgrade"].lower() == "websocket"


async def test_websocket_server_close_reaches_the_client(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    ws_up = WsUpstream()
    up = await aiohttp_server(ws_up.app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"http://127.0.0.1:{proxy.listen_port}/close") as ws,
    ):
        assert await asyncio.wait_for(ws.receive_str(), 5) == "bye"
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4001
        assert msg.extra == "server says bye"
    assert ws.close_code == 4001


async def test_many_websockets_at_once(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    ws_up = WsUpstream()
    up = await aiohttp_server(ws_up.app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))

    async def one(s: aiohttp.ClientSession, i: int) -> None:
        async with s.ws_connect(f"http://127.0.0.1:{proxy.listen_port}/ws") as ws:
            for j in range(5):
                await ws.send_str(f"{i}-{j}")
                assert await ws.receive_str() == f"echo:{i}-{j}"

    async with aiohttp.ClientSession() as s:
        await asyncio.wait_for(asyncio.gather(*(one(s, i) for i in range(30))), 10)


async def test_upgrade_refused_by_the_upstream(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    up = await aiohttp_server(recording_app([]))  # answers 200 "ok", never 101
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(f"http://127.0.0.1:{proxy.listen_port}/ws")
        assert info.value.status == 200


async def test_early_websocket_bytes_wait_for_the_101(start_proxy: StartProxy) -> None:
    """Bytes sent right behind the upgrade request reach the upstream after it switched."""
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        with pytest.raises(TimeoutError):  # nothing before the 101
            await asyncio.wait_for(reader.read(1), 0.1)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nserver-first"
        )
        got.append(await reader.readexactly(11))
        writer.write(b"|pong")
        await writer.drain()
        await reader.read()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                b"early-bytes"
            )
            resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            assert resp.status == 101
            assert resp.header("Upgrade") == "websocket"
            assert resp.header("Sec-WebSocket-Accept") == "x"
            assert await asyncio.wait_for(reader.readexactly(17), 5) == b"server-first|pong"
    assert got == [b"early-bytes"]


async def test_non_websocket_upgrade_is_served_as_a_plain_request(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        )
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert (resp.status, resp.body) == (200, b"ok")
        assert resp.header("Connection") == "close"
        assert await read_eof(reader) == b""
    (req,) = seen
    assert not req.names() & {"upgrade", "http2-settings"}
    assert req.all("connection") in ([], ["keep-alive"])


async def test_client_vanishing_ends_the_tunnel(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    ws_up = WsUpstream()
    up = await aiohttp_server(ws_up.app())
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        resp = await asyncio.wait_for(read_response(reader, head_only=True), 5)
        assert resp.status == 101
        writer.transport.abort()
    # the proxy drops the upstream side too: the upstream's handler ends
    await asyncio.wait_for(ws_up.ended.wait(), 5)
    assert ws_up.closed_with in ([], [WSCloseCode.ABNORMAL_CLOSURE])
