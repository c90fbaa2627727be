"""Upstream health against real loopback upstreams: a dead replica is ejected after a bounded
number of failures and probed back in, a backend with every address down fails open with a
502 and says ``all_down``, a candidate failing its health check gets no user traffic, and the
checks, the status and the metrics say what happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.config.routes import HealthCheck
from splitproxy.dataplane.health import PassivePolicy, Probe
from splitproxy.dataplane.probes import check_once
from splitproxy.server import Server
from tests.conftest import StartProxy
from tests.integration.test_metrics import by, scrape

FAST = PassivePolicy(eject_after=3, base_ejection=0.3, max_ejection=1.0)


class Upstream:
    """An aiohttp upstream answering its name; ``/healthz`` answers ``health`` (a status)."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.health = 200
        self.requests = 0
        self.server: TestServer | None = None
        self.port = port

    async def start(self) -> Upstream:
        async def hello(request: web.Request) -> web.Response:
            await request.read()
            self.requests += 1
            return web.Response(text=self.name)

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=self.health, text="health")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_route("*", "/{tail:.*}", hello)
        self.server = TestServer(app, host="127.0.0.1", port=self.port or None)
        await self.server.start_server()
        self.port = self.server.port or 0
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def make(name: str, port: int = 0) -> Upstream:
        up = await Upstream(name, port).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.stop()


async def send(
    session: aiohttp.ClientSession, server: Server, method: str = "GET", **kw: Any
) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.listen_port}/"
    async with session.request(method, url, **kw) as resp:
        return resp.status, await resp.text()


async def status_of(server: Server) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.admin_port}/api/v1/routes/app"
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def test_a_dead_stable_replica_costs_a_bounded_number_of_failures(
    start_proxy: StartProxy,
    upstreams: Callable[..., Awaitable[Upstream]],
    refused_port: Callable[[], int],
) -> None:
    alive = await upstreams("a")
    dead = f"http://127.0.0.1:{refused_port()}"
    server = await start_proxy({"routes": [{"name": "app", "stable": [alive.url, dead]}]})
    async with aiohttp.ClientSession() as session:
        # a request with a body is never replayed: each attempt on the dead one is a 502
        posts = [(await send(session, server, "POST", data=b"x"))[0] for _ in range(40)]
        gets = [await send(session, server) for _ in range(20)]
    failed = [i for i, code in enumerate(posts) if code != 200]
    assert len(failed) <= 3  # eject_after, then it is out of rotation
    assert failed
    assert max(failed) < 6  # ... and the failures came first, alternating with successes
    assert gets == [(200, "a")] * 20
    view = await status_of(server)
    states = {a["url"]: a for a in view["stable"]["addresses"]}
    assert states[dead]["state"] == "ejected"
    assert states[dead]["ejected"] is True
    assert states[dead]["consecutive_failures"] >= 3
    assert states[alive.url]["state"] == "healthy"
    assert view["stable"]["all_down"] is False
    samples = await scrape(server)
    healthy = by(samples, "splitproxy_upstream_healthy", "route", "version", "upstream")
    assert healthy == {("app", "stable", alive.url): 1.0, ("app", "stable", dead): 0.0}


async def test_without_health_a_dead_replica_only_costs_replays_for_gets(
    start_proxy: StartProxy,
    upstreams: Callable[..., Awaitable[Upstream]],
    refused_port: Callable[[], int],
) -> None:
    """A GET that fails to connect is replayed on the other stable address, not the same."""
    alive = await upstreams("a")
    dead = f"http://127.0.0.1:{refused_port()}"
    server = await start_proxy({"routes": [{"name": "app", "stable": [dead, alive.url]}]})
    async with aiohttp.ClientSession() as session:
        got = [await send(session, server) for _ in range(10)]
    assert got == [(200, "a")] * 10
    errors = by(await scrape(server), "splitproxy_upstream_errors_total", "version", "kind")
    assert 1 <= errors[("stable", "connect")] <= 3


async def test_an_ejected_address_that_comes_back_is_probed_back_in(
    start_proxy: StartProxy,
    upstreams: Callable[..., Awaitable[Upstream]],
    late_port: Callable[[], int],
) -> None:
    alive = await upstreams("a")
    port = late_port()
    server = await start_proxy(
        {"routes": [{"name": "app", "stable": [alive.url, f"http://127.0.0.1:{port}"]}]}
    )
    server.health.policy = FAST
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            await send(session, server, "POST", data=b"x")
        view = await status_of(server)
        assert view["stable"]["addresses"][1]["state"] == "ejected"
        back = await upstreams("b", port)
        seen: set[str] = set()

        async def both() -> bool:
            status, text = await send(session, server, "POST", data=b"x")
            assert status == 200  # the trial request is the one that finds it alive
            seen.add(text)
            return seen == {"a", "b"}

        deadline = time.monotonic() + 5
        while not await both():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert back.requests >= 1
    view = await status_of(server)
    assert view["stable"]["addresses"][1]["state"] == "healthy"


async def test_every_address_down_fails_open_with_502_and_status_says_all_down(
    start_proxy: StartProxy,
    refused_port: Callable[[], int],
) -> None:
    dead = [f"http://127.0.0.1:{refused_port()}" for _ in range(2)]
    server = await start_proxy({"routes": [{"name": "app", "stable": dead}]})
    async with aiohttp.ClientSession() as session:
        codes = [(await send(session, server))[0] for _ in range(8)]
    assert codes == [502] * 8  # still tried: a clear 502, not a refusal to try
    view = await status_of(server)
    assert view["stable"]["all_down"] is True
    assert [a["state"] for a in view["stable"]["addresses"]] == ["ejected", "ejected"]


async def test_a_candidate_failing_its_check_gets_no_user_traffic_until_healthy(
    start_proxy: StartProxy, upstreams: Callable[..., Awaitable[Upstream]]
) -> None:
    stable = await upstreams("stable")
    cand = await upstreams("candidate")
    # a timeout of 300 ms, not 100: no check may time out here (asserted at the end), and a
    # loopback check answered in under a millisecond took over 100 ms once on a loaded CI
    check = {"path": "/healthz", "interval": "300ms", "timeout": "300ms",
             "unhealthy_after": 2, "healthy_after": 2}  # fmt: skip
    server = await start_proxy(
        {
            "routes": [
                {
                    "name": "app",
                    "stable": stable.url,
                    "candidate": {"url": cand.url, "revision": "2", "health": check},
                    "weight": 100,
                    "overrides": [{"header": "X-Canary"}],
                    "sticky": {"cookie": "sid"},
                }
            ]
        }
    )
    assert server.health.candidate("app").ready is False
    await until(lambda: server.health.candidate("app").ready)
    async with aiohttp.ClientSession() as session:
        canary = {"X-Canary": "always"}
        sticky = {"Cookie": "sid=someone"}  # at weight 100 every bucket is the candidate's
        assert await send(session, server, headers=canary) == (200, "candidate")
        assert await send(session, server, headers=sticky) == (200, "candidate")

        cand.health = 503
        await until(lambda: not server.health.up("app", "candidate"))
        for headers in ({}, canary, sticky) * 5:
            assert await send(session, server, headers=headers) == (200, "stable")
        view = await status_of(server)
        (address,) = view["candidate"]["addresses"]
        assert address["state"] == "unhealthy"
        assert address["last_check"] == "unexpected_status"
        assert view["candidate"]["all_down"] is True
        health = server.health.candidate("app")
        assert health.healthy is False
        assert health.unhealthy_since is not None

        cand.health = 200
        await until(lambda: server.health.up("app", "candidate"))
        assert await send(session, server, headers=sticky) == (200, "candidate")
        assert await send(session, server) == (200, "candidate")
        decisions = by(
            await scrape(server), "splitproxy_routing_decisions_total", "version", "reason"
        )
        assert decisions[("stable", "fallback")] == 15
    samples = await scrape(server)
    checks = by(samples, "splitproxy_health_checks_total", "version", "upstream", "result")
    assert checks[("candidate", cand.url, "unexpected_status")] >= 2
    assert checks[("candidate", cand.url, "success")] >= 4
    assert checks[("candidate", cand.url, "timeout")] == 0


def probe(port: int, *, tcp: bool = False, **spec: Any) -> Probe:
    return Probe("app", "stable", f"http://127.0.0.1:{port}", "127.0.0.1", port,
                 HealthCheck.model_validate(spec), tcp)  # fmt: skip


async def test_active_checks_expect_timeout_refused_and_tcp(
    refused_port: Callable[[], int],
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/"})

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/healthz", no_content)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    port = server.port
    assert port is not None
    try:
        assert await check_once(probe(port)) == "success"
        assert await check_once(probe(port, expect=200)) == "unexpected_status"
        assert await check_once(probe(port, expect=[200, 204])) == "success"
        assert await check_once(probe(port, path="/moved")) == "unexpected_status"
        assert await check_once(probe(port, path="/moved", expect="3xx")) == "success"
        assert await check_once(probe(port, path="/missing")) == "unexpected_status"
        started = time.monotonic()
        assert await check_once(probe(port, path="/slow", timeout="200ms")) == "timeout"
        assert time.monotonic() - started < 0.8
        assert await check_once(probe(port, path="/slow", tcp=True)) == "success"
    finally:
        await server.close()
    refused = refused_port()
    assert await check_once(probe(refused)) == "connect_error"
    assert await check_once(probe(refused, tcp=True)) == "connect_error"


async def test_a_rollout_candidate_without_health_is_made_ready_by_tcp_probes(
    start_proxy: StartProxy,
    upstreams: Callable[..., Awaitable[Upstream]],
    late_port: Callable[[], int],
) -> None:
    stable = await upstreams("stable")
    port = late_port()
    rollout = {"steps": [{"weight": 10, "interval": "1m"}]}
    server = await start_proxy(
        {
            "routes": [
                {
                    "name": "app",
                    "stable": stable.url,
                    "candidate": {"url": f"http://127.0.0.1:{port}", "revision": "2"},
                    "rollout": rollout,
                }
            ]
        }
    )
    (tcp,) = server.prober.probes
    assert tcp.tcp
    assert not server.health.candidate("app").ready
    await upstreams("candidate", port)
    # the TCP probe runs at the defaults: 2 s apart, 2 passes to be ready
    await until(lambda: server.health.candidate("app").ready, within=8)
