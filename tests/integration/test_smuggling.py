"""Request smuggling: the upstream only ever sees the requests the proxy parsed.

Each test is an attack with raw sockets against the real proxy, and a raw upstream that records
every byte it receives, so the assertion is on what reached the upstream, not on what the
proxy meant to send.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import connect, raw_upstream, read_response

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"


class Recorder:
    """A keep-alive upstream that answers every request it parses and keeps the raw bytes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.raw = b""

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.raw += head
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            body = b""
            if chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    self.raw += size_line
                    size = int(size_line.split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    self.raw += chunk
                    if size == 0:
                        break
                    body += chunk[:-2]
            elif length:
                body = await reader.readexactly(length)
                self.raw += body
            self.requests.append(head.split(b"\r\n", 1)[0])
            answer = b"request %d" % len(self.requests)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()


@pytest.mark.parametrize(
    "connection",
    [b"content-length", b"Content-Length, keep-alive", b"host", b"close, content-length, host"],
)
async def test_connection_header_cannot_strip_the_framing(
    start_proxy: StartProxy, connection: bytes
) -> None:
    up = Recorder()
    async with raw_upstream(up.handler) as server:
        proxy = await start_proxy(route(server.url))
        body = SMUGGLED
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(
                b"POST /form HTTP/1.1\r\nHost: app.test\r\nConnection: " + connection + b"\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            first = await asyncio.wait_for(read_response(reader), 5)
            assert first.status == 200
            assert first.body == b"request 1"
            if b"close" not in connection.lower():
                # the next request on the same client connection reuses the pooled upstream
                # connection: it must get its own answer, not the smuggled one's
                writer.write(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
                second = await asyncio.wait_for(read_response(reader), 5)
                assert second.body == b"request 2"
    assert up.requests[0] == b"POST /form HTTP/1.1"
    assert b"GET /admin" not in up.requests
    assert up.raw.count(b"Content-Length: %d\r\n" % len(body)) == 1
    assert b"\r\nHost: app.test\r\n" in up.raw


async def test_chunked_body_is_reframed_and_never_leaks_a_second_request(
    start_proxy: StartProxy,
) -> None:
    up = Recorder()
    async with raw_upstream(up.handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(
                b"POST /form HTTP/1.1\r\nHost: app.test\r\nConnection: transfer-encoding\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
            )
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
    assert up.requests == [b"POST /form HTTP/1.1"]
    assert b"Transfer-Encoding: chunked\r\n" in up.raw


async def test_the_upstream_gets_the_length_the_proxy_parsed(start_proxy: StartProxy) -> None:
    up = Recorder()
    async with raw_upstream(up.handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"POST /form HTTP/1.1\r\nHost: app.test\r\ncontent-length: 5\r\n\r\nhello")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
    head = up.raw.split(b"\r\n\r\n", 1)[0]
    assert head.lower().count(b"content-length") == 1
    assert b"Content-Length: 5" in head


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def test_an_upgrade_with_a_body_is_refused(start_proxy: StartProxy) -> None:
    up = Recorder()
    async with raw_upstream(up.handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(UPGRADE + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
            resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 400
        assert b"upgrade_with_body" in resp.body
        assert server.accepted == 0
    assert up.requests == []


async def test_an_upgrade_answered_without_101_never_leaves_bytes_on_a_pooled_connection(
    start_proxy: StartProxy,
) -> None:
    refusing = Recorder()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            refusing.requests.append(head.split(b"\r\n", 1)[0])
            writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            # early bytes after the upgrade head: a second request in disguise
            writer.write(UPGRADE + b"\r\n" + SMUGGLED)
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 426
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 426
        assert server.accepted == 2  # the refused upgrade's connection was not reused
    assert refusing.requests == [b"GET /ws HTTP/1.1", b"GET /next HTTP/1.1"]


async def test_a_101_to_a_request_without_upgrade_is_a_502(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"\r\nraw tunnel bytes"
        )
        await writer.drain()
        await reader.read()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 502
    assert resp.header("x-request-id")
    assert b"raw tunnel bytes" not in resp.body
