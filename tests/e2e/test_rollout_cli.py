"""Canary rollouts end to end through the real CLI: ``splitproxy serve`` in a subprocess with a
``--state-dir`` and short intervals, real upstreams on 127.0.0.1 (the demo service: it names its
version, ``error_rate`` and ``delay_ms`` make it faulty), steady traffic from a bounded client
loop, and the rollout followed through the admin API and ``splitproxy status``.

Every process is stopped at the end of its test (``proc.serving``), every upstream and hook
sink closed, every traffic loop bounded in time and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from splitproxy.demo.service import create_app
from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy, cli, serving

ROUTE = "app"
FINISHED = ("promoted", "rolled_back")


async def versions(
    serve: Serve, *, error_rate: float = 0.0, delay_ms: float = 0.0
) -> tuple[str, str]:
    """Stable and a candidate (with the faults given) of the demo service."""
    stable = await serve(create_app("stable"))
    candidate = await serve(create_app("candidate", error_rate, delay_ms))
    return stable, candidate


def write_config(path: Path, stable: str, candidate: str, **rollout: Any) -> Path:
    spec: dict[str, Any] = {
        "steps": [10, 50],
        "interval": "1s",
        "min_requests": 20,
        "checks": [
            {"metric": "error_rate", "max": "5%"},
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
        ],
    }
    spec.update(rollout)
    route = {
        "name": ROUTE,
        "stable": {"url": stable, "revision": "1.0"},
        "candidate": {"url": candidate, "revision": "1.1"},
        "rollout": spec,
    }
    path.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    return path


def start_proxy(tmp_path: Path, config: Path, log: str = "proxy.log") -> Any:
    """``splitproxy serve`` with durable state, no access log and a quick drain."""
    return serving(
        config,
        tmp_path / log,
        "--state-dir", str(tmp_path / "state"),
        "--no-access-log", "--drain-delay", "0", "--drain-timeout", "2",
    )  # fmt: skip


class Traffic:
    """A bounded client loop: ``rate`` requests per second through the proxy (at most
    ``limit`` seconds, at most 64 in flight), answers counted by version and status."""

    def __init__(self, url: str, rate: float = 100.0, limit: float = 25.0) -> None:
        self.url = url
        self.rate = rate
        self.limit = limit
        self.seen: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def one() -> None:
                try:
                    async with session.get(self.url + "/") as resp:
                        body = await resp.json(content_type=None)
                        self.seen[f"{body.get('version')} {resp.status}"] += 1
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.seen[type(exc).__name__] += 1

            start = loop.time()
            sent = 0
            while not self._stop.is_set() and loop.time() - start < self.limit:
                due = int((loop.time() - start) * self.rate) + 1
                while sent < due and len(pending) < 64:
                    sent += 1
                    task = loop.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1 / self.rate)
            if pending:
                await asyncio.wait(pending, timeout=6)

    def start(self) -> Traffic:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


@contextlib.asynccontextmanager
async def traffic(proxy: Proxy, rate: float = 100.0) -> AsyncIterator[Traffic]:
    loop = Traffic(f"http://127.0.0.1:{proxy.port}", rate).start()
    try:
        yield loop
    finally:
        await loop.stop()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def route_view(proxy: Proxy) -> dict[str, Any]:
    view: dict[str, Any] = await get_json(
        f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}"
    )
    return view


async def events(proxy: Proxy) -> list[dict[str, Any]]:
    data = await get_json(f"http://127.0.0.1:{proxy.admin_port}/api/v1/events?route={ROUTE}")
    found: list[dict[str, Any]] = data["events"]
    return found


async def wait_for(
    proxy: Proxy,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the route's view until ``done(rollout)``; fail with the ledger and the log."""
    deadline = time.monotonic() + timeout
    rollout: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rollout = (await route_view(proxy))["rollout"]
        if done(rollout):
            return rollout
        await asyncio.sleep(0.2)
    ledger = "\n".join(
        f"{e['kind']} step {e['step']} {e['weight']}: {e['message']}" for e in await events(proxy)
    )
    raise AssertionError(
        f"not {what} within {timeout:g}s: {rollout.get('phase')} step {rollout.get('step')}, "
        f"weight {rollout.get('weight')}, checks {rollout.get('checks')}\n"
        f"ledger:\n{ledger}\nlog:\n{proxy.output()[-3000:]}"
    )


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda rollout: rollout["phase"] in phases


async def status_json(proxy: Proxy) -> dict[str, Any]:
    result = await asyncio.to_thread(
        cli, "status", "--json", "--admin-url", f"http://127.0.0.1:{proxy.admin_port}"
    )
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def decision(ledger: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in ledger if e["kind"] == kind]
    assert found, [e["kind"] for e in ledger]
    return found[-1]


def check(event: dict[str, Any], name: str) -> dict[str, Any]:
    by_name: dict[str, dict[str, Any]] = {c["name"]: c for c in event["checks"]}
    assert name in by_name, sorted(by_name)
    return by_name[name]


async def served_by(proxy: Proxy, n: int = 40) -> Counter[str]:
    """Who answers ``n`` requests sent now (one at a time, no cookies)."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                seen[(await resp.json(content_type=None))["version"]] += 1
    return seen


@pytest.mark.timeout(30)
async def test_a_good_candidate_is_promoted(tmp_path: Path, serve: Serve) -> None:
    stable, candidate = await versions(serve)
    config = write_config(
        tmp_path / "routes.yaml",
        stable,
        candidate,
        checks=[
            {"metric": "error_rate", "max": "5%"},
            {"metric": "latency_p99", "max": "1s"},
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
        ],
    )
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy) as client:
            rollout = await wait_for(proxy, phase_is(*FINISHED), "finished")
        assert rollout["phase"] == "promoted", rollout
        assert rollout["weight"] == 100
        ledger = await events(proxy)
        kinds = [e["kind"] for e in ledger]
        # judged only once ready: a readiness wait, then the steps
        assert kinds[:4] == ["started", "waiting", "proceeded", "step"]
        assert kinds.count("step") == 2  # 10 %, then 50 %
        promoted = decision(ledger, "promoted")
        assert promoted["message"] == "all steps passed"
        for name in ("error_rate", "latency_p99"):
            evidence = check(promoted, name)
            assert evidence["verdict"] == "pass"
            assert evidence["sample"] >= 20  # min_requests
        status = await status_json(proxy)
        route = status["routes"][0]
        assert route["weight"] == {**route["weight"], "effective": 100.0, "source": "rollout"}
        assert route["rollout"]["phase"] == "promoted"
        assert await served_by(proxy) == Counter(candidate=40)
        assert client.seen["candidate 200"] > 0
        assert set(client.seen) <= {"stable 200", "candidate 200"}, client.seen


@pytest.mark.timeout(30)
async def test_a_candidate_answering_25_percent_errors_is_rolled_back(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = await versions(serve, error_rate=0.25)
    config = write_config(tmp_path / "routes.yaml", stable, candidate)
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy):
            rollout = await wait_for(proxy, phase_is(*FINISHED), "finished")
        assert rollout["phase"] == "rolled_back", rollout
        assert rollout["weight"] == 0
        assert rollout["step"] == 1  # caught at the first step, 10 %
        rolled_back = decision(await events(proxy), "rolled_back")
        failed = [c for c in rolled_back["checks"] if c["verdict"] == "fail"]
        assert failed, rolled_back
        assert {c["name"] for c in failed} & {"guard", "error_rate_vs_stable"}, failed
        assert await served_by(proxy) == Counter(stable=40)
        # the state is written in the background after the decision: wait for it (bounded)
        state = tmp_path / "state" / f"{ROUTE}.json"
        saved: dict[str, Any] = {}
        for _ in range(100):
            saved = json.loads(state.read_text()) if state.exists() else {}
            if saved.get("analyzer", {}).get("phase") == "rolled_back":
                break
            await asyncio.sleep(0.05)
        assert saved["analyzer"]["phase"] == "rolled_back"
        assert saved["analyzer"]["finished"] == {"1.1": "rolled_back"}


async def served_with(proxy: Proxy, headers: dict[str, str], n: int = 20) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{proxy.port}/", headers=headers) as resp:
                seen[(await resp.json(content_type=None))["version"]] += 1
    return seen


@pytest.mark.timeout(45)
async def test_state_that_is_damaged_or_lost_never_brings_a_rolled_back_candidate_back(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = await versions(serve, error_rate=0.25)
    config = write_config(tmp_path / "routes.yaml", stable, candidate)
    document = yaml.safe_load(config.read_text())
    document["routes"][0]["overrides"] = [{"header": "X-Canary"}]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    forced = {"X-Canary": "always"}
    state = tmp_path / "state" / f"{ROUTE}.json"
    with start_proxy(tmp_path, config, "first.log") as proxy:
        assert await served_with(proxy, forced, 5) == Counter(candidate=5)
        async with traffic(proxy):
            rollout = await wait_for(proxy, phase_is(*FINISHED), "finished")
        assert rollout["phase"] == "rolled_back", rollout
        # rolled back means no traffic at all: the override no longer reaches the candidate
        assert await served_with(proxy, forced) == Counter(stable=20)
    record = (tmp_path / "state" / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in record] == ["rolled_back"]

    state.write_bytes(state.read_bytes()[:200])  # torn: the verdict on record still holds
    with start_proxy(tmp_path, config, "second.log") as proxy:
        rollout = (await route_view(proxy))["rollout"]
        assert (rollout["phase"], rollout["weight"]) == ("rolled_back", 0)
        assert rollout["state"]["rejected"]["reason"].startswith("not valid JSON")
        assert await served_with(proxy, forced) == Counter(stable=20)

    state.write_text('{"format": 1, "route": "app", "analyzer": {"phase": "promoted"}}')
    (tmp_path / "state" / "verdicts.jsonl").unlink()  # and the record lost as well
    with start_proxy(tmp_path, config, "third.log") as proxy:
        rollout = (await route_view(proxy))["rollout"]
        assert (rollout["phase"], rollout["weight"]) == ("paused", 0), rollout
        assert rollout["state"]["rejected"]["reason"].startswith("analyzer.version")
        assert await served_by(proxy, 20) == Counter(stable=20)
        assert "held on stable, paused" in decision(await events(proxy), "paused")["message"]
        assert "cannot resume the rollout state of route 'app'" in proxy.output()


@pytest.mark.timeout(30)
async def test_a_candidate_200ms_slower_is_rolled_back_by_the_comparison_with_stable(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = await versions(serve, delay_ms=200)
    # no absolute latency threshold that could trip first, and steps long enough that the
    # rollout cannot be promoted before the comparison has had its samples
    config = write_config(
        tmp_path / "routes.yaml",
        stable,
        candidate,
        steps=[10, 25, 50],
        interval="10s",
        checks=[
            {"metric": "error_rate", "max": "5%"},
            {"metric": "latency", "compare": "stable"},
        ],
    )
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy, rate=150):
            rollout = await wait_for(proxy, phase_is(*FINISHED), "finished", timeout=22)
        assert rollout["phase"] == "rolled_back", rollout
        assert rollout["weight"] == 0
        rolled_back = decision(await events(proxy), "rolled_back")
        assert rolled_back["message"] == "worse than stable: latency_vs_stable"
        latency = check(rolled_back, "latency_vs_stable")
        assert latency["verdict"] == "fail"
        assert latency["value"] is None or latency["value"] >= latency["max"]
        assert latency["ci"][0] > 1  # the candidate is slower than stable more often
        assert check(rolled_back, "error_rate")["verdict"] != "fail"


@pytest.mark.timeout(30)
async def test_a_restart_mid_rollout_resumes_at_the_same_step_and_weight(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = await versions(serve)
    # step 2 lasts a minute: the rollout is sure to be there when the proxy stops and starts
    config = write_config(
        tmp_path / "routes.yaml",
        stable,
        candidate,
        steps=[10, {"weight": 30, "interval": "60s"}, 60],
        min_requests=10,
    )
    with start_proxy(tmp_path, config, "first.log") as proxy:
        async with traffic(proxy):
            rollout = await wait_for(proxy, lambda r: r["step"] == 2, "at step 2")
        assert (rollout["phase"], rollout["weight"]) == ("progressing", 30)
        before = await events(proxy)
        proxy.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.process.wait, 15)
        assert code == 0, proxy.output()
    saved = json.loads((tmp_path / "state" / f"{ROUTE}.json").read_text())
    assert (saved["analyzer"]["phase"], saved["analyzer"]["step_index"]) == ("progressing", 1)

    with start_proxy(tmp_path, config, "second.log") as proxy:
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        rollout = (await route_view(proxy))["rollout"]
        assert (rollout["phase"], rollout["step"], rollout["weight"]) == ("progressing", 2, 30)
        ledger = await events(proxy)
        assert [e["kind"] for e in ledger[: len(before)]] == [e["kind"] for e in before]
        restored = decision(ledger, "state_restored")
        assert restored["message"] == "state restored from disk: progressing, step 2, weight 30%"
        table = await asyncio.to_thread(cli, "status", *admin)
        assert table.returncode == 0, table.stderr
        assert "progressing" in table.stdout
        assert "step 2/3" in table.stdout
        assert "30%*" in table.stdout  # the plan, with the current step marked
        # not a terminal: --watch prints one snapshot, the rollout's panel included, and ends
        watch = await asyncio.to_thread(cli, "status", "--watch", *admin, timeout=20)
        assert watch.returncode == 0, watch.stderr
        assert "step 2 of 3, candidate at 30%" in watch.stdout
        assert "10% ✓ → 30% ● → 60% → promote" in watch.stdout
        # and the weight is in force for traffic: about 30 % to the candidate
        seen = await served_by(proxy, 200)
        assert 30 <= seen["candidate"] <= 90, seen


class Gate:
    """A confirm-promotion hook that answers ``status`` (503 until opened)."""

    def __init__(self, asked: int) -> None:
        self.status = 503
        self.calls: list[dict[str, Any]] = []
        self.asked = asyncio.Event()  # set once asked ``asked`` times
        self._enough = asked

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        if len(self.calls) >= self._enough:
            self.asked.set()
        return web.json_response({}, status=self.status)


@pytest.mark.timeout(30)
async def test_a_confirm_promotion_gate_holds_promotion_until_it_answers_2xx(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = await versions(serve)
    gate = Gate(asked=3)
    app = web.Application()
    app.router.add_post("/approve", gate.handle)
    approve = await serve(app) + "/approve"
    config = write_config(
        tmp_path / "routes.yaml",
        stable,
        candidate,
        steps=[20],
        min_requests=10,
        hooks=[{"on": "confirm-promotion", "url": approve, "retries": 0, "timeout": "2s"}],
    )
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy):
            rollout = await wait_for(
                proxy,
                lambda r: r["phase"] == "waiting" and r["waiting_for"] == "confirm-promotion",
                "waiting at the gate",
            )
            assert rollout["waiting_for"] == "confirm-promotion"
            assert rollout["weight"] == 20
            # asked again every interval (1 s) while it says no; the rollout keeps waiting
            await asyncio.wait_for(gate.asked.wait(), 10)
            rollout = (await route_view(proxy))["rollout"]
            assert (rollout["phase"], rollout["weight"]) == ("waiting", 20)
            assert "gate_closed" in [e["kind"] for e in await events(proxy)]
            assert gate.calls[0]["route"] == ROUTE
            assert gate.calls[0]["revision"] == "1.1"
            gate.status = 200
            rollout = await wait_for(proxy, phase_is(*FINISHED), "promoted", timeout=10)
        assert (rollout["phase"], rollout["weight"]) == ("promoted", 100)
        promoted = decision(await events(proxy), "promoted")
        assert promoted["message"] == "the confirm-promotion gate passed"


@pytest.mark.timeout(60)
def test_demo_bad_scenario_rolls_the_faulty_candidate_back() -> None:
    result = cli("demo", "--scenario", "bad", timeout=55)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "scenario bad: candidate 1.1 answers 25% of requests with a 500" in out
    assert "rolled_back  step 1 at 10%" in out  # the decision, as it happened ...
    assert "✗ " in out  # ... with its evidence: a failed check
    assert "as expected for this candidate" in out
    assert "rolled back after" in out
    assert "measured split" in out


def test_demo_split_scenario_is_the_first_demo() -> None:
    result = cli("demo", "--scenario", "split", "--requests", "80", "--rate", "400", timeout=55)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "measured split" in out
    assert "stable" in out
    assert "candidate" in out
    assert "X-Canary: always the request went to: candidate" in out
    assert "curl -s -H 'X-Canary: always'" in out


def test_demo_refuses_split_options_for_a_rollout_and_a_rate_too_low() -> None:
    split_only = cli("demo", "--weight", "30")
    assert split_only.returncode == 2
    assert "--requests and --weight apply to --scenario split" in split_only.stderr
    too_slow = cli("demo", "--scenario", "bad", "--rate", "20")
    assert too_slow.returncode == 2
    assert "needs --rate >= 100" in too_slow.stderr
