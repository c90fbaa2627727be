"""Helpers for the data-path integration tests (``test_proxy_*.py``); holds no tests itself.

Byte-level tools: a raw HTTP/1.1 response reader (keeps header case, order and repeats),
raw client connections, raw asyncio upstreams that count their connections, and an aiohttp
upstream that records what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

HEAD_LIMIT = 256 * 1024


@dataclass
class RawResponse:
    """One response as the client received it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes = b""
    chunked: bool = False

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        assert sep, line
        headers.append((name, value.strip()))
    return int(status), reason[0] if reason else "", headers


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """Read one response; its body by Content-Length, chunked framing or until close."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, reason, headers = parse_head(head[:-4])
    resp = RawResponse(status, reason, headers, head)
    if head_only or status < 200 or status in (204, 304):
        return resp
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te is not None:
        assert te.lower() == "chunked", te
        assert cl is None, "Content-Length with Transfer-Encoding"
        resp.chunked = True
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        resp.body = b"".join(parts)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection to 127.0.0.1:port, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exchange(port: int, request: bytes, *, head_only: bool = False) -> RawResponse:
    """Send one raw request on a new connection and read its response."""
    async with connect(port) as (reader, writer):
        writer.write(request)
        return await asyncio.wait_for(read_response(reader, head_only=head_only), 5)


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes (raises TimeoutError if it does not within 5 s)."""
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""


def get(path: str = "/", host: str = "app.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A raw TCP upstream: every connection runs ``handler``; connections are counted."""

    port: int = 0
    accepted: int = 0
    closed: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        up.accepted += 1
        up.writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the test is over, or the proxy hung up: both are expected here
        finally:
            up.closed += 1
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=HEAD_LIMIT)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        for w in up.writers:
            w.close()
        if tasks:
            await asyncio.wait(list(tasks), timeout=0.5)
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=2)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read a request head and its Content-Length body (raw upstreams only need that)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head, body


@dataclass
class Seen:
    """What a recording aiohttp upstream received."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer_port: int

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    def all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


def recording_app(
    seen: list[Seen],
    respond: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
) -> web.Application:
    """An upstream that records every request (raw headers, raw path, body) it gets."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(
            Seen(
                request.method,
                request.raw_path,
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
                body,
                peer[1] if peer else 0,
            )
        )
        if respond is not None:
            return await respond(request)
        return web.Response(text="ok")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
