"""Blue/green rollouts end to end through the real CLI: ``splitproxy serve`` in a subprocess with
a ``--state-dir`` and a preview listener, the demo service as stable and candidate on 127.0.0.1,
a test job that is a small Python script, and a steady user client whose every answer is kept.

What a user would notice: before the switch not one user answer comes from the candidate
(the test job's requests do reach it), a failing test job keeps the users on stable, and a
candidate that breaks under live traffic is reverted with no error of the proxy's own making.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from splitproxy.demo.service import Faults, create_app
from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy, cli, serving
from tests.e2e.test_rollout_cli import (
    ROUTE,
    decision,
    events,
    phase_is,
    served_by,
    wait_for,
    write_config,
)

PREVIEW = re.compile(r"preview listener on 127\.0\.0\.1:(\d+)")

# The test job: GETs SPLITPROXY_PREVIEW_URL a few times, records what answered (one line per
# run: the URL, route, revision and the versions seen), then exits with the code it was given.
JOB = """\
import json, os, sys, urllib.request
record, code = sys.argv[1], int(sys.argv[2])
url = os.environ["SPLITPROXY_PREVIEW_URL"]
got = []
for _ in range(int(sys.argv[3])):
    with urllib.request.urlopen(url + "/job", timeout=5) as resp:
        got.append(json.loads(resp.read())["version"])
run = {"url": url, "route": os.environ["SPLITPROXY_ROUTE"],
       "revision": os.environ["SPLITPROXY_REVISION"], "got": got}
with open(record, "a") as out:
    out.write(json.dumps(run) + "\\n")
print(f"smoke: {len(got)} requests, exit {code}")
sys.exit(code)
"""


def write_job(tmp_path: Path, exit_code: int, requests: int = 15) -> tuple[list[str], Path]:
    """The test job's command, and the file where each of its runs is recorded."""
    script = tmp_path / "smoke.py"
    script.write_text(JOB)
    record = tmp_path / "runs.jsonl"
    return [sys.executable, str(script), str(record), str(exit_code), str(requests)], record


def runs(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def bluegreen_config(tmp_path: Path, stable: str, candidate: str, **rollout: Any) -> Path:
    spec: dict[str, Any] = {
        "steps": None,
        "strategy": "bluegreen",
        "interval": "1s",
        "min_requests": 10,
        "bake": "5s",
        "failure_limit": 0,
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    spec.update(rollout)
    return write_config(tmp_path / "routes.yaml", stable, candidate, **spec)


@contextlib.contextmanager
def start_proxy(tmp_path: Path, config: Path) -> Iterator[tuple[Proxy, int]]:
    """``splitproxy serve`` with durable state and a preview listener; the proxy and the
    preview listener's port."""
    with serving(
        config,
        tmp_path / "proxy.log",
        "--state-dir", str(tmp_path / "state"),
        "--preview-listen", "127.0.0.1:0",
        "--no-access-log", "--drain-delay", "0", "--drain-timeout", "2",
    ) as proxy:  # fmt: skip
        found = PREVIEW.search(proxy.output())
        assert found is not None, proxy.output()
        yield proxy, int(found.group(1))


@dataclass
class Answer:
    received: float  # time.time() when the answer was in
    status: int
    version: str | None  # None: the body names no version (not the demo service's answer)
    body: Any


@dataclass
class Users:
    """A steady user client through the proxy's main listener (``rate`` per second, at most
    ``limit`` seconds, at most 32 in flight) that keeps every answer with the time it came."""

    url: str
    rate: float = 50.0
    limit: float = 28.0
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # no answer at all

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def one() -> None:
                try:
                    async with session.get(self.url + "/user") as resp:
                        body = await resp.json(content_type=None)
                        version = body.get("version") if isinstance(body, dict) else None
                        self.answers.append(Answer(time.time(), resp.status, version, body))
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.failures.append(type(exc).__name__)

            start = loop.time()
            sent = 0
            while not stop.is_set() and loop.time() - start < self.limit:
                due = int((loop.time() - start) * self.rate) + 1
                while sent < due and len(pending) < 32:
                    sent += 1
                    task = loop.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / self.rate)
            if pending:
                await asyncio.wait(pending, timeout=6)


@contextlib.asynccontextmanager
async def users(proxy: Proxy) -> AsyncIterator[Users]:
    client = Users(f"http://127.0.0.1:{proxy.port}")
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(client.run(stop))
    try:
        yield client
    finally:
        stop.set()
        await task


def switched_at(ledger: list[dict[str, Any]]) -> float | None:
    found = [e for e in ledger if e["kind"] == "step" and e["message"].startswith("switched")]
    return float(found[0]["at"]) if found else None


@pytest.mark.timeout(30)
async def test_a_passing_test_job_lets_the_candidate_switch_after_test_traffic_only(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(create_app("stable"))
    candidate = await serve(create_app("candidate"))
    job, record = write_job(tmp_path, 0)
    # the job runs once; synthetic test traffic gives the second iteration its requests
    config = bluegreen_config(
        tmp_path,
        stable,
        candidate,
        iterations=2,
        test={"command": job, "timeout": "10s"},
        traffic={"rate": 20, "judge": True},
    )
    with start_proxy(tmp_path, config) as (proxy, preview):
        async with users(proxy) as client:
            rollout = await wait_for(proxy, phase_is("promoted", "rolled_back"), "finished", 25)
        assert rollout["phase"] == "promoted", rollout
        assert rollout["bluegreen"]["stage"] == "promoted"
        ledger = await events(proxy)
        steps = [e["message"] for e in ledger if e["kind"] == "step"]
        assert steps == [
            "iteration 1 of 2: test traffic only, users on stable",
            "iteration 2 of 2: test traffic only, users on stable",
            "switched: all traffic on the candidate, baking for 5s",
        ]
        assert decision(ledger, "promoted")["message"] == "the bake passed"
        assert "the test job passed (attempt 1)" in decision(ledger, "test_passed")["message"]

        # every user answer that came before the switch was stable's
        switch = switched_at(ledger)
        assert switch is not None
        before = [a for a in client.answers if a.received < switch]
        after = [a for a in client.answers if a.received >= switch]
        assert len(before) > 20, len(before)
        assert {(a.version, a.status) for a in before} == {("stable", 200)}
        assert ("candidate", 200) in {(a.version, a.status) for a in after}
        assert not client.failures, client.failures
        # ... while the test job's requests, through the preview listener, reached the candidate
        (run,) = runs(record)
        assert run["url"] == f"http://127.0.0.1:{preview}"
        assert (run["route"], run["revision"]) == (ROUTE, "1.1")
        assert run["got"] == ["candidate"] * 15
        job_view = rollout["bluegreen"]["job"]
        assert job_view["last"]["exit_code"] == 0
        assert "smoke: 15 requests, exit 0" in job_view["last"]["tail"]
        assert await served_by(proxy, 20) == {"candidate": 20}


@pytest.mark.timeout(30)
async def test_a_failing_test_job_rolls_back_and_no_user_ever_reaches_the_candidate(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(create_app("stable"))
    candidate = await serve(create_app("candidate"))
    job, record = write_job(tmp_path, 1, requests=3)
    config = bluegreen_config(tmp_path, stable, candidate, test={"command": job, "timeout": "10s"})
    with start_proxy(tmp_path, config) as (proxy, _):
        async with users(proxy) as client:
            rollout = await wait_for(proxy, phase_is("promoted", "rolled_back"), "finished", 20)
            await asyncio.sleep(1)  # users keep coming after the decision
        assert (rollout["phase"], rollout["weight"]) == ("rolled_back", 0), rollout
        assert rollout["bluegreen"]["stage"] == "rolled_back"
        assert rollout["bluegreen"]["job"]["last"]["exit_code"] == 1
        ledger = await events(proxy)
        assert switched_at(ledger) is None
        failed = decision(ledger, "check_failed")["message"]
        assert failed.startswith("the test job failed (attempt 1): exit 1"), failed
        assert "smoke: 3 requests, exit 1" in failed
        assert [r["got"] for r in runs(record)] == [["candidate"] * 3]
        assert len(client.answers) > 20
        assert {(a.version, a.status) for a in client.answers} == {("stable", 200)}
        assert not client.failures, client.failures


@pytest.mark.timeout(30)
async def test_a_candidate_that_breaks_under_live_traffic_is_reverted_in_the_bake(
    tmp_path: Path, serve: Serve
) -> None:
    stable = await serve(create_app("stable"))
    faults = Faults()  # healthy for the test job; broken once it has the users
    candidate = await serve(create_app("candidate", faults=faults))
    job, _ = write_job(tmp_path, 0)
    config = bluegreen_config(
        tmp_path, stable, candidate, bake="20s", test={"command": job, "timeout": "10s"}
    )
    with start_proxy(tmp_path, config) as (proxy, _):
        async with users(proxy) as client:
            await wait_for(proxy, lambda r: r["weight"] == 100, "switched", 15)
            broke = time.time()
            faults.error_rate = 0.5
            rollout = await wait_for(proxy, phase_is("promoted", "rolled_back"), "reverted", 10)
            await asyncio.sleep(1)  # users keep coming after the revert
        assert (rollout["phase"], rollout["weight"]) == ("rolled_back", 0), rollout
        assert rollout["bluegreen"]["stage"] == "reverted"
        ledger = await events(proxy)
        reverted = decision(ledger, "rolled_back")
        # the bake's failure is caught within a tick or two of the first failing answers
        # (about 1 s here; the bake lasts 20): bounded loosely so a loaded machine's scheduling
        # cannot fail it, while "at the end of the bake" still would
        assert reverted["at"] - broke < 5.0, (reverted, broke)
        failed = [c["name"] for c in reverted["checks"] if c["verdict"] == "fail"]
        assert set(failed) & {"guard", "error_rate"}, reverted
        # every answer is 2xx or the candidate's own error, never one the proxy made
        assert not client.failures, client.failures
        for answer in client.answers:
            if answer.status >= 300:
                assert (answer.status, answer.version) == (500, "candidate"), answer.body
        assert any(a.status == 500 for a in client.answers)
        last = max(a.received for a in client.answers if a.version == "candidate")
        after = [a for a in client.answers if a.received > last]
        assert after, "no user answer after the revert"
        assert {(a.version, a.status) for a in after} == {("stable", 200)}
        assert await served_by(proxy, 20) == {"stable": 20}
        # and the console says so (not a terminal: --watch prints one snapshot)
        admin = f"http://127.0.0.1:{proxy.admin_port}"
        watch = await asyncio.to_thread(
            cli, "status", "--watch", "--admin-url", admin, env={"COLUMNS": "200"}
        )
        assert watch.returncode == 0, watch.stderr
        assert "app 1.1: rolled back, blue/green: reverted in the bake" in watch.stdout
        assert "iteration 1 ✓ → switch ✓ → bake 20s ✗ → reverted" in watch.stdout
        assert "test job: last (attempt 1): passed, exit 0: smoke: 15 requests" in watch.stdout


@pytest.mark.timeout(60)
def test_demo_bluegreen_scenario_tests_switches_bakes_and_promotes() -> None:
    result = cli("demo", "--scenario", "bluegreen", timeout=55)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "scenario bluegreen: candidate 1.1 passes its tests" in out
    assert "iteration 1 of 2: test traffic only, users on stable" in out
    assert "iteration 2 of 2: test traffic only, users on stable" in out
    assert "the test job passed (attempt 1): exit 0: smoke: 9/9 requests passed" in out
    assert "switched: all traffic on the candidate, baking for 8s" in out
    assert "bake at 100%" in out  # the log's progress line in the bake
    assert "promoted     step 3 at 100%: the bake passed" in out
    assert "✓ promoted after" in out
    assert "as expected for this candidate" in out


@pytest.mark.timeout(60)
def test_demo_bluegreen_bad_scenario_reverts_in_the_bake() -> None:
    result = cli("demo", "--scenario", "bluegreen-bad", timeout=55)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "scenario bluegreen-bad: candidate 1.1 passes its tests, but" in out
    assert "the test job passed (attempt 1)" in out
    assert "switched: all traffic on the candidate" in out
    assert "→ the users reach 1.1 now, and it fails 30% of their requests" in out
    assert "rolled_back  step 3 at 100%" in out  # the decision, in the bake ...
    assert "✗ " in out  # ... with its evidence: a failed check
    assert "reverted in the bake: the users were back on stable 1.0" in out
    assert "✓ rolled back after" in out
    assert "as expected for this candidate" in out
    assert "promoted     " not in out
