"""An A/B test over several processes counts every user once, whichever processes their
requests reach: ``serve --workers 2`` (users' requests spread by the kernel over both
workers), and two replicas sharing a real ``redis-server`` (requests sent to each replica's
own port). The status shows the leader's global counts: every user exposed exactly once,
every sign-up once per user, none lost for landing on a follower.

Each test runs a long test (``min_duration`` of 10 minutes: nothing is decided meanwhile) and
stops every process it starts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy
from tests.e2e.test_replicas_cli import leader_of, replicas
from tests.e2e.test_workers_cli import ROUTE, Upstream, eventually, get_json, start_workers
from tests.redis_server import RedisServer


def ab_config(path: Path, stable: str, candidate: str) -> Path:
    section = {
        "split": 50,
        "goals": [{"name": "signup", "method": "POST", "path_prefix": "/signup", "status": "2xx"}],
        "min_duration": "10m",
        "max_duration": "20m",
    }
    route = {
        "name": ROUTE,
        "stable": {"url": stable, "revision": "1.0"},
        "candidate": {"url": candidate, "revision": "1.1"},
        "sticky": {"header": "X-User"},
        "rollout": {"strategy": "ab", "interval": "1s", "min_requests": 0, "ab": section},
    }
    path.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    return path


async def visit(proxy: Proxy, user: str, method: str = "GET", path: str = "/") -> str:
    """One request of ``user`` on a new connection (so any worker may accept it): the proxy
    process that sent it (its request ids' prefix, as the upstream echoes it)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.request(
            method, f"http://127.0.0.1:{proxy.port}{path}", headers={"X-User": user},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json(content_type=None)
            return str(body["worker"])


async def ab_view(proxy: Proxy) -> dict[str, Any]:
    view = await get_json(f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}")
    ab: dict[str, Any] = (view.get("rollout") or {}).get("ab") or {}
    return ab


async def counted_exactly(proxy: Proxy, users: int, converted: int) -> dict[str, Any]:
    """Wait until the leader's status counts ``users`` exposed and ``converted`` signed up;
    then check it stays so (a user counted twice would show up in the next ticks)."""
    seen: dict[str, Any] = {}

    async def there() -> bool:
        nonlocal seen
        seen = await ab_view(proxy)
        if not seen:
            return False
        signup = seen["goals"][0]
        return bool(
            sum(seen["users"].values()) >= users
            and signup["stable"]["converted"] + signup["candidate"]["converted"] >= converted
        )

    await eventually(there, f"{users} users and {converted} sign-ups counted", 20)
    signup = seen["goals"][0]
    assert sum(seen["users"].values()) == users, seen
    assert signup["stable"]["converted"] + signup["candidate"]["converted"] == converted, seen
    return seen


@pytest.mark.timeout(90)
async def test_users_spread_over_two_workers_are_each_counted_once(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    config = ab_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app())
    )
    with start_workers(tmp_path, config) as proxy:
        await eventually(lambda: _has_test(proxy), "the A/B test running", 20)
        # users who each make one visit and sign up: some land on one worker only, some on
        # the other, until each worker alone served at least 3 users' whole visit
        alone: dict[str, set[str]] = defaultdict(set)
        users: list[str] = []
        while len(alone) < 2 or min(len(u) for u in alone.values()) < 3:
            assert len(users) < 300, f"the kernel sent every visit to one worker: {alone}"
            user = f"single-{len(users)}"
            users.append(user)
            served = {await visit(proxy, user), await visit(proxy, user, "POST", "/signup")}
            if len(served) == 1:
                alone[served.pop()].add(user)
        # users whose visits reach both workers, signing up on each: once each, still
        for n in range(10):
            user = f"both-{n}"
            users.append(user)
            workers: set[str] = set()
            for _ in range(40):
                workers.add(await visit(proxy, user))
                workers.add(await visit(proxy, user, "POST", "/signup"))
                if len(workers) == 2:
                    break
        await counted_exactly(proxy, len(users), len(users))


async def _has_test(proxy: Proxy) -> bool:
    return bool(await ab_view(proxy))


@pytest.mark.timeout(90)
async def test_users_spread_over_two_replicas_are_each_counted_once(
    tmp_path: Path, serve: Serve, redis_server: RedisServer
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    config = ab_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app())
    )
    with replicas(tmp_path, config, redis_server, count=2) as proxies:
        leader = await leader_of(proxies)
        follower = next(p for p in proxies if p is not leader)
        await eventually(lambda: _has_test(leader), "the A/B test running", 20)
        users = 0
        for n in range(20):  # on the follower alone: exposed and signed up there
            await visit(follower, f"follower-{n}")
            await visit(follower, f"follower-{n}", "POST", "/signup")
            users += 1
        for n in range(20):  # on both, signing up on both: once each
            for proxy in (leader, follower, leader):
                await visit(proxy, f"both-{n}")
                await visit(proxy, f"both-{n}", "POST", "/signup")
            users += 1
        for n in range(10):  # seen on the follower, signing up on the leader
            await visit(follower, f"later-{n}")
            await visit(leader, f"later-{n}", "POST", "/signup")
            users += 1
        for n in range(10):  # seen on both, never signing up
            await visit(follower, f"browse-{n}")
            await visit(leader, f"browse-{n}")
        await counted_exactly(leader, users + 10, users)
