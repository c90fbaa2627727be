"""A hostile or broken upstream: its answers are bounded and never leak into the next exchange.

Raw upstreams send exactly the bytes of each attack; the assertions are on what the client
receives and on whether the proxy kept the upstream connection.
"""

from __future__ import annotations

import asyncio

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import connect, raw_upstream, read_eof, read_response

GET = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"


async def test_an_endless_response_head_is_a_502_and_the_proxy_stops_reading(
    start_proxy: StartProxy,
) -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(10_000):  # up to 160 MB, never a line end
            writer.write(b"a" * 16384)
            sent += 16384
            await writer.drain()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(GET)
            resp = await asyncio.wait_for(read_response(reader), 10)
        assert resp.status == 502
        assert resp.header("x-request-id")
    assert sent < 16 * 1024 * 1024  # the proxy closed the connection long before the end


async def test_too_many_response_headers_is_a_502(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        lines = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        writer.write(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(GET)
            resp = await asyncio.wait_for(read_response(reader), 5)
    assert resp.status == 502


async def test_an_unknown_transfer_coding_is_a_502_and_the_connection_is_not_reused(
    start_proxy: StartProxy,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle"
            )
            await writer.drain()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        for _ in range(2):
            async with connect(proxy.listen_port) as (reader, writer):
                writer.write(GET)
                resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 502
            assert b"smuggle" not in resp.body
        assert server.accepted == 2


async def test_bytes_after_a_complete_response_are_never_the_next_answer(
    start_proxy: StartProxy,
) -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while True:
            await reader.readuntil(b"\r\n\r\n")
            answered += 1
            body = b"real %d" % answered
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            # an extra, unrequested response in the same write
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")
            await writer.drain()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        bodies = []
        for _ in range(3):
            async with connect(proxy.listen_port) as (reader, writer):
                writer.write(GET)
                resp = await asyncio.wait_for(read_response(reader), 5)
                bodies.append(resp.body)
            await asyncio.sleep(0.05)
        assert all(b.startswith(b"real ") for b in bodies), bodies
        assert server.accepted == 3  # each connection was closed, none reused


async def test_a_truncated_body_is_never_passed_on_as_complete(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with raw_upstream(handler) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(GET)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"Content-Length: 100" in head
            rest = await asyncio.wait_for(read_eof(reader), 5)
    assert rest == b"only part"  # cut: the client sees fewer bytes than announced
