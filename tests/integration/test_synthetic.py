"""Synthetic traffic through a real proxy to aiohttp upstreams on 127.0.0.1: `traffic.py`,
the marker in the data path, metrics and windows; and path classes from real requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.config import Traffic
from splitproxy.dataplane.synthetic import HEADER, PROCESS_TOKEN, marker
from splitproxy.rollout.samples import samples_for
from splitproxy.rollout.traffic import SyntheticTraffic, SyntheticTraffics, loopback_url
from splitproxy.rollout.windows import OTHER_CLASS
from splitproxy.server import Server
from tests.conftest import StartProxy
from tests.integration.test_metrics import by, scrape


@dataclass
class Upstream:
    """An aiohttp app that answers with its name and records what it got."""

    name: str
    server: TestServer | None = None
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> Upstream:
        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            self.seen.append((request.path_qs, dict(request.headers)))
            if request.path.startswith("/fail"):
                return web.Response(status=500, text="broken")
            if request.path.startswith("/hang"):
                await asyncio.sleep(2)
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    def marked(self) -> list[tuple[str, dict[str, str]]]:
        return [(p, h) for p, h in self.seen if HEADER in h]


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    stable, candidate = await Upstream("stable").start(), await Upstream("candidate").start()
    yield stable, candidate
    for u in (stable, candidate):
        assert u.server is not None
        await u.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def app_route(stable: Upstream, candidate: Upstream, **fields: Any) -> dict[str, Any]:
    return {"name": "app", "stable": stable.url, "candidate": candidate.url, **fields}


def base(server: Server) -> str:
    return loopback_url("127.0.0.1", server.listen_port)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def test_synthetic_requests_reach_the_candidate_marked_and_counted_apart(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate, weight=0)]})
    spec = Traffic(rate=100, paths=("/a/1", "/b?x=1"), headers={"X-Probe": "yes"})
    traffic = SyntheticTraffic(session, base(server), "app", spec, host="shop.example.com")
    started = time.monotonic()
    traffic.start()
    traffic.start()  # idempotent
    await eventually(lambda: traffic.sent >= 30)
    await traffic.stop()
    elapsed = time.monotonic() - started
    assert sum(traffic.statuses.values()) + traffic.failed + traffic.cancelled == traffic.sent
    assert not traffic.running
    assert 0.5 * 100 * elapsed <= traffic.sent <= 1.5 * 100 * elapsed + 2  # open loop at rate
    answered = traffic.statuses.get(200, 0)
    assert answered >= 20
    assert traffic.failed == 0
    # a request cut by stop may still have reached the proxy and the upstream
    await eventually(lambda: server.recorder.in_flight("app", "candidate") == 0)
    samples = await scrape(server)
    synthetic = by(samples, "splitproxy_synthetic_requests_total", "route", "version", "code")
    proxied = sum(synthetic.values())
    assert answered <= proxied <= answered + traffic.cancelled

    # all on the candidate (the weight is 0), marked "1" for the upstream, token withheld
    assert stable.seen == []
    assert len(candidate.seen) == proxied
    paths = [p for p, _ in candidate.seen]
    assert paths[:4] == ["/a/1", "/b?x=1", "/a/1", "/b?x=1"]
    for _, headers in candidate.seen:
        assert headers[HEADER] == "1"
        assert headers["Host"] == "shop.example.com"
        assert headers["X-Probe"] == "yes"
        assert headers["User-Agent"].startswith("splitproxy-synthetic/")
        assert PROCESS_TOKEN not in str(headers)

    # metrics: their own counter, not the users' requests or durations
    assert set(synthetic) <= {("app", "candidate", "200"), ("app", "candidate", "499")}
    requests = by(samples, "splitproxy_requests_total", "route", "version", "code")
    assert requests.get(("app", "candidate", "200"), 0) == 0
    durations = by(samples, "splitproxy_request_duration_seconds_count", "route", "version")
    assert durations[("app", "candidate")] == 0
    reasons = by(samples, "splitproxy_routing_decisions_total", "route", "version", "reason")
    assert reasons[("app", "candidate", "synthetic")] == proxied

    # windows: synthetic cells only; the analyzer sees them only when judged
    observations = server.recorder.observations("app", 0.0)
    assert sum(o.synthetic_candidate.requests for o in observations) == proxied
    assert sum(o.candidate.requests + o.stable.requests for o in observations) == 0
    assert samples_for(observations) == []
    judged = samples_for(observations, judge_synthetic=True)
    assert {(s.version, s.p, s.path_class) for s in judged} == {("candidate", None, None)}
    assert sum(s.requests for s in judged) == proxied


async def test_an_outside_marker_is_ignored_and_never_forwarded(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate, weight=0)]})
    forged = [
        "1",
        marker("app", "candidate", token="0" * 32),  # a guessed token
        marker("app", "candidate").upper(),
    ]
    for value in forged:
        async with session.get(f"{base(server)}/x", headers={HEADER: value}) as resp:
            assert await resp.text() == "stable"
    assert candidate.seen == []
    assert all(HEADER not in headers for _, headers in stable.seen)
    samples = await scrape(server)
    requests = by(samples, "splitproxy_requests_total", "route", "version", "code")
    assert requests[("app", "stable", "200")] == len(forged)
    assert by(samples, "splitproxy_synthetic_requests_total", "route", "version", "code") == {}

    # the real marker, from this process: forced to the candidate
    headers = {HEADER: marker("app", "candidate")}
    async with session.get(f"{base(server)}/x", headers=headers) as resp:
        assert await resp.text() == "candidate"
    # ours, for a route that is gone (a reload removed it), or garbled: never passed off as
    # a user's request
    for value in (marker("gone", "candidate"), marker("app", "candidate") + " x"):
        async with session.get(f"{base(server)}/x", headers={HEADER: value}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "no_route"
    assert len(stable.seen) == len(forged)


async def test_the_marker_picks_route_and_target_whatever_the_host_and_path_match(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    other = await Upstream("other").start()
    try:
        routes = [
            {"name": "catchall", "stable": other.url},  # first: matches every request
            app_route(stable, candidate, match={"host": "shop.example.com"}, weight=100),
        ]
        server = await start_proxy({"routes": routes})
        spec = Traffic(rate=50, target="stable")
        traffic = SyntheticTraffic(session, base(server), "app", spec)  # Host: 127.0.0.1
        traffic.start()
        await eventually(lambda: len(stable.seen) >= 3)
        await traffic.stop()
        assert other.seen == []
        assert candidate.seen == []
        assert all(h[HEADER] == "1" for _, h in stable.seen)
        samples = await scrape(server)
        synthetic = by(samples, "splitproxy_synthetic_requests_total", "route", "version", "code")
        assert set(synthetic) == {("app", "stable", "200")}
    finally:
        assert other.server is not None
        await other.server.close()


async def test_a_candidate_less_route_gets_synthetic_traffic_on_stable(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, _ = upstreams
    server = await start_proxy({"routes": [{"name": "app", "stable": stable.url}]})
    traffic = SyntheticTraffic(session, base(server), "app", Traffic(rate=50))
    traffic.start()
    await eventually(lambda: len(stable.seen) >= 2)
    await traffic.stop()
    assert all(h[HEADER] == "1" for _, h in stable.seen)


async def test_concurrency_and_stop_bound_the_traffic(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate)]})
    spec = Traffic(rate=200, paths=("/hang",), concurrency=3, timeout=60)
    traffic = SyntheticTraffic(session, base(server), "app", spec)
    traffic.start()
    await asyncio.sleep(0.3)
    assert traffic.in_flight == 3
    assert traffic.sent == 3  # none is answered: the bound holds
    assert traffic.skipped >= 20
    began = time.monotonic()
    await traffic.stop()
    assert time.monotonic() - began < 1.0
    assert traffic.in_flight == 0
    sent = traffic.sent
    await asyncio.sleep(0.1)
    assert traffic.sent == sent  # stopped means stopped
    assert (traffic.failed, traffic.cancelled) == (0, 3)  # cancelled by stop, not failed


async def test_failures_are_counted(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate)]})
    traffic = SyntheticTraffic(session, base(server), "app", Traffic(rate=100, paths=("/fail",)))
    traffic.start()
    await eventually(lambda: traffic.statuses.get(500, 0) >= 5)
    await traffic.stop()
    assert traffic.failed == traffic.statuses[500]
    assert traffic.last_error == "HTTP 500"
    observations = server.recorder.observations("app", 0.0)
    syn = sum(o.synthetic_candidate.errors for o in observations)
    # (a request cut by stop may have been answered by the proxy already)
    assert traffic.statuses[500] <= syn <= traffic.statuses[500] + traffic.cancelled
    judged = samples_for(observations, judge_synthetic=True)
    assert sum(s.errors for s in judged) == syn

    with_no_proxy = SyntheticTraffic(session, "http://127.0.0.1:1", "app", Traffic(rate=100))
    with_no_proxy.start()
    await eventually(lambda: with_no_proxy.failed >= 3)
    await with_no_proxy.stop()
    assert with_no_proxy.last_error is not None
    assert with_no_proxy.status()["failed"] == with_no_proxy.failed


async def test_traffics_follow_the_phase_and_the_spec(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate)]})
    traffics = SyntheticTraffics(session)  # the listener's address is not known yet
    spec = Traffic(rate=50)
    assert traffics.update("app", spec, "progressing") is None
    traffics.base_url = base(server)
    assert traffics.update("app", spec, "idle") is None
    first = traffics.update("app", spec, "progressing")
    assert first is not None
    assert first.running
    assert traffics.update("app", Traffic(rate=50), "waiting") is first  # same spec
    await eventually(lambda: len(candidate.seen) >= 2)
    second = traffics.update("app", Traffic(rate=20), "progressing")
    assert second is not None
    assert second is not first
    assert not first.running
    assert second.running
    third = traffics.update("app", Traffic(rate=20), "progressing", host="h.example")
    assert third is not second
    assert not second.running
    assert traffics.update("app", Traffic(rate=20), "paused") is None
    assert third is not None
    assert not third.running
    assert traffics.get("app") is None
    sent = first.sent + second.sent + third.sent
    await asyncio.sleep(0.1)
    assert first.sent + second.sent + third.sent == sent  # stopped at once
    again = traffics.update("app", spec, "progressing")
    traffics.retain({"other"})
    assert again is not None
    assert not again.running
    traffics.update("app", spec, "progressing")
    traffics.update("app", None, "progressing")
    assert traffics.get("app") is None
    last = traffics.update("app", spec, "progressing")
    await traffics.close()
    assert traffics.get("app") is None
    assert last is not None
    assert last.in_flight == 0


async def test_user_requests_are_split_by_path_class(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    server = await start_proxy({"routes": [app_route(stable, candidate, weight=50)]})
    paths = ["/api/users/1", "/api/users/2", "/web", "/123", "/api/orders?x=1"]
    for path in paths:
        async with session.get(base(server) + path) as resp:
            assert resp.status == 200
    await eventually(
        lambda: (
            sum(
                o.stable.requests + o.candidate.requests
                for o in server.recorder.observations("app", 0.0)
            )
            == len(paths)
        )
    )
    counts: dict[str, int] = {}
    for obs in server.recorder.observations("app", 0.0):
        for c in obs.path_classes:
            counts[c.name] = counts.get(c.name, 0) + c.stable_requests + c.candidate_requests
    assert counts == {"/api": 3, "/web": 1, OTHER_CLASS: 1}
    samples = samples_for(server.recorder.observations("app", 0.0))
    assert {s.p for s in samples} == {0.5}
    assert sum(s.requests for s in samples) == len(paths)


async def test_the_route_status_shows_the_synthetic_traffic(
    start_proxy: StartProxy,
    upstreams: tuple[Upstream, Upstream],
    session: aiohttp.ClientSession,
) -> None:
    stable, candidate = upstreams
    rollout = {
        "steps": [20, 50],
        "interval": "1h",  # stays on its first step: the traffic keeps running
        "checks": [{"metric": "error_rate", "max": 0.5}],
        "traffic": {"rate": 50, "paths": ["/ok", "/fail"]},
    }
    server = await start_proxy({"routes": [app_route(stable, candidate, rollout=rollout)]})
    admin = f"http://127.0.0.1:{server.admin_port}"

    async def route_view() -> dict[str, Any]:
        async with session.get(f"{admin}/api/v1/routes/app") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def answered() -> bool:
        synthetic = (await route_view())["rollout"]["synthetic"]
        return bool(synthetic["answered"]["candidate"]["requests"] >= 10)

    await eventually(answered, within=10)
    synthetic = (await route_view())["rollout"]["synthetic"]
    assert (synthetic["rate"], synthetic["target"], synthetic["judge"]) == (50, "candidate", False)
    assert synthetic["running"] is True
    generator = synthetic["generator"]
    assert generator["running"] is True
    assert generator["sent"] >= generator["statuses"]["200"] >= 5
    assert generator["statuses"]["500"] >= 5  # every other path fails
    assert generator["failed"] == generator["statuses"]["500"]
    assert generator["last_error"] == "HTTP 500"
    # what the proxy answered, by the version that answered: all of it the candidate's
    versions = synthetic["answered"]
    assert versions["window_seconds"] == 60
    assert versions["stable"] == {"requests": 0, "errors": 0}
    assert versions["candidate"]["errors"] >= 5
    assert versions["candidate"]["requests"] > versions["candidate"]["errors"]

    async with session.get(f"{admin}/api/v1/status") as resp:
        (entry,) = (await resp.json())["routes"]
    assert entry["rollout"]["synthetic"]["target"] == "candidate"
    assert entry["rollout"]["synthetic"]["generator"]["sent"] >= generator["sent"]

    # paused: the traffic stops, and its last run's counters stay in the status
    async with session.post(f"{admin}/api/v1/routes/app/pause", json={}) as resp:
        paused = (await resp.json())["rollout"]["synthetic"]
    assert paused["running"] is False
    assert paused["generator"]["running"] is False
    assert paused["generator"]["sent"] >= generator["sent"]
