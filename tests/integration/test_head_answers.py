"""An answer to a HEAD request ends at its head: bytes after it in the same read are out of
step like any bytes after a complete response, and its upstream connection is never reused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import connect, raw_upstream, read_response

GET = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n"


def upstream(
    after_head: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"HEAD "):  # the head and what follows it in one write
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n" + after_head)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()

    return handler


async def head_then_get(start_proxy: StartProxy, after_head: bytes) -> int:
    """A HEAD then a GET on one client connection; how many upstream connections served them."""
    async with raw_upstream(upstream(after_head)) as server:
        proxy = await start_proxy(route(server.url))
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(HEAD)
            head = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            writer.write(GET)
            resp = await asyncio.wait_for(read_response(reader), 5)
        assert (head.status, head.header("content-length")) == (200, "7")
        assert (resp.status, resp.body) == (200, b"real")
        return server.accepted


async def test_bytes_after_the_answer_to_a_head_request_end_its_connection(
    start_proxy: StartProxy,
) -> None:
    assert await head_then_get(start_proxy, b"smuggle") == 2  # closed, not reused


async def test_a_clean_answer_to_a_head_request_keeps_its_connection(
    start_proxy: StartProxy,
) -> None:
    assert await head_then_get(start_proxy, b"") == 1
