"""The blue/green test job runner: `run_test_job` and `TestJobRunner`, with real commands.

Each job is a small ``python -c`` program; a job that must be stopped writes its pid (and
its child's) first, so the test can check the processes are gone afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from splitproxy.config import TestJob
from splitproxy.rollout.testjob import TAIL_CHARS, TestJobRunner, run_test_job

pytestmark = pytest.mark.timeout(30)


def job(code: str, **fields: Any) -> TestJob:
    return TestJob.model_validate({"command": [sys.executable, "-c", code], **fields})


def gone(pid: int) -> bool:
    """The process has exited (a zombie left to init counts: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def eventually_gone(pid: int) -> bool:
    # a killed process finishes exiting a moment after it closes its files
    for _ in range(200):
        if gone(pid):
            return True
        await asyncio.sleep(0.01)
    return False


def read_pids(path: Path) -> list[int]:
    # the job renames the file into place: it is absent or whole
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def pids_written(path: Path, count: int) -> list[int]:
    for _ in range(500):
        pids = read_pids(path)
        if len(pids) == count:
            return pids
        await asyncio.sleep(0.01)
    raise AssertionError(f"the job never wrote {count} pids to {path}")


# A job that starts a child sleeping in the same process group, writes both pids, and sleeps.
SLEEP_WITH_CHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("started", flush=True)
time.sleep(60)
"""


def sleeper(pids: Path, **fields: Any) -> TestJob:
    return TestJob.model_validate(
        {"command": [sys.executable, "-c", SLEEP_WITH_CHILD, str(pids)], **fields}
    )


async def test_a_job_that_exits_0_passes() -> None:
    result = await run_test_job(job("print('all green')"), {})
    assert (result.passed, result.exit_code, result.timed_out) == (True, 0, False)
    assert result.tail == "all green\n"
    assert result.duration > 0


async def test_a_job_that_exits_3_fails_with_its_output_interleaved() -> None:
    code = (
        "import sys\n"
        "print('checking /api', flush=True)\n"
        "print('GET /api -> 502', file=sys.stderr, flush=True)\n"
        "print('1 of 4 failed', flush=True)\n"
        "sys.exit(3)\n"
    )
    result = await run_test_job(job(code), {})
    assert (result.passed, result.exit_code, result.timed_out) == (False, 3, False)
    assert result.tail == "checking /api\nGET /api -> 502\n1 of 4 failed\n"


async def test_the_job_sees_the_proxys_env_its_own_and_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FROM_PROXY", "proxy")
    monkeypatch.setenv("BASE_PATH", "overridden by the job")
    code = (
        "import os\n"
        "for k in ('FROM_PROXY', 'BASE_PATH', 'SPLITPROXY_PREVIEW_URL', 'SPLITPROXY_ROUTE'):\n"
        "    print(k, '=', os.environ.get(k))\n"
        "print('cwd', '=', os.getcwd())\n"
        "import sys; sys.stdout.flush(); os.write(1, os.read(0, 10) or b'stdin is empty')\n"
    )
    env = {"SPLITPROXY_PREVIEW_URL": "http://127.0.0.1:9/", "SPLITPROXY_ROUTE": "shop"}
    result = await run_test_job(job(code, env={"BASE_PATH": "/api"}, cwd="/"), env)
    assert result.passed, result.tail
    assert result.tail.splitlines() == [
        "FROM_PROXY = proxy",
        "BASE_PATH = /api",
        "SPLITPROXY_PREVIEW_URL = http://127.0.0.1:9/",
        "SPLITPROXY_ROUTE = shop",
        "cwd = /",
        "stdin is empty",
    ]


async def test_a_loud_job_keeps_only_the_tail_and_memory_stays_bounded() -> None:
    printed = 20 * 1024 * 1024
    code = (
        "import sys\n"
        f"for _ in range({printed // 65536}): sys.stdout.write('x' * 65535 + '\\n')\n"
        "sys.stdout.write('é' * 10 + 'END\\n')\n"  # multi-byte characters at the very end
    )
    tracemalloc.start()
    try:
        result = await run_test_job(job(code), {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.passed
    assert len(result.tail) == TAIL_CHARS
    assert result.tail.endswith("x\n" + "é" * 10 + "END\n")
    assert "\ufffd" not in result.tail  # a character cut at the buffer's start is not kept
    assert peak < 1024 * 1024, f"{peak} bytes allocated for a job printing {printed}"


async def test_the_timeout_kills_the_job_and_its_child(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    run = asyncio.create_task(run_test_job(sleeper(pids, timeout="500ms"), {}))
    leader, child = await pids_written(pids, 2)
    result = await run
    assert (result.passed, result.exit_code, result.timed_out) == (False, None, True)
    assert result.duration >= 0.5
    assert result.tail == "started\n"
    assert gone(leader)  # the proxy's own child is reaped, not a zombie
    assert await eventually_gone(child)


async def test_a_job_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM', flush=True))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = await run_test_job(job(code, timeout="500ms"), {}, kill_grace=0.2)
    assert (result.passed, result.exit_code, result.timed_out) == (False, None, True)
    assert result.tail == "ready\nignoring SIGTERM\n"


async def test_a_job_that_leaves_a_child_behind_does_not_outlive_its_run(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid)\n"
    )
    result = await run_test_job(job(code), {})
    assert result.passed
    assert await eventually_gone(int(result.tail))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"command": ["/nonexistent/smoke.sh"]}, "could not start '/nonexistent/smoke.sh': "),
        ({"command": [os.devnull]}, f"could not start '{os.devnull}': "),  # not executable
        ({"command": [sys.executable], "cwd": "/nonexistent"}, "' in '/nonexistent': "),
    ],
)
async def test_a_command_that_cannot_start_fails_cleanly(fields: Any, reason: str) -> None:
    result = await run_test_job(TestJob.model_validate(fields), {})
    assert (result.passed, result.exit_code, result.timed_out) == (False, None, False)
    assert reason in result.tail


async def test_a_cancelled_run_kills_the_job_before_the_cancellation_goes_on(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    run = asyncio.create_task(run_test_job(sleeper(pids), {}))
    leader, child = await pids_written(pids, 2)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert gone(leader)
    assert await eventually_gone(child)


def spawned_job(marker: Path) -> bool:
    """Has this process started a job whose command line names ``marker``?"""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[1]) == me and str(marker).encode() in cmdline:
                return True
    return False


async def run_caught_starting(pids: Path) -> tuple[asyncio.Task[Any], int, int]:
    """A run of `sleeper` held where asyncio has forked its job but not yet connected its
    pipes (a few loop passes), the job's child started meanwhile: the run, the job's pid and
    its child's."""
    run = asyncio.create_task(run_test_job(sleeper(pids), {}))
    for _ in range(100):
        await asyncio.sleep(0)  # one loop pass at a time, until the job is forked
        if spawned_job(pids):
            break
    else:
        raise AssertionError("the job was never started")
    # the loop is held (no pass: the pipes stay unconnected) until the job started its child
    for _ in range(1000):
        if read_pids(pids):
            break
        time.sleep(0.01)  # noqa: ASYNC251 (holding the loop is the point)
    leader, child = read_pids(pids)
    return run, leader, child


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_a_run_cancelled_while_its_job_starts_kills_what_the_job_started(
    tmp_path: Path,
) -> None:
    # asyncio connects a job's pipes over a few loop passes after forking it; a run cancelled
    # then must still kill the job's whole group, not only its main process
    run, leader, child = await run_caught_starting(tmp_path / "pids")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert gone(leader)
    assert await eventually_gone(child)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_a_run_cancelled_twice_while_its_job_starts_still_kills_the_job(
    tmp_path: Path,
) -> None:
    run, leader, child = await run_caught_starting(tmp_path / "pids")
    run.cancel()
    await asyncio.sleep(0)  # the run takes the first cancellation and waits for the start
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await eventually_gone(leader)
    assert await eventually_gone(child)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_runner_reports_each_result_once_and_wakes_the_controller() -> None:
    woken: list[str] = []
    clock = Clock()
    runner = TestJobRunner(clock, on_done=lambda: woken.append("done"))
    assert runner.status("shop") is None
    runner.start("shop", 1, job("import sys; print('bad'); sys.exit(3)"), {})
    assert runner.running("shop")
    assert runner.status("shop") == {
        "attempt": 1,
        "running": True,
        "started_at": clock.now,
        "last": None,
    }
    await runner.settle()
    assert woken == ["done"]
    assert not runner.running("shop")
    [(attempt, result)] = runner.results("shop")
    assert (attempt, result.passed, result.exit_code, result.tail) == (1, False, 3, "bad\n")
    assert runner.results("shop") == []

    clock.now += 60
    runner.start("shop", 2, job("print('good')"), {})
    await runner.settle()
    status = runner.status("shop")
    assert status is not None
    assert (status["attempt"], status["running"], status["started_at"]) == (2, False, clock.now)
    assert status["last"]["attempt"] == 2
    assert (status["last"]["passed"], status["last"]["tail"]) == (True, "good\n")
    assert [(a, r.passed) for a, r in runner.results("shop")] == [(2, True)]
    assert runner.results("other") == []
    await runner.close()


async def test_a_new_attempt_replaces_the_running_one(tmp_path: Path) -> None:
    runner = TestJobRunner(Clock())
    pids = tmp_path / "pids"
    runner.start("shop", 1, sleeper(pids), {})
    leader, child = await pids_written(pids, 2)
    runner.start("shop", 2, job("print('second')"), {})
    await runner.settle()
    assert [(a, r.tail) for a, r in runner.results("shop")] == [(2, "second\n")]
    assert gone(leader)
    assert await eventually_gone(child)
    await runner.close()


async def test_forget_kills_the_job_and_drops_the_route(tmp_path: Path) -> None:
    woken: list[str] = []
    runner = TestJobRunner(Clock(), on_done=lambda: woken.append("done"))
    pids = tmp_path / "pids"
    runner.start("shop", 1, sleeper(pids), {})
    leader, child = await pids_written(pids, 2)
    runner.forget("shop")
    assert not runner.running("shop")
    await runner.settle()
    assert gone(leader)
    assert await eventually_gone(child)
    assert (runner.results("shop"), runner.status("shop"), woken) == ([], None, [])
    await runner.close()


async def test_close_kills_every_route_s_job(tmp_path: Path) -> None:
    runner = TestJobRunner(Clock())
    runner.start("a", 1, sleeper(tmp_path / "a"), {})
    runner.start("b", 1, sleeper(tmp_path / "b"), {})
    everyone = await pids_written(tmp_path / "a", 2) + await pids_written(tmp_path / "b", 2)
    # Let the runner's tasks finish starting the jobs (asyncio connects the pipes over a few
    # loop passes): the pids can be read before that when this process was paused while the
    # jobs started (a loaded machine). A job cancelled that early is its own case
    # (`test_a_run_cancelled_while_its_job_starts_kills_what_the_job_started`).
    for _ in range(20):
        await asyncio.sleep(0)
    await runner.close()
    assert not runner.running("a")
    assert not runner.running("b")
    for pid in everyone:
        assert await eventually_gone(pid)
