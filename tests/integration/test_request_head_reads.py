"""Request heads over real sockets, in one read or in many: the upstream gets the same head
byte for byte, pipelined requests and a chunked body's trailer fields are read as before (the
trailer fields never forwarded, even for a request queued behind another), and the limits
(414, 431) hold while a head that spans reads is still incomplete."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import connect, raw_upstream, read_request, read_response

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BROWSER = (
    b"GET /page?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131"\r\nsec-ch-ua-mobile: ?0\r\nUpgrade-Insecure-Requests: 1\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0\r\n"
    b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\nSec-Fetch-Site: none\r\n"
    b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nCookie: a=1\r\nCookie: b=2\r\n"
    b"X-Request-ID: head-reads-1\r\n\r\n"
)


async def heads_seen(start_proxy: StartProxy, pieces: list[bytes], answers: int) -> list[bytes]:
    """The request heads the upstream got when a client sent ``pieces``, each in a read of
    its own, and the statuses the client got back (``answers`` of them)."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"Transfer-Encoding: chunked" in head:
                await reader.readuntil(b"\r\n0\r\n\r\n")  # (the proxy's: no trailers)
            heads.append(head)
            writer.write(OK)
            await writer.drain()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.003)  # (its own read, on loopback)
            for _ in range(answers):
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.status == 200, resp
    return heads


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 64])
async def test_a_head_over_many_reads_reaches_the_upstream_as_in_one(
    start_proxy: StartProxy, size: int
) -> None:
    whole = await heads_seen(start_proxy, [BROWSER], 1)
    pieces = [*cut(BROWSER[:80], 1), BROWSER[80:]] if size == 1 else cut(BROWSER, size)
    assert await heads_seen(start_proxy, pieces, 1) == whole
    assert b"X_Forwarded_For" not in whole[0]
    assert b"Cookie: a=1\r\nCookie: b=2\r\n" in whole[0]


async def test_pipelined_requests_and_trailers_over_reads(start_proxy: StartProxy) -> None:
    chunked = (
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: head-reads-2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    stream = b"\r\n" + chunked + BROWSER + BROWSER.replace(b"q=1", b"q=2")
    whole = await heads_seen(start_proxy, [stream], 3)
    assert [h.split(b" ", 2)[1] for h in whole] == [b"/up", b"/page?q=1", b"/page?q=2"]
    assert await heads_seen(start_proxy, cut(stream, 50), 3) == whole


# Heads without the blank line that ends them (the answer comes before it), but for a header
# line too large: it is counted once the next one begins.
@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"t" * 3000 + b" HTTP/1.1\r\nHost: app.test\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Many: v\r\n" * 40, 431),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 3000 + b"\r\nX: y", 431),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nX: y\r\n", 400),
    ],
)
async def test_the_limits_hold_before_a_split_head_ends(
    start_proxy: StartProxy, head: bytes, status: int
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        raise AssertionError("a refused head reached the upstream")

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url), max_header_bytes=2048, max_headers=30)
        async with connect(proxy.listen_port) as (reader, writer):
            for piece in cut(head, 200):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.003)
            resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == status
        assert up.accepted == 0


async def test_a_queued_chunked_request_sends_no_trailer_field_upstream(
    start_proxy: StartProxy,
) -> None:
    # The first request is answered late: the chunked one behind it is read whole, trailer
    # fields included, before its turn comes and its upstream head is made.
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"Transfer-Encoding: chunked" in head:
                await reader.readuntil(b"\r\n0\r\n\r\n")
            else:
                await asyncio.sleep(0.2)
            heads.append(head)
            writer.write(OK)
            await writer.drain()

    chunked = (
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: t\r\nCookie: injected=1\r\n"
        b"X-Forwarded-Host: evil.test\r\n\r\n"
    )
    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n" + chunked)
            await writer.drain()
            for _ in range(2):
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.status == 200, resp
    assert [h.split(b" ", 2)[1] for h in heads] == [b"/slow", b"/up"]
    assert b"X-Trailer" not in heads[1]
    assert b"injected" not in heads[1]
    assert b"evil.test" not in heads[1]
