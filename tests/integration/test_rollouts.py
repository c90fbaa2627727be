"""Automated rollouts end to end in one process: real aiohttp upstreams and hooks on 127.0.0.1,
the real proxy, admin API and controller, short intervals and a bounded traffic loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy import cli
from splitproxy.rollout.controller import ControlOptions
from splitproxy.server import Server
from splitproxy.settings import Settings

Start = Callable[..., Awaitable[Server]]
FAST = ControlOptions(tick=0.05, checkpoint=0.5, notify_drain=0.5)


class Upstream:
    """A version that names itself; every ``fail_every``-th request answers 500."""

    def __init__(self, name: str, fail_every: int = 0) -> None:
        self.name = name
        self.fail_every = fail_every
        self.count = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        if self.fail_every and self.count % self.fail_every == 0:
            return web.Response(status=500, text=f"{self.name} failed")
        return web.Response(text=self.name)


class HookSink:
    """Collects hook calls; answers ``status`` (settable)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({}, status=self.status)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


async def upstream(serve: Callable[[web.Application], Awaitable[str]], version: Upstream) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", version.handle)
    return await serve(app)


async def sink(serve: Callable[[web.Application], Awaitable[str]], hook: HookSink) -> str:
    app = web.Application()
    app.router.add_post("/{tail:.*}", hook.handle)
    return await serve(app)


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(config, **settings)``: a proxy with a fast controller."""
    servers: list[Server] = []

    async def go(config: dict[str, Any], **overrides: Any) -> Server:
        path = tmp_path / "routes.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "config": path,
            "access_log": False,
            "drain_timeout": 1.0,
            "reload_watch": False,
        }
        values.update(overrides)
        server = Server(Settings(**values), control_options=FAST)
        servers.append(server)
        await server.start()
        return server

    yield go
    for server in servers:
        await server.shutdown()


def app_route(stable: str, candidate: str, **rollout: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "steps": [20, 50],
        "interval": "1s",
        "min_requests": 20,
        "checks": [{"metric": "error_rate", "max": 0.05}],
    }
    spec.update(rollout)
    return {
        "routes": [
            {
                "name": "app",
                "stable": stable,
                "candidate": {"url": candidate, "revision": "2.0"},
                "rollout": spec,
            }
        ]
    }


def phase(server: Server) -> str:
    assert server.control is not None
    return server.control.analyzers()["app"].phase


async def drive(server: Server, done: Callable[[], bool], seconds: float = 15.0) -> None:
    """Send requests (4 at a time) until ``done()`` or ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    url = f"http://127.0.0.1:{server.listen_port}/"

    async def worker(session: aiohttp.ClientSession) -> None:
        while not done() and loop.time() < deadline:
            async with session.get(url) as resp:
                await resp.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))
    assert done(), f"not done after {seconds}s; phase {phase(server)}"


async def api(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.admin_port}{path}"
    async with aiohttp.ClientSession() as session:
        # the admin API takes mutations as JSON only (a cross-site form cannot send that)
        json_type = {"Content-Type": "application/json"}
        async with session.request(method, url, json=body, headers=json_type) as resp:
            if path == "/metrics":
                return resp.status, await resp.text()
            return resp.status, await resp.json()


async def test_a_good_candidate_is_promoted_with_evidence_hooks_and_metrics(
    start: Start, serve: Callable[[web.Application], Awaitable[str]]
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    candidate = await upstream(serve, Upstream("candidate"))
    events, slack = HookSink(), HookSink()
    hooks = [
        {"on": "event", "url": await sink(serve, events) + "/events"},
        {"on": "event", "url": await sink(serve, slack) + "/slack", "format": "slack"},
    ]
    server = await start(app_route(stable, candidate, hooks=hooks))
    await drive(server, lambda: phase(server) == "promoted")

    status, route = await api(server, "GET", "/api/v1/routes/app")
    assert status == 200
    assert route["weight"]["effective"] == 100
    assert route["weight"]["source"] == "rollout"
    rollout = route["rollout"]
    assert (rollout["phase"], rollout["step"], rollout["steps"]) == ("promoted", 2, 2)
    # the candidate is judged only once it is ready (it answers TCP connects here)
    assert [e["kind"] for e in rollout["history"]] == [
        "started",
        "waiting",
        "proceeded",
        "step",
        "step",
        "promoted",
    ]
    assert rollout["history"][1]["message"] == "waiting for the candidate to become ready"

    _, ledger = await api(server, "GET", "/api/v1/events?route=app")
    promoted = ledger["events"][-1]
    assert promoted["kind"] == "promoted"
    checks = {c["name"]: c for c in promoted["checks"]}
    assert checks["error_rate"]["verdict"] == "pass"
    assert checks["error_rate"]["max"] == 0.05
    assert checks["error_rate"]["sample"] >= 20

    _, metrics = await api(server, "GET", "/metrics")
    assert 'splitproxy_rollout_phase{phase="promoted",route="app"} 1.0' in metrics
    assert 'splitproxy_rollouts_total{result="promoted",route="app"} 1.0' in metrics
    assert 'splitproxy_rollout_step{route="app"} 2.0' in metrics
    assert 'splitproxy_rollout_duration_seconds_count{result="promoted",route="app"} 1.0' in metrics

    assert server.control is not None
    await server.control.settle()
    assert [b["type"] for b in events.bodies] == [
        "started",
        "waiting",
        "proceeded",
        "step",
        "step",
        "promoted",
    ]
    assert events.bodies[-1]["weight_after"] == 100
    assert slack.bodies[-1]["text"].startswith("splitproxy · app 2.0: promoted (candidate at 100%)")


async def test_a_candidate_with_25_percent_errors_is_rolled_back(
    start: Start, serve: Callable[[web.Application], Awaitable[str]]
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    bad = Upstream("candidate", fail_every=4)
    server = await start(app_route(stable, await upstream(serve, bad)))
    await drive(server, lambda: phase(server) == "rolled_back")
    _, route = await api(server, "GET", "/api/v1/routes/app")
    assert route["weight"]["effective"] == 0
    decision = route["rollout"]["history"][-1]
    assert decision["kind"] == "rolled_back"
    assert any(c["verdict"] == "fail" for c in decision["checks"])
    before = bad.count
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{server.listen_port}/") as resp:
                assert await resp.text() == "stable"
    assert bad.count == before


async def test_a_restart_mid_rollout_resumes_at_the_same_step_and_weight(
    start: Start, serve: Callable[[web.Application], Awaitable[str]], tmp_path: Path
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    candidate = await upstream(serve, Upstream("candidate"))
    config = app_route(stable, candidate, steps=[20, {"pause": True}, 50])
    state_dir = tmp_path / "state"
    first = await start(config, state_dir=state_dir)
    assert first.control is not None
    control = first.control
    await drive(
        first, lambda: control.analyzers()["app"].weight == 20 and phase(first) == "waiting"
    )
    await first.shutdown()

    second = await start(config, state_dir=state_dir)
    status, body = await api(second, "GET", "/api/v1/status")
    assert body["rollouts"] == {
        "backend": "file",
        "location": str(state_dir),
        "state_dir": str(state_dir),
        "persistent": True,
        "last_error": None,
    }
    (route,) = body["routes"]
    assert route["weight"] == {"effective": 20.0, "file": 0.0, "runtime": None, "source": "rollout"}
    rollout = route["rollout"]
    assert (rollout["phase"], rollout["step"], rollout["waiting_for"]) == ("waiting", 2, "pause")
    assert rollout["history"][-1]["kind"] == "state_restored"
    assert rollout["state"]["persistent"] is True
    status, after = await api(second, "POST", "/api/v1/routes/app/resume")
    assert status == 200
    assert after["weight"]["effective"] == 50


async def test_a_confirm_promotion_gate_holds_until_it_answers_2xx(
    start: Start, serve: Callable[[web.Application], Awaitable[str]]
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    candidate = await upstream(serve, Upstream("candidate"))
    gate = HookSink(status=403)
    hooks = [{"on": "confirm-promotion", "url": await sink(serve, gate), "retries": 0}]
    server = await start(app_route(stable, candidate, steps=[50], interval="0.5s", hooks=hooks))
    await drive(server, lambda: phase(server) == "waiting")
    await drive(server, lambda: len(gate.bodies) >= 3)  # asked again and again: still waiting
    assert phase(server) == "waiting"
    assert gate.bodies[0]["type"] == "confirm-promotion"
    assert gate.bodies[0]["route"] == "app"
    gate.status = 200
    await drive(server, lambda: phase(server) == "promoted", seconds=5)
    _, ledger = await api(server, "GET", "/api/v1/events")
    kinds = [e["kind"] for e in ledger["events"]]
    assert "gate_closed" in kinds
    assert kinds[-2:] == ["proceeded", "promoted"]


async def test_manual_commands_through_the_admin_api_and_the_cli(
    start: Start, serve: Callable[[web.Application], Awaitable[str]]
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    candidate = await upstream(serve, Upstream("candidate"))
    server = await start(app_route(stable, candidate, interval="1h"))
    await drive(server, lambda: phase(server) == "progressing")
    admin = f"http://127.0.0.1:{server.admin_port}"

    status, body = await api(server, "POST", "/api/v1/routes/app/pause", {"reason": "lunch"})
    assert (status, body["rollout"]["phase"]) == (200, "paused")
    status, body = await api(server, "POST", "/api/v1/routes/app/pause")
    assert (status, body["error"]["code"]) == (409, "command_refused")
    assert body["error"]["message"].startswith("cannot pause route 'app': its rollout is paused")
    status, body = await api(server, "PUT", "/api/v1/routes/app/weight", {"weight": 90})
    assert (status, body["error"]["code"]) == (409, "rollout_active")
    status, body = await api(server, "POST", "/api/v1/routes/app/explode")
    assert status == 404
    status, body = await api(server, "POST", "/api/v1/routes/app/weight")
    assert status == 405
    status, body = await api(server, "POST", "/api/v1/routes/nope/pause")
    assert (status, body["error"]["code"]) == (404, "no_such_route")

    async def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(cli.main, [*argv, "--admin-url", admin])
        return code, out.getvalue()

    code, out = await run("rollback", "app", "--reason", "bad smell")
    assert code == 0
    assert out.strip() == "app: rolled_back, step 1/2, candidate weight 0%"
    code, out = await run("retry", "app")
    assert (code, out.strip()) == (0, "app: progressing, step 1/2, candidate weight 20%")
    code, out = await run("promote", "app")
    assert (code, out.strip()) == (0, "app: promoted, step 1/2, candidate weight 100%")
    code, out = await run("resume", "app")
    assert code == 1
    code, out = await run("status")
    assert code == 0
    assert "promoted" in out
    assert "step 1/2" in out

    _, ledger = await api(server, "GET", "/api/v1/events?route=app&limit=5")
    events = ledger["events"]
    assert len(events) == 5
    assert [e["kind"] for e in events][-3:] == ["retried", "step", "promoted"]
    rolled = next(e for e in (await api(server, "GET", "/api/v1/events"))[1]["events"]
                  if e["kind"] == "rolled_back")  # fmt: skip
    assert rolled["message"] == "rolled back by hand: bad smell"
    assert rolled["source"] == "manual:admin"
    status, body = await api(server, "GET", "/api/v1/events?limit=0")
    assert status == 400


async def test_judged_synthetic_traffic_alone_carries_a_quiet_service_to_promotion(
    start: Start, serve: Callable[[web.Application], Awaitable[str]]
) -> None:
    stable_v, candidate_v = Upstream("stable"), Upstream("candidate")
    stable = await upstream(serve, stable_v)
    candidate = await upstream(serve, candidate_v)
    traffic = {"rate": 200, "paths": ["/", "/health"], "judge": True}
    server = await start(app_route(stable, candidate, traffic=traffic))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while phase(server) != "promoted" and loop.time() < deadline:  # no user sends anything
        await asyncio.sleep(0.05)
    assert phase(server) == "promoted"
    assert candidate_v.count >= 40  # 20 per step, all of them synthetic
    assert stable_v.count == 0  # synthetic traffic targets the candidate
    _, metrics = await api(server, "GET", "/metrics")
    assert (
        'splitproxy_synthetic_requests_total{code="200",route="app",version="candidate"}' in metrics
    )
    user = 'splitproxy_requests_total{code="200",route="app",traffic="user",version="candidate"}'
    assert user not in metrics
    sent = candidate_v.count
    await asyncio.sleep(0.3)  # promoted: the generator has stopped
    assert candidate_v.count - sent <= 16  # at most what was already in flight


async def test_a_candidate_that_starts_listening_5s_late_is_rolled_out_not_rolled_back(
    start: Start,
    serve: Callable[[web.Application], Awaitable[str]],
    late_port: Callable[[], int],
) -> None:
    """The compose flow: the routing file names the new revision while its container is
    still starting. Connection refusals of a never-ready candidate are not evidence."""
    stable = await upstream(serve, Upstream("stable"))
    port = late_port()
    server = await start(app_route(stable, f"http://127.0.0.1:{port}"))
    late = Upstream("candidate")
    app = web.Application()
    app.router.add_get("/{tail:.*}", late.handle)
    runner = web.AppRunner(app, access_log=None)

    async def start_late() -> None:
        await asyncio.sleep(5.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    starter = asyncio.create_task(start_late())
    try:
        await drive(server, lambda: phase(server) in ("promoted", "rolled_back"), seconds=40)
    finally:
        await starter
        await runner.cleanup()
    assert phase(server) == "promoted"
    _, route = await api(server, "GET", "/api/v1/routes/app")
    kinds = [e["kind"] for e in route["rollout"]["history"]]
    assert kinds[:3] == ["started", "waiting", "proceeded"]
    assert "rolled_back" not in kinds
    assert late.count > 0  # it served users once ready


async def test_a_candidate_that_never_listens_is_rolled_back_at_the_progress_deadline(
    start: Start,
    serve: Callable[[web.Application], Awaitable[str]],
    refused_port: Callable[[], int],
) -> None:
    stable = await upstream(serve, Upstream("stable"))
    config = app_route(stable, f"http://127.0.0.1:{refused_port()}", progress_deadline="4s")
    server = await start(config)
    assert server.control is not None
    analyzer = server.control.analyzers()["app"]
    await drive(server, lambda: phase(server) == "waiting" and analyzer.weight == 0, seconds=5)
    await drive(server, lambda: phase(server) == "rolled_back", seconds=15)
    _, route = await api(server, "GET", "/api/v1/routes/app")
    last = route["rollout"]["history"][-1]
    assert last["kind"] == "rolled_back"
    assert "candidate never became ready" in last["message"]
    assert route["weight"]["effective"] == 0
