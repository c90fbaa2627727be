"""Three ``splitproxy serve`` replicas sharing one real ``redis-server`` act as one proxy:
one leader decides from the pooled traffic of all, every replica serves the same split, and
a leader killed with SIGKILL or a Redis restart loses no decision.

Which replica answered: each replica numbers its request ids with its own random prefix, and
the upstreams here answer with the prefix they received. Every process is stopped at the end
of its test (``proc.serving``, the ``redis_server`` fixture), every loop is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy, serving
from tests.e2e.test_workers_cli import ROUTE, Upstream, eventually, get_json, write_config
from tests.redis_server import RedisServer


@contextlib.contextmanager
def replicas(
    tmp_path: Path, config: Path, redis: RedisServer, count: int = 3
) -> Iterator[list[Proxy]]:
    """``count`` replicas of ``splitproxy serve`` on one routing file and one Redis."""
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                serving(
                    config,
                    tmp_path / f"replica{i}.log",
                    "--state",
                    redis.url,
                    "--no-access-log",
                    "--drain-delay",
                    "0",
                    "--drain-timeout",
                    "3",
                )
            )
            for i in range(count)
        ]
        yield started


async def post(proxy: Proxy, path: str, body: dict[str, Any], method: str = "POST") -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, f"http://127.0.0.1:{proxy.admin_port}{path}", json=body,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def replica_view(proxy: Proxy) -> dict[str, Any]:
    status = await get_json(f"http://127.0.0.1:{proxy.admin_port}/api/v1/status")
    view: dict[str, Any] = status["rollouts"]["replica"]
    return view


async def route_view(proxy: Proxy) -> dict[str, Any]:
    view: dict[str, Any] = await get_json(
        f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}"
    )
    return view


async def leader_of(proxies: list[Proxy]) -> Proxy:
    """The one replica that leads (it must be exactly one)."""
    leading = [p for p in proxies if (await replica_view(p))["leading"]]
    assert len(leading) == 1, [p.output()[-2000:] for p in proxies]
    return leading[0]


async def versions(proxy: Proxy, count: int, user: str | None = None) -> list[str]:
    """The versions that answer ``count`` requests (on new connections) through ``proxy``."""
    headers = {"X-User": user} if user is not None else {}
    out = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(count):
            async with session.get(
                f"http://127.0.0.1:{proxy.port}/", headers=headers,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:  # fmt: skip
                body = await resp.json(content_type=None)
                out.append(body["version"])
    return out


@pytest.mark.timeout(60)
async def test_one_leader_and_a_weight_set_on_any_replica_splits_every_replica_alike(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app())
    )
    text = config.read_text().replace("weight: 0", "weight: 0\n  sticky: {header: X-User}")
    config.write_text(text)
    with replicas(tmp_path, config, redis_server) as proxies:
        leader = await leader_of(proxies)
        follower = next(p for p in proxies if p is not leader)
        # a weight set through a follower's admin API: the leader carries it out
        view = await post(follower, f"/api/v1/routes/{ROUTE}/weight", {"weight": 30}, "PUT")
        assert view["weight"]["effective"] == 30

        async def everywhere() -> bool:
            weights = [(await route_view(p))["weight"]["effective"] for p in proxies]
            return weights == [30, 30, 30]

        await eventually(everywhere, "weight 30 on every replica", limit=5)
        # the same users reach the same version whichever replica they land on
        users = [f"user-{i}" for i in range(40)]
        seen = [[(await versions(p, 1, user))[0] for user in users] for p in proxies]
        assert seen[0] == seen[1] == seen[2]
        assert 4 <= seen[0].count("candidate") <= 25  # about 30 % of 40


@pytest.mark.timeout(90)
async def test_a_faulty_candidate_is_rolled_back_on_every_replica_from_pooled_traffic(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate", fail_every=2)
    rollout = {
        "steps": [30, 60],
        "interval": "2s",
        "min_requests": 30,
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app()), **rollout
    )
    with replicas(tmp_path, config, redis_server) as proxies:
        leader = await leader_of(proxies)
        followers = [p for p in proxies if p is not leader]

        async def rolled_back_everywhere() -> bool:
            for p in followers:  # traffic through the followers only: the leader sees none
                await versions(p, 8)
            phases = [(await route_view(p))["rollout"]["phase"] for p in proxies]
            return phases == ["rolled_back"] * 3

        await eventually(rolled_back_everywhere, "rolled back on every replica", limit=60)
        served_by = {w for w in candidate.workers}
        assert len(served_by) == 2  # both followers sent users there; the leader none
        for p in proxies:
            assert set(await versions(p, 15)) == {"stable"}
        reasons = [e for e in (await route_view(leader))["rollout"]["history"]
                   if e["kind"] == "rolled_back"]  # fmt: skip
        assert reasons, (await route_view(leader))["rollout"]["history"]


@pytest.mark.timeout(120)
async def test_a_leader_killed_mid_rollout_is_replaced_at_the_same_step(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    rollout = {
        "steps": [10, 20, 30, 40, 50, 60],
        "interval": "2s",
        "min_requests": 10,
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app()), **rollout
    )
    with replicas(tmp_path, config, redis_server) as proxies:
        leader = await leader_of(proxies)
        others = [p for p in proxies if p is not leader]

        async def at_step_three() -> bool:
            for p in proxies:
                await versions(p, 10)
            view = await route_view(leader)
            return bool(view["rollout"]["step"] >= 3)

        await eventually(at_step_three, "at step 3", limit=60)
        step = (await route_view(leader))["rollout"]["step"]
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait(5)

        async def taken_over() -> bool:
            for p in others:
                await versions(p, 5)
            views = [await replica_view(p) for p in others]
            return sum(bool(v["leading"]) for v in views) == 1

        await eventually(taken_over, "another replica leading", limit=20)
        new = await leader_of(others)
        resumed = (await route_view(new))["rollout"]
        assert resumed["phase"] == "progressing", resumed
        assert resumed["step"] >= step  # not back at the first step

        async def moves_on() -> bool:
            for p in others:
                await versions(p, 10)
            return bool((await route_view(new))["rollout"]["step"] > step)

        await eventually(moves_on, "the next step under the new leader", limit=40)


@pytest.mark.timeout(120)
async def test_a_redis_restart_loses_no_decision_and_replicas_keep_serving(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    rollout = {
        "steps": [25, 50],
        "interval": "1h",
        "min_requests": 5,
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app()), **rollout
    )
    with replicas(tmp_path, config, redis_server) as proxies:
        leader = await leader_of(proxies)
        follower = next(p for p in proxies if p is not leader)
        paused = await post(follower, f"/api/v1/routes/{ROUTE}/pause", {"reason": "look"})
        assert paused["rollout"]["phase"] == "paused"
        step = paused["rollout"]["step"]
        redis_server.stop()
        # Redis is gone: every replica keeps serving the split it had
        for p in proxies:
            assert set(await versions(p, 20)) <= {"stable", "candidate"}

        async def nobody_leads() -> bool:
            views = [await replica_view(p) for p in proxies]
            return not any(v["leading"] for v in views)

        await eventually(nobody_leads, "the leader stepping down without Redis", limit=15)
        redis_server.start()
        await eventually(lambda: _one_leads(proxies), "a leader again", limit=20)
        for p in proxies:
            view = (await route_view(p))["rollout"]
            assert view["phase"] == "paused", view  # the decision survived the restart
            assert view["step"] == step
        resumed = await post(follower, f"/api/v1/routes/{ROUTE}/resume", {})
        assert resumed["rollout"]["phase"] in ("progressing", "waiting")  # running again


async def _one_leads(proxies: list[Proxy]) -> bool:
    views = [await replica_view(p) for p in proxies]
    return sum(bool(v["leading"]) for v in views) == 1


def failing_api(version: str) -> web.Application:
    """An upstream answering ``/api/...`` with a 500 (its health checks pass)."""

    async def answer(request: web.Request) -> web.Response:
        status = 500 if request.path.startswith("/api") else 200
        return web.json_response({"version": version}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def statuses(proxy: Proxy, count: int, path: str = "/api/x") -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(count):
            async with session.get(
                f"http://127.0.0.1:{proxy.port}{path}", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                body = await resp.json(content_type=None)
                out.append((resp.status, body["version"]))
    return out


@pytest.mark.timeout(120)
async def test_without_redis_a_replica_brakes_a_failing_candidate_on_itself_alone(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable = Upstream("stable")
    rollout = {"steps": [50], "interval": "1h", "min_requests": 1000}
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(failing_api("candidate")),
        **rollout,
    )  # fmt: skip
    with replicas(tmp_path, config, redis_server) as proxies:

        async def at_fifty() -> bool:
            views = [(await route_view(p))["weight"]["effective"] for p in proxies]
            return views == [50, 50, 50]

        await eventually(at_fifty, "the first step on every replica", limit=30)
        redis_server.stop()

        async def nobody_leads() -> bool:
            return not any([(await replica_view(p))["leading"] for p in proxies])

        await eventually(nobody_leads, "the leader stepping down without Redis", limit=15)
        braked, other = proxies[0], proxies[1]
        seen: list[tuple[int, str]] = []

        async def braked_on_itself() -> bool:
            seen.extend(await statuses(braked, 20))
            return seen[-20:] == [(200, "stable")] * 20

        await eventually(braked_on_itself, "the failing candidate braked on the replica", 30)
        assert (500, "candidate") in seen  # it did fail there first
        assert len(seen) <= 400
        # the brake is that replica's alone: the others still split (no decision without Redis)
        assert "candidate" in {v for _, v in await statuses(other, 40, "/")}
        redis_server.start()

        async def rolled_back_everywhere() -> bool:
            phases = [(await route_view(p))["rollout"]["phase"] for p in proxies]
            return phases == ["rolled_back"] * 3

        await eventually(rolled_back_everywhere, "rolled back once Redis is back", limit=30)
        # by the brake's report, or by the leader's guard on the pooled failures: both are
        # evidence, neither a decision taken blind
        history = (await route_view(other))["rollout"]["history"]
        reasons = [e["message"] for e in history if e["kind"] == "rolled_back"]
        assert len(reasons) == 1, history
        assert "guard" in reasons[0]
