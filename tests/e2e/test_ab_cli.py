"""A/B tests end to end through the real CLI: ``splitproxy serve`` in a subprocess with a
``--state-dir``, two versions of a small shop on 127.0.0.1 whose sign-up succeeds for a share
of users, and simulated users (each with its own ``X-User`` id) who open the page, then try
to sign up. The proxy sees the goal itself (``POST /signup`` answered 201, and the response
header ``X-Goal``); the app knows nothing of the test.

What a user would notice: a candidate whose users sign up clearly more often is promoted
with the lift in the ledger; an A/A test ends "no difference" at ``max_duration`` and stable
is kept; users outside the audience never reach the candidate and are not counted; a split
driven off its share pauses the test as broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from splitproxy.dataplane.routing import bucket, salt_for
from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy, cli
from tests.e2e.test_rollout_cli import ROUTE, decision, events, start_proxy, wait_for


def shop(version: str, signup_rate: float) -> web.Application:
    """A shop whose ``POST /signup`` succeeds (201, with ``X-Goal: signup`` and a value) for
    ``signup_rate`` of the attempts; every other path names the version."""
    rng = random.Random(version)

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"version": version})

    async def signup(request: web.Request) -> web.Response:
        if rng.random() < signup_rate:
            headers = {"X-Goal": "signup", "X-Goal-Value": "30"}
            return web.json_response({"version": version}, status=201, headers=headers)
        return web.json_response({"version": version, "signed_up": False})

    app = web.Application()
    app.router.add_post("/signup", signup)
    app.router.add_get("/{tail:.*}", page)
    return app


def ab_config(tmp_path: Path, stable: str, candidate: str, **ab: Any) -> Path:
    section: dict[str, Any] = {
        "split": 50,
        "audience": [{"header": "X-Plan", "value": "pro"}],
        "goals": [
            {"name": "signup", "method": "POST", "path_prefix": "/signup", "status": 201},
            {"name": "revenue", "header": "X-Goal", "value_header": "X-Goal-Value"},
        ],
        "min_duration": "2s",
        "max_duration": "60s",
        **ab,
    }
    route = {
        "name": ROUTE,
        "stable": {"url": stable, "revision": "1.0"},
        "candidate": {"url": candidate, "revision": "1.1"},
        "sticky": {"header": "X-User"},
        "rollout": {"strategy": "ab", "interval": "1s", "min_requests": 0, "ab": section},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    return path


@dataclass
class Shoppers:
    """Users arriving at ``rate`` per second (at most ``limit`` seconds): each opens ``/``,
    then tries ``POST /signup``. ``plan`` names each new user's plan; ``ids`` their ids.
    Who answered each user's requests is kept by plan."""

    url: str
    rate: float = 40.0
    limit: float = 40.0
    plan: Callable[[int], str] = lambda n: "pro"
    ids: Callable[[int], str] = lambda n: f"user-{n}"
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # at, plan, version
    failures: list[str] = field(default_factory=list)

    def seen(self, plan: str, before: float) -> Counter[str]:
        """Who answered the ``plan``'s users before ``before`` (Unix time)."""
        return Counter(v for at, p, v in self.answers if p == plan and at < before)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def visit(n: int) -> None:
                plan = self.plan(n)
                headers = {"X-User": self.ids(n), "X-Plan": plan}
                try:
                    for method, path in (("GET", "/"), ("POST", "/signup")):
                        async with session.request(method, self.url + path, headers=headers) as r:
                            version = (await r.json(content_type=None))["version"]
                            self.answers.append((time.time(), plan, version))
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.failures.append(type(exc).__name__)

            start, users = loop.time(), itertools.count()
            sent = 0
            while not stop.is_set() and loop.time() - start < self.limit:
                due = int((loop.time() - start) * self.rate) + 1
                while sent < due and len(pending) < 32:
                    sent += 1
                    task = loop.create_task(visit(next(users)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / self.rate)
            if pending:
                await asyncio.wait(pending, timeout=6)


@contextlib.asynccontextmanager
async def shoppers(proxy: Proxy, **kw: Any) -> AsyncIterator[Shoppers]:
    client = Shoppers(f"http://127.0.0.1:{proxy.port}", **kw)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(client.run(stop))
    try:
        yield client
    finally:
        stop.set()
        await task


def finished(rollout: dict[str, Any]) -> bool:
    return rollout["phase"] in ("promoted", "rolled_back", "paused")


@pytest.mark.timeout(60)
async def test_a_candidate_whose_users_sign_up_more_is_promoted_and_outsiders_stay_out(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(shop("stable", 0.1))
    candidate = await serve(shop("candidate", 0.5))
    config = ab_config(tmp_path, stable, candidate)
    with start_proxy(tmp_path, config) as proxy:
        plans = lambda n: "free" if n % 3 == 0 else "pro"  # noqa: E731
        async with shoppers(proxy, plan=plans) as client:
            rollout = await wait_for(proxy, finished, "decided", 40)
        assert rollout["phase"] == "promoted", rollout
        ledger = await events(proxy)
        promoted = decision(ledger, "promoted")
        assert "the A/B test's winner is the candidate" in promoted["message"]
        result = promoted["ab"]
        assert (result["winner"], result["goal"]) == ("candidate", "signup")
        assert result["lift"] > 1.0  # 50 % against 10 %: about +400 %
        low, high = result["lift_interval"]
        assert 0 < low < result["lift"] < high
        assert result["elapsed"] >= 2  # never before min_duration
        signup, revenue = result["goals"]
        users = result["users"]
        assert signup["candidate"]["users"] == users["candidate"] > 20
        assert signup["candidate"]["converted"] > signup["stable"]["converted"]
        assert revenue["candidate"]["value"] == 30 * revenue["candidate"]["converted"]
        # until the decision, the free plan's users never reached the candidate and were
        # not counted (after it, everyone has the promoted candidate)
        free, pro = client.seen("free", promoted["at"]), client.seen("pro", promoted["at"])
        assert set(free) == {"stable"}
        assert free["stable"] > 20
        assert set(pro) == {"stable", "candidate"}
        assert users["stable"] + users["candidate"] <= sum(pro.values()) // 2 + 32
        assert not client.failures, client.failures
        # the metrics and the console show the test
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.admin_port}/metrics"
            async with session.get(url) as resp:
                metrics = await resp.text()
        line = f'splitproxy_ab_users_total{{route="{ROUTE}",version="candidate"}}'
        assert f"{line} {float(users['candidate'])}" in metrics
        stable_signups = signup["stable"]["converted"]
        line = f'splitproxy_ab_conversions_total{{goal="signup",route="{ROUTE}",version="stable"}}'
        assert f"{line} {float(stable_signups)}" in metrics
        watch = await asyncio.to_thread(
            cli,
            "status",
            "--watch",
            "--admin-url",
            f"http://127.0.0.1:{proxy.admin_port}",
            env={"COLUMNS": "200"},
        )
        assert watch.returncode == 0, watch.stderr
        out = watch.stdout
        assert "A/B test: candidate wins on signup" in out, out
        assert "candidate converts better: lift +" in out, out
        print(out)


@pytest.mark.timeout(60)
async def test_an_a_a_test_ends_no_difference_at_max_duration(tmp_path: Path, serve: Serve) -> None:
    stable = await serve(shop("stable", 0.2))
    candidate = await serve(shop("candidate", 0.2))
    config = ab_config(tmp_path, stable, candidate, min_duration="1s", max_duration="6s")
    with start_proxy(tmp_path, config) as proxy:
        async with shoppers(proxy) as client:
            rollout = await wait_for(proxy, finished, "decided", 30)
            await asyncio.sleep(0.5)
        assert (rollout["phase"], rollout["weight"]) == ("rolled_back", 0), rollout
        ended = decision(await events(proxy), "rolled_back")
        assert "the A/B test ended with no difference" in ended["message"]
        assert "stable is kept" in ended["message"]
        assert ended["ab"]["outcome"] == "no_difference"
        assert ended["ab"]["elapsed"] >= 6
        assert ended["ab"]["users"]["candidate"] > 20
        assert not client.failures, client.failures


def candidate_ids(count: int) -> list[str]:
    """User ids the proxy hashes to the candidate at a 50 % split (revision 1.1)."""
    salt = salt_for(ROUTE, "1.1")
    ids = (f"crafted-{n}" for n in itertools.count())
    return list(itertools.islice((u for u in ids if bucket(u, salt) < 5000), count))


@pytest.mark.timeout(60)
async def test_a_split_driven_off_its_share_pauses_the_test_as_broken(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(shop("stable", 0.2))
    candidate = await serve(shop("candidate", 0.2))
    config = ab_config(tmp_path, stable, candidate)
    crafted = candidate_ids(2000)
    # every other user comes with an id that lands on the candidate (as a client that pins
    # its users would): about 75 % of the users on the candidate where 50 % should be
    ids = lambda n: crafted[n // 2] if n % 2 else f"user-{n}"  # noqa: E731
    with start_proxy(tmp_path, config) as proxy:
        async with shoppers(proxy, ids=ids) as client:
            rollout = await wait_for(proxy, finished, "decided", 40)
        assert (rollout["phase"], rollout["paused_reason"]) == ("paused", "srm"), rollout
        assert rollout["weight"] == 50  # held where it was: a human decides
        paused = decision(await events(proxy), "paused")
        assert "sample ratio mismatch" in paused["message"]
        assert paused["ab"]["outcome"] == "srm"
        assert paused["ab"]["winner"] is None
        users = paused["ab"]["users"]
        assert users["candidate"] > 1.3 * users["stable"]
        assert not client.failures, client.failures


@pytest.mark.timeout(80)
def test_demo_ab_scenario_promotes_the_better_converting_candidate() -> None:
    result = cli("demo", "--scenario", "ab", timeout=75)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "scenario ab: candidate 1.1's sign-up page converts 25%" in out
    assert "A/B: stable " in out  # the test's progress, in the log
    assert "the A/B test's winner is the candidate: candidate converts better: lift +" in out
    assert "✓ promoted after" in out
    assert "as expected for this candidate" in out


@pytest.mark.timeout(60)
async def test_a_restart_mid_test_keeps_its_counts_and_its_clock(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(shop("stable", 0.2))
    candidate = await serve(shop("candidate", 0.2))
    config = ab_config(tmp_path, stable, candidate)  # an A/A test of a minute: no decision
    with start_proxy(tmp_path, config, "first.log") as proxy:
        async with shoppers(proxy):
            await wait_for(
                proxy,
                lambda r: (r["ab"] or {}).get("users", {}).get("stable", 0) > 40,
                "counting",
                20,
            )
        before = (await wait_for(proxy, lambda r: True, "read"))["ab"]
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.process.wait, 15) == 0, proxy.output()
    saved = json.loads((tmp_path / "state" / f"{ROUTE}.json").read_text())["analyzer"]["ab"]
    assert saved["srm"]["stable_users"] == before["users"]["stable"]

    with start_proxy(tmp_path, config, "second.log") as proxy:
        after = (await wait_for(proxy, lambda r: r["phase"] == "progressing", "restored"))["ab"]
        assert after["started_at"] == before["started_at"]
        assert after["users"] == before["users"]
        assert after["goals"][0]["stable"]["converted"] == before["goals"][0]["stable"]["converted"]
        async with shoppers(proxy, ids=lambda n: f"later-{n}"):
            grown = await wait_for(
                proxy,
                lambda r: r["ab"]["users"]["stable"] > before["users"]["stable"] + 20,
                "counting on",
                20,
            )
        assert grown["phase"] == "progressing"
        assert grown["ab"]["elapsed"] > after["elapsed"]
