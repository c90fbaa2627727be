"""Retries: a candidate request that fails before any response byte and can be replayed is
retried once on stable (and still counts against the candidate); nothing else is retried."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from splitproxy.server import Server
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


def stable_app(seen: list[Seen]) -> web.Application:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(text="stable")

    return recording_app(seen, respond)


async def candidate_errors(server: Server) -> dict[str, float]:
    """``splitproxy_upstream_errors_total`` of the candidate, by kind, from /metrics."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.admin_port}/metrics") as r,
    ):
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("splitproxy_upstream_errors_total{") and 'version="candidate"' in line:
            kind = re.search(r'kind="([^"]*)"', line)
            assert kind is not None
            out[kind.group(1)] = float(line.rsplit(" ", 1)[1])
    return out


async def aborting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that reads the request head and resets the connection."""
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()


async def test_refused_candidate_is_retried_on_stable(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, refused_port: Callable[[], int]
) -> None:
    seen: list[Seen] = []
    stable = await aiohttp_server(stable_app(seen))
    proxy = await start_proxy(
        route(f"http://127.0.0.1:{stable.port}", f"http://127.0.0.1:{refused_port()}", weight=100)
    )
    for method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        resp = await exchange(
            proxy.listen_port,
            f"{method} /r HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
            head_only=method == "HEAD",
        )
        assert resp.status == 200
        if method != "HEAD":
            assert resp.body == b"stable"
    assert [r.method for r in seen] == ["GET", "HEAD", "OPTIONS", "DELETE"]
    # three refused connects eject the candidate (health.py): the fourth goes straight to
    # stable without trying it
    assert (await candidate_errors(proxy)).get("connect") == 3


async def test_reset_candidate_is_retried_on_stable(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    stable = await aiohttp_server(stable_app(seen))
    async with raw_upstream(aborting) as candidate:
        proxy = await start_proxy(
            route(f"http://127.0.0.1:{stable.port}", candidate.url, weight=100)
        )
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(3):
                writer.write(get("/x", extra="X-Request-ID: keep-me\r\n"))
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert (resp.status, resp.body) == (200, b"stable")
                assert resp.header("X-Request-ID") == "keep-me"
        assert candidate.accepted == 3
    assert len(seen) == 3
    assert seen[0].header("X-Request-ID") == "keep-me"
    assert (await candidate_errors(proxy)).get("reset") == 3


async def test_post_with_a_body_is_not_retried(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, refused_port: Callable[[], int]
) -> None:
    seen: list[Seen] = []
    stable = await aiohttp_server(stable_app(seen))
    async with raw_upstream(aborting) as candidate:
        proxy = await start_proxy(
            route(f"http://127.0.0.1:{stable.port}", candidate.url, weight=100)
        )
        resp = await exchange(
            proxy.listen_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        )
        assert resp.status == 502
        assert candidate.accepted == 1
    # a refused candidate: the POST is not replayed either
    proxy2 = await start_proxy(
        route(f"http://127.0.0.1:{stable.port}", f"http://127.0.0.1:{refused_port()}", weight=100)
    )
    resp = await exchange(
        proxy2.listen_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert resp.status == 502
    assert seen == []


async def test_no_retry_after_response_bytes(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    seen: list[Seen] = []
    stable = await aiohttp_server(stable_app(seen))
    async with raw_upstream(half) as candidate:
        proxy = await start_proxy(
            route(f"http://127.0.0.1:{stable.port}", candidate.url, weight=100)
        )
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(get())
            data = await read_eof(reader)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert data.endswith(b"\r\n\r\nabc")  # cut short, not completed from elsewhere
    assert seen == []


async def test_retried_once_only(start_proxy: StartProxy) -> None:
    async with raw_upstream(aborting) as stable, raw_upstream(aborting) as candidate:
        proxy = await start_proxy(route(stable.url, candidate.url, weight=100))
        resp = await exchange(proxy.listen_port, get())
        assert resp.status == 502
        assert (candidate.accepted, stable.accepted) == (1, 1)
