"""/metrics, the route view and the access log of a running proxy, against real traffic."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from splitproxy import logwriter
from splitproxy.server import Server
from tests.conftest import StartProxy

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # (Linux)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Server, accept: str | None = None) -> Samples:
    headers = {"Accept": accept} if accept else {}
    url = f"http://127.0.0.1:{server.admin_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as resp:
        assert resp.status == 200
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` keyed by the values of ``labels``."""
    return {
        tuple(dict(lbls)[label] for label in labels): v
        for (n, lbls), v in samples.items()
        if n == name
    }


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def _app(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def apps() -> AsyncIterator[tuple[str, str]]:
    """A stable and a candidate app: ``/ok`` 200, ``/fail`` 500, ``/slow`` 2 s, else 404."""

    def make(name: str) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        async def ok(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text=name)

        async def fail(request: web.Request) -> web.Response:
            return web.Response(status=500, text="boom")

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(float(request.query.get("s", "2")))
            return web.Response(text="late")

        return {"/app/ok": ok, "/app/fail": fail, "/app/slow": slow}

    stable, candidate = await _app(make("stable")), await _app(make("candidate"))
    yield f"http://127.0.0.1:{stable.port}", f"http://127.0.0.1:{candidate.port}"
    await stable.close()
    await candidate.close()


def app_route(stable: str, candidate: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "match": {"path_prefix": "/app/"},
        "stable": stable,
        "candidate": {"url": candidate, "revision": "2.0"},
        "weight": 0,
        "overrides": [{"header": "X-Canary"}],
        **extra,
    }


async def send(
    server: Server, path: str, n: int = 1, canary: str = "never", method: str = "GET"
) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.request(
                method,
                f"http://127.0.0.1:{server.listen_port}{path}",
                headers={"X-Canary": canary},
                data=b"payload" if method == "POST" else None,
            ) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


async def test_counters_equal_the_requests_sent(
    start_proxy: StartProxy, apps: tuple[str, str]
) -> None:
    server = await start_proxy({"routes": [app_route(*apps)]})
    assert await send(server, "/app/ok", 6) == [200] * 6
    assert await send(server, "/app/missing", 3) == [404] * 3  # the app's own 404
    assert await send(server, "/app/ok", 4, canary="always") == [200] * 4
    assert await send(server, "/app/fail", 2, canary="always") == [500] * 2
    assert await send(server, "/elsewhere", 2) == [404] * 2  # no route: the proxy's 404

    s = await scrape(server)
    assert by(s, "splitproxy_requests_total", "route", "version", "code") == {
        ("app", "stable", "200"): 6,
        ("app", "stable", "404"): 3,
        ("app", "candidate", "200"): 4,
        ("app", "candidate", "500"): 2,
        ("", "", "404"): 2,
    }
    assert by(s, "splitproxy_routing_decisions_total", "version", "reason") == {
        ("stable", "override"): 9,
        ("candidate", "override"): 6,
    }
    count = by(s, "splitproxy_request_duration_seconds_count", "version")
    assert count == {("stable",): 9, ("candidate",): 6}
    ttfb = by(s, "splitproxy_upstream_response_header_duration_seconds_count", "version")
    assert ttfb == {("stable",): 9, ("candidate",): 6}
    assert by(s, "splitproxy_requests_in_flight", "version") == {("stable",): 0, ("candidate",): 0}
    assert by(s, "splitproxy_upstream_errors_total", "kind") == {}
    assert by(s, "splitproxy_route_weight", "version") == {("stable",): 100, ("candidate",): 0}
    info = by(s, "splitproxy_upstream_info", "version", "upstream", "revision")
    assert info == {("stable", apps[0], ""): 1, ("candidate", apps[1], "2.0"): 1}
    assert s["splitproxy_config_reloads_total", frozenset({("result", "success")})] == 1
    assert s["splitproxy_config_last_reload_successful", frozenset()] == 1
    assert s["splitproxy_config_last_reload_success_timestamp_seconds", frozenset()] > 0


async def test_the_route_view_shows_the_last_minute_per_version(
    start_proxy: StartProxy, apps: tuple[str, str]
) -> None:
    server = await start_proxy({"routes": [app_route(*apps)]})
    await send(server, "/app/ok", 8)
    await send(server, "/app/ok", 3, canary="always")
    await send(server, "/app/fail", 1, canary="always")
    await send(server, "/app/slow?s=0.2", 1, canary="always")
    url = f"http://127.0.0.1:{server.admin_port}/api/v1/routes/app"
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        traffic = (await resp.json())["traffic"]
    # the proxy started moments ago: the rate is per second of the time its window covers
    span = traffic["window_seconds"]
    assert 1 <= span < 60
    stable, cand = traffic["stable"], traffic["candidate"]
    assert (stable["requests"], stable["errors"], stable["error_rate"]) == (8, 0, 0.0)
    assert stable["rate"] == pytest.approx(8 / span, abs=0.01)
    assert (cand["requests"], cand["errors"], cand["error_rate"]) == (5, 1, 0.2)
    latency = cand["latency_ms"]
    assert latency["p50"] < 200 <= latency["p99"] * 1.02  # the slowest of 5 is the p99
    assert latency["p50"] <= latency["p95"] <= latency["p99"]
    # status lists the same view for every route
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{server.admin_port}/api/v1/status") as resp:
            (route,) = (await resp.json())["routes"]
    assert route["traffic"]["candidate"]["requests"] == 5


async def test_proxy_failures_are_counted_with_their_code_and_kind(
    start_proxy: StartProxy, apps: tuple[str, str], refused_port: Callable[[], int]
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    raw = [
        await asyncio.start_server(reset, "127.0.0.1", 0),
        await asyncio.start_server(garbage, "127.0.0.1", 0),
    ]
    try:
        ports = [r.sockets[0].getsockname()[1] for r in raw]
        stable, candidate = apps
        routes = [
            {"name": "down", "match": {"path_prefix": "/down"}, "stable": f"http://127.0.0.1:{refused_port()}"},
            {"name": "reset", "match": {"path_prefix": "/reset"}, "stable": f"http://127.0.0.1:{ports[0]}"},
            {"name": "garbage", "match": {"path_prefix": "/garbage"}, "stable": f"http://127.0.0.1:{ports[1]}"},
            {"name": "hang", "match": {"host": "hang.test"}, "stable": candidate},
            {"name": "app", "match": {"path_prefix": "/app/"}, "stable": stable},
        ]  # fmt: skip
        server = await start_proxy({"routes": routes}, read_timeout=1.0, max_upstream_connections=1)
        # POSTs: not replayable, so each failure is one attempt
        assert await send(server, "/down", method="POST") == [502]
        assert await send(server, "/reset", method="POST") == [502]
        assert await send(server, "/garbage", method="POST") == [502]
        assert await send(server, "/app/slow?s=3", method="POST") == [504]

        # the upstream's one connection is busy: the next request gets a 503 at once
        slow = asyncio.create_task(send(server, "/app/slow?s=0.5"))
        await eventually(lambda: _in_flight(server, "app", 1))
        assert await send(server, "/app/ok") == [503]
        assert await slow == [200]
        # a client that gives up before the answer: 499
        _, writer = await asyncio.open_connection("127.0.0.1", server.listen_port)
        writer.write(b"GET /app/slow?s=0.5 HTTP/1.1\r\nHost: hang.test\r\n\r\n")
        await writer.drain()
        await eventually(lambda: _in_flight(server, "hang", 1))
        # gone without waiting for the answer: a reset (a FIN alone is a half-close, after
        # which the proxy still answers)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        writer.close()
        await eventually(lambda: _in_flight(server, "hang", 0))

        s = await scrape(server)
        assert by(s, "splitproxy_requests_total", "route", "version", "code") == {
            ("down", "stable", "502"): 1,
            ("reset", "stable", "502"): 1,
            ("garbage", "stable", "502"): 1,
            ("app", "stable", "504"): 1,
            ("app", "stable", "503"): 1,
            ("app", "stable", "200"): 1,
            ("hang", "stable", "499"): 1,
        }
        assert by(s, "splitproxy_upstream_errors_total", "route", "kind") == {
            ("down", "connect"): 1,
            ("reset", "reset"): 1,
            ("garbage", "protocol"): 1,
            ("app", "timeout"): 1,
            ("app", "pool"): 1,
        }
    finally:
        for r in raw:
            r.close()
            await r.wait_closed()


async def _in_flight(server: Server, route: str, n: int) -> bool:
    s = await scrape(server)
    return by(s, "splitproxy_requests_in_flight", "route", "version").get((route, "stable")) == n


async def test_a_candidate_failure_hidden_by_a_retry_still_counts_against_it(
    start_proxy: StartProxy, apps: tuple[str, str], refused_port: Callable[[], int]
) -> None:
    stable, _ = apps
    server = await start_proxy(
        {"routes": [app_route(stable, f"http://127.0.0.1:{refused_port()}", weight=100)]}
    )
    assert await send(server, "/app/ok", 3, canary="") == [200] * 3  # GET: replayed on stable
    s = await scrape(server)
    assert by(s, "splitproxy_requests_total", "version", "code") == {("stable", "200"): 3}
    assert by(s, "splitproxy_upstream_errors_total", "version", "kind") == {
        ("candidate", "connect"): 3
    }
    assert by(s, "splitproxy_routing_decisions_total", "version", "reason") == {
        ("candidate", "weight"): 3,
        ("stable", "retry"): 3,
    }
    assert by(s, "splitproxy_requests_in_flight", "version") == {("stable",): 0, ("candidate",): 0}
    # the analyzer's windows: three candidate errors, routed at probability 1
    observations = server.recorder.observations("app", time.time() - 60)
    assert sum(o.candidate.errors for o in observations) == 3
    assert sum(o.stable.requests for o in observations) == 0
    assert {o.probability for o in observations} == {1.0}


async def test_a_rejected_reload_shows_in_the_metrics(
    start_proxy: StartProxy, apps: tuple[str, str]
) -> None:
    server = await start_proxy({"routes": [app_route(*apps)]})
    path = server.settings.config
    assert path is not None
    before = (await scrape(server))[
        "splitproxy_config_last_reload_success_timestamp_seconds", frozenset()
    ]
    path.write_text("routes: [{name: app}]\n")  # no stable: invalid
    outcome = await server.reload()
    assert not outcome.loaded
    s = await scrape(server)
    assert s["splitproxy_config_reloads_total", frozenset({("result", "failure")})] == 1
    assert s["splitproxy_config_reloads_total", frozenset({("result", "success")})] == 1
    assert s["splitproxy_config_last_reload_successful", frozenset()] == 0
    assert s["splitproxy_config_last_reload_success_timestamp_seconds", frozenset()] == before


async def test_metrics_speak_both_exposition_formats_without_a_token(
    start_proxy: StartProxy, apps: tuple[str, str]
) -> None:
    server = await start_proxy({"routes": [app_route(*apps)]}, admin_token="s3cret")
    url = f"http://127.0.0.1:{server.admin_port}/metrics"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        openmetrics = "application/openmetrics-text; version=1.0.0"
        async with s.get(url, headers={"Accept": openmetrics}) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).endswith("# EOF\n")
    names = {name for name, _ in await scrape(server)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_one_access_log_line_per_request(
    start_proxy: StartProxy,
    apps: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    log_format: str,
) -> None:
    monkeypatch.setenv("SPLITPROXY_LOG_FORMAT", log_format)
    server = await start_proxy({"routes": [app_route(*apps)]}, access_log=True)
    capsys.readouterr()
    ids = []
    async with aiohttp.ClientSession() as s:
        for path, canary in (("/app/ok", "never"), ("/app/fail", "always"), ("/nowhere", "")):
            async with s.get(
                f"http://127.0.0.1:{server.listen_port}{path}", headers={"X-Canary": canary}
            ) as resp:
                ids.append(resp.headers["X-Request-ID"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3
    revision = server.state.snapshot.revision  # type: ignore[union-attr]
    if log_format == "json":
        ok, fail, nowhere = (json.loads(line) for line in lines)
        assert ok["path"] == "/app/ok"
        assert (ok["status"], ok["route"], ok["version"], ok["reason"]) == (
            200,
            "app",
            "stable",
            "override",
        )
        assert ok["upstream"] == apps[0]
        assert ok["upstream_status"] == 200
        assert ok["upstream_duration_ms"] > 0
        assert ok["duration_ms"] >= ok["upstream_duration_ms"]
        assert ok["bytes"] == len("stable")
        assert ok["client"] == "127.0.0.1"
        assert ok["config_revision"] == revision
        assert [ok["request_id"], fail["request_id"], nowhere["request_id"]] == ids
        assert (fail["status"], fail["version"], fail["upstream"]) == (500, "candidate", apps[1])
        assert (nowhere["status"], nowhere["route"], nowhere["upstream"]) == (404, None, None)
    else:
        ok, fail, nowhere = lines
        assert '127.0.0.1 "GET /app/ok HTTP/1.1" 200 6 ' in ok
        assert (
            f"route=app version=stable reason=override upstream={apps[0]} upstream_status=200" in ok
        )
        assert f"rid={ids[0]} rev={revision}" in ok
        assert '"GET /app/fail HTTP/1.1" 500 4 ' in fail
        assert "version=candidate" in fail
        assert '"GET /nowhere HTTP/1.1" 404 0 ' in nowhere
        assert "route=- version=- reason=- upstream=-" in nowhere


async def test_the_access_log_can_be_turned_off(
    start_proxy: StartProxy, apps: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_proxy({"routes": [app_route(*apps)]}, access_log=False)
    assert await send(server, "/app/ok", 3) == [200] * 3
    assert "/app/ok" not in capsys.readouterr().err


async def test_an_access_log_pipe_nobody_reads_does_not_stall_serving(
    start_proxy: StartProxy, apps: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # stderr is a real pipe that nobody reads, as small as Linux allows; the log's buffer small
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    stream = os.fdopen(w, "w", encoding="utf-8")
    monkeypatch.setattr(logwriter, "DEFAULT_LIMIT", 8 * 1024)
    monkeypatch.setattr(sys, "stderr", stream)
    reading = threading.Event()
    received = bytearray()

    def reader() -> None:
        reading.wait()
        os.set_blocking(r, False)
        while reading.is_set():
            try:
                received.extend(os.read(r, 1 << 16))
            except BlockingIOError:
                time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        server = await start_proxy({"routes": [app_route(*apps)]}, access_log=True)
        # ~75 KB of lines: ten times what the pipe and the buffer hold together
        n = 300
        assert await send(server, "/app/ok", n) == [200] * n
        log = server.access_log
        assert log is not None
        # the last lines wait up to 50 ms for the writer's hand-over: hand them over now, so
        # that every line is written or counted as dropped before the count is read
        log.flush()
        dropped = (await scrape(server))["splitproxy_access_log_dropped_total", frozenset()]
        assert dropped > 0
        # the reader comes back: the lines kept are written, whole, and only those
        reading.set()

        async def written() -> bool:
            return log.writer.backlog == 0 and received.count(b"\n") == n - dropped

        await eventually(written)
        lines = received.decode().splitlines()
        assert all('"GET /app/ok HTTP/1.1" 200 6 ' in line for line in lines)
    finally:
        reading.clear()
        thread.join(5)
        stream.close()  # (no line comes after the ones counted; the log's close writes none)
        os.close(r)
