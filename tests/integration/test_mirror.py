"""Traffic mirroring through a real proxy to real loopback upstreams: copies reach the
candidate marked and framed by the proxy, are compared with the user's answer, and never
change what a user gets, whatever the candidate does (hang, reset, set cookies)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer

from splitproxy.dataplane.exchange import Exchange
from splitproxy.server import Server
from tests.conftest import StartProxy
from tests.integration.proxy_support import (
    RawUpstream,
    Seen,
    connect,
    raw_upstream,
    read_request,
    read_response,
    recording_app,
)
from tests.integration.test_metrics import by, scrape

STABLE_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Version: stable\r\n"
    b"Content-Length: 27\r\n\r\n"
    b'{"id": 1, "ts": "10:00:00"}'
)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def stable_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive upstream answering every request with the same bytes."""
    while True:
        await read_request(reader)
        writer.write(STABLE_ANSWER)
        await writer.drain()


@pytest.fixture
async def stable() -> AsyncIterator[RawUpstream]:
    async with raw_upstream(stable_server) as up:
        yield up


@pytest.fixture
async def candidate(aiohttp_server: AiohttpServer) -> tuple[list[Seen], str]:
    """A recording candidate: ``{"id": 1, "ts": <another>}``, ``{"id": 2}`` on a path with
    ``other``, a 500 on one with ``fail``, and a Set-Cookie on every answer."""
    seen: list[Seen] = []

    async def respond(request: web.Request) -> web.StreamResponse:
        ident = 2 if "other" in request.path else 1
        status = 500 if "fail" in request.path else 200
        resp = web.json_response({"id": ident, "ts": "10:00:01"}, status=status)
        resp.set_cookie("mirror_session", "from-the-candidate")
        return resp

    server = await aiohttp_server(recording_app(seen, respond))
    return seen, f"http://127.0.0.1:{server.port}"


def route(name: str, stable: str, candidate: str, prefix: str = "/", **mirror: Any) -> Any:
    out: dict[str, Any] = {
        "name": name,
        "match": {"path_prefix": prefix},
        "stable": stable,
        "candidate": candidate,
    }
    if mirror:
        out["mirror"] = mirror
    return out


async def send(port: int, request: bytes) -> bytes:
    """One raw request on a new connection; the raw response (head and body)."""
    async with connect(port) as (reader, writer):
        writer.write(request)
        resp = await asyncio.wait_for(read_response(reader), 5)
    return resp.head + resp.body


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: fixed-id\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


async def mirror_counts(server: Server, route_name: str) -> dict[str, float]:
    samples = await scrape(server)
    rows = by(samples, "splitproxy_mirror_requests_total", "route", "result")
    return {result: n for (r, result), n in rows.items() if r == route_name}


async def route_status(server: Server, name: str) -> Any:
    url = f"http://127.0.0.1:{server.admin_port}/api/v1/routes/{name}"
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_the_user_gets_the_same_bytes_and_the_candidate_a_marked_copy(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy(
        {
            "routes": [
                route("plain", stable.url, cand, "/plain"),
                route(
                    "shadow",
                    stable.url,
                    cand,
                    percent=100,
                    methods=["GET", "POST"],
                    headers={"X-Keep": "replaced", "X-Shadow": "yes"},
                ),
            ]
        }
    )
    port = server.listen_port
    hop = "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Keep: yes\r\n"
    for method, body in (("GET", b""), ("POST", b'{"order": 7}')):
        plain = await send(port, request(method, "/plain/x?q=1", body, hop))
        mirrored = await send(port, request(method, "/shadowed/x?q=1", body, hop))
        assert mirrored == plain  # byte for byte: status, headers, body
        assert b"mirror_session" not in mirrored
    await eventually(lambda: len(seen) == 2)
    assert [(s.method, s.raw_path, s.body) for s in seen] == [
        ("GET", "/shadowed/x?q=1", b""),
        ("POST", "/shadowed/x?q=1", b'{"order": 7}'),
    ]
    for copy in seen:
        assert copy.header("X-Splitproxy-Mirror") == "1"
        assert copy.header("X-Request-Id") == "fixed-id"
        assert copy.header("Host") == "app.test"
        assert copy.all("X-Keep") == ["replaced"]  # the route's headers win
        assert copy.header("X-Shadow") == "yes"
        assert "x-hop" not in copy.names()  # named by Connection: hop-by-hop
        assert copy.all("X-Splitproxy-Mirror") == ["1"]
    assert seen[1].header("Content-Length") == "12"
    await eventually(lambda: _counts_are(server, "shadow", match=2))


async def _counts_are(server: Server, name: str, **expected: float) -> bool:
    counts = await mirror_counts(server, name)
    return all(counts.get(k) == v for k, v in expected.items())


async def test_divergence_is_found_by_hash_and_json_ignore_skips_a_timestamp(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    _, cand = candidate
    server = await start_proxy(
        {
            "routes": [
                route("hashed", stable.url, cand, "/h", percent=100, compare={"body": "hash"}),
                route(
                    "json",
                    stable.url,
                    cand,
                    "/j",
                    percent=100,
                    compare={"body": "hash", "json_ignore": ["ts"]},
                ),
                route("status", stable.url, cand, "/s", percent=100),
            ]
        }
    )
    port = server.listen_port
    for path in ("/h/a", "/j/a", "/j/other", "/s/a", "/s/fail"):
        await send(port, request("GET", path))
    await eventually(lambda: _counts_are(server, "hashed", diverged=1))
    await eventually(lambda: _counts_are(server, "json", match=1, diverged=1))
    await eventually(lambda: _counts_are(server, "status", match=1, diverged=1))
    view = await route_status(server, "json")
    mirror = view["mirror"]
    assert mirror["divergence_rate"] == 0.5
    assert mirror["requests"]["match"] == 1
    [example] = mirror["examples"]
    assert example["method"] == "GET"
    assert example["path"] == "/j/other"
    assert (example["primary_status"], example["mirror_status"]) == (200, 200)
    assert example["differed"] == "json at id"
    [example] = (await route_status(server, "status"))["mirror"]["examples"]
    assert (example["path"], example["differed"]) == ("/s/fail", "status 200 vs 500")
    [example] = (await route_status(server, "hashed"))["mirror"]["examples"]
    assert example["differed"].startswith("body")
    assert (await route_status(server, "hashed"))["mirror"]["latency_ms"]["candidate"]["p50"]


async def test_copies_are_not_user_traffic(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    _, cand = candidate
    server = await start_proxy({"routes": [route("shadow", stable.url, cand, percent=100)]})
    for _ in range(5):
        await send(server.listen_port, request("GET", "/a"))
    await eventually(lambda: _counts_are(server, "shadow", match=5))
    samples = await scrape(server)
    requests = by(samples, "splitproxy_requests_total", "version", "code", "traffic")
    assert requests[("stable", "200", "user")] == 5
    assert requests[("candidate", "200", "mirror")] == 5
    assert ("candidate", "200", "user") not in requests
    traffic = (await route_status(server, "shadow"))["traffic"]
    assert traffic["stable"]["requests"] == 5
    assert traffic["candidate"]["requests"] == 0  # the analyzer never weighs a copy
    durations = by(samples, "splitproxy_mirror_duration_seconds_count", "version")
    assert durations == {("stable",): 5, ("candidate",): 5}


async def test_a_finished_exchange_lets_go_of_its_copy(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    # The access log keeps finished exchanges until its batch is formatted (up to 128 of them
    # for 50 ms): they must not keep the mirror's copy of each body (up to max_body) too.
    seen, cand = candidate
    server = await start_proxy(
        {"routes": [route("shadow", stable.url, cand, percent=100, methods=["POST"])]},
        access_log=True,
    )
    assert server.ctx is not None
    assert server.ctx.log is not None
    logged: list[Exchange] = []
    log = server.ctx.log

    def keep(ex: Exchange) -> None:
        logged.append(ex)
        log(ex)

    server.ctx.log = keep
    body = b"x" * 40_000
    answer = await send(server.listen_port, request("POST", "/orders", body))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    await eventually(lambda: len(seen) == 1)
    assert seen[0].body == body  # the copy went out whole
    assert [(ex.status, ex.mirror, ex.body_buffer) for ex in logged] == [(200, None, [])]


async def test_unsafe_methods_are_mirrored_only_when_listed(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy(
        {
            "routes": [
                route("reads", stable.url, cand, "/r", percent=100),
                route("writes", stable.url, cand, "/w", percent=100, methods=["DELETE"]),
            ]
        }
    )
    port = server.listen_port
    for method, path in (("POST", "/r/1"), ("PUT", "/r/1"), ("DELETE", "/r/1"), ("GET", "/r/2")):
        await send(port, request(method, path, b"x" if method in ("POST", "PUT") else b""))
    for method, path in (("POST", "/w/1"), ("GET", "/w/2"), ("DELETE", "/w/3")):
        await send(port, request(method, path, b"x" if method == "POST" else b""))
    await eventually(lambda: len(seen) == 2)
    await asyncio.sleep(0.2)  # a copy sent by mistake would arrive by now
    assert sorted((s.method, s.raw_path) for s in seen) == [("DELETE", "/w/3"), ("GET", "/r/2")]


async def test_a_websocket_upgrade_is_never_mirrored(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/plain", plain)
    up = await aiohttp_server(app)
    server = await start_proxy(
        {"routes": [route("shadow", f"http://127.0.0.1:{up.port}", cand, percent=100)]}
    )
    base = f"http://127.0.0.1:{server.listen_port}"
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base}/ws") as ws:
            await ws.send_str("hi")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "echo:hi"
        async with s.get(f"{base}/plain") as resp:
            assert await resp.text() == "ok"
    await eventually(lambda: len(seen) == 1)
    await asyncio.sleep(0.2)
    assert [s.raw_path for s in seen] == ["/plain"]


async def test_the_candidates_cookies_reach_no_one(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy({"routes": [route("shadow", stable.url, cand, percent=100)]})
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"http://127.0.0.1:{server.listen_port}/a") as resp:
                assert "Set-Cookie" not in resp.headers
                await resp.read()
        assert not s.cookie_jar.filter_cookies(resp.url)
    await eventually(lambda: len(seen) == 3)
    assert all(c.header("Cookie") is None for c in seen)  # no jar carried one to the next


async def test_a_body_over_max_body_is_skipped(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy(
        {
            "routes": [
                route("shadow", stable.url, cand, percent=100, methods=["POST"], max_body="1KB")
            ]
        }
    )
    port = server.listen_port
    assert (await send(port, request("POST", "/big", b"x" * 1025))).endswith(STABLE_ANSWER[-27:])
    chunked = b"POST /big-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"400\r\n" + b"y" * 1024 + b"\r\n1\r\nz\r\n0\r\n\r\n"
    assert (await send(port, chunked)).endswith(STABLE_ANSWER[-27:])
    await send(port, request("POST", "/small", b"x" * 1024))
    await eventually(lambda: _counts_are(server, "shadow", skipped=2, match=1))
    assert [(s.raw_path, len(s.body)) for s in seen] == [("/small", 1024)]


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(30)  # never answers


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # an RST, not a FIN


@pytest.mark.parametrize("behaviour", [hang, reset], ids=["hanging", "resetting"])
async def test_a_broken_candidate_changes_no_user_response(
    start_proxy: StartProxy,
    stable: RawUpstream,
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with raw_upstream(behaviour) as broken:
        server = await start_proxy(
            {
                "routes": [
                    route("plain", stable.url, broken.url, "/plain"),
                    route(
                        "shadow",
                        stable.url,
                        broken.url,
                        percent=100,
                        timeout="300ms",
                        concurrency=2,
                        queue=2,
                    ),
                ]
            }
        )
        port = server.listen_port
        baseline = await send(port, request("GET", "/plain"))
        async with connect(port) as (reader, writer):  # one keep-alive connection, 40 requests
            for _ in range(40):
                writer.write(request("GET", "/a"))
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.head + resp.body == baseline
        counts: dict[str, float] = {}

        async def settled() -> bool:
            counts.update(await mirror_counts(server, "shadow"))
            return sum(counts[r] for r in ("error", "dropped")) == 40

        await eventually(settled)
        assert counts["error"] >= 1
        assert counts["match"] == counts["diverged"] == 0
        if behaviour is hang:
            assert counts["dropped"] >= 1  # 2 in flight and 2 queued at most, the rest dropped


async def test_a_full_queue_drops_and_counts(start_proxy: StartProxy, stable: RawUpstream) -> None:
    async with raw_upstream(hang) as hanging:
        server = await start_proxy(
            {
                "routes": [
                    route("shadow", stable.url, hanging.url, percent=100, concurrency=1, queue=1)
                ]
            }
        )
        for _ in range(5):
            await send(server.listen_port, request("GET", "/a"))
        await eventually(lambda: hanging.accepted == 1)
        # one copy in flight (the candidate hangs for 5 s), one waiting, three dropped
        assert (await mirror_counts(server, "shadow"))["dropped"] == 3
        view = (await route_status(server, "shadow"))["mirror"]
        assert view["requests"]["dropped"] == 3
        assert view["divergence_rate"] is None


async def test_a_sampled_share_is_mirrored(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy({"routes": [route("shadow", stable.url, cand, percent=20)]})
    async with connect(server.listen_port) as (reader, writer):
        for _ in range(200):
            writer.write(request("GET", "/a"))
            await asyncio.wait_for(read_response(reader), 5)
    await asyncio.sleep(0.3)
    assert 10 <= len(seen) <= 80  # 20 % of 200 is 40; far outside these bounds is a bug
    assert (await route_status(server, "shadow"))["mirror"]["percent"] == 20


async def test_a_reload_starts_and_stops_mirroring(
    start_proxy: StartProxy, stable: RawUpstream, candidate: tuple[list[Seen], str]
) -> None:
    seen, cand = candidate
    server = await start_proxy({"routes": [route("app", stable.url, cand)]})
    path = server.settings.config
    assert path is not None

    async def reload_with(**mirror: Any) -> None:
        path.write_text(yaml.safe_dump({"routes": [route("app", stable.url, cand, **mirror)]}))
        outcome = await server.reload()
        assert outcome.changed

    await send(server.listen_port, request("GET", "/before"))
    await reload_with(percent=100)
    await send(server.listen_port, request("GET", "/during"))
    await eventually(lambda: len(seen) == 1)
    await reload_with()
    await send(server.listen_port, request("GET", "/after"))
    await asyncio.sleep(0.2)
    assert [s.raw_path for s in seen] == ["/during"]
    assert (await route_status(server, "app"))["mirror"] is None
