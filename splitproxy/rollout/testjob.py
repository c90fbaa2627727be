"""The blue/green test job: run the user's command against the candidate, bounded in time and
memory, and report how it ended.

`run_test_job` runs one `TestJob` as a child process of its own session (so the job and
everything it spawns form one process group the proxy can signal as a whole), with stdin from
/dev/null and stdout and stderr merged into one pipe of which only the last
`TAIL_CHARS` characters are kept. At the timeout the group gets SIGTERM, then SIGKILL after
`KILL_GRACE` seconds; once the job's main process has exited, whatever it left running in its
group is killed too, so a test job never outlives its run. It never raises for the job's sake:
a command that cannot start is a failed result saying why.

`TestJobRunner` is what the controller holds: one job at a time per route, run in the
background, results taken on the controller's next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from splitproxy.config import TestJob

logger = logging.getLogger("splitproxy.rollout.testjob")

TAIL_CHARS: Final = 2000
# UTF-8 takes at most 4 bytes a character: this many bytes always hold the last TAIL_CHARS.
_TAIL_BYTES: Final = 4 * TAIL_CHARS
KILL_GRACE: Final = 2.0
# After the job's main process exits, how long to wait for the rest of its output: anything
# still holding the pipe then is a process that left the group (setsid), which we cannot kill.
_DRAIN_WAIT: Final = 2.0


@dataclass(frozen=True, slots=True)
class TestJobResult:
    """How a test job ended: ``passed`` when it exited 0 before its timeout.

    ``exit_code`` is None when the job could not start or was stopped at its timeout (negative
    when a signal the proxy did not send ended it); ``tail`` is the end of its output (stdout
    and stderr interleaved), or why it could not start."""

    __test__ = False  # a result, not a pytest test class

    passed: bool
    exit_code: int | None
    timed_out: bool
    duration: float
    tail: str

    def summary(self) -> str:
        """How it ended and its output's last line, for a ledger event."""
        if self.timed_out:
            how = f"timed out after {self.duration:.0f}s"
        elif self.exit_code is None:
            how = "could not start"
        else:
            how = f"exit {self.exit_code}"
        lines = [line.strip() for line in self.tail.splitlines() if line.strip()]
        return f"{how}: {lines[-1]}" if lines else how

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration": round(self.duration, 3),
            "tail": self.tail,
        }


class _Collect(asyncio.SubprocessProtocol):
    """Keeps the last bytes of the job's output as they arrive (memory stays bounded however
    much it prints) and tells when the process has exited and the pipe has closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tail = bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if len(data) >= _TAIL_BYTES:
            self.tail[:] = data[-_TAIL_BYTES:]
        else:
            self.tail += data
            del self.tail[:-_TAIL_BYTES]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self) -> str:
        return self.tail.decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)


# the kills of jobs whose run was cancelled while they started, until each is done
_KILLING: set[asyncio.Future[None]] = set()


async def _kill_spawned(
    spawn: asyncio.Future[tuple[asyncio.SubprocessTransport, Any]], collect: _Collect
) -> None:
    """A run cancelled while its job was being started: let the start finish (a few loop
    passes), then kill the job's whole group and wait for it to exit."""
    try:
        transport, _ = await spawn
    except (OSError, ValueError, subprocess.SubprocessError):
        return  # it never started
    try:
        _signal_group(transport.get_pid(), signal.SIGKILL)
        await collect.exited
    finally:
        transport.close()


async def run_test_job(
    job: TestJob, env: Mapping[str, str], *, kill_grace: float = KILL_GRACE
) -> TestJobResult:
    """Run ``job`` once with the proxy's environment plus ``job.env`` plus ``env`` (the
    caller's ``SPLITPROXY_*`` variables win). Cancelled, it kills the job's process group and
    waits for the job to exit before the cancellation goes on."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    collect = _Collect(loop)
    spawn = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: collect,
            *job.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=job.cwd,
            env={**os.environ, **job.env, **env},
            start_new_session=True,
        )
    )
    try:
        # shielded: cancelled while asyncio still connects the job's pipes, the spawn itself
        # would kill the job's main process only, and what it started meanwhile would live on
        transport, _ = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        # in a task of its own: cancelled again meanwhile, the run still leaves no job behind
        killing = asyncio.ensure_future(_kill_spawned(spawn, collect))
        _KILLING.add(killing)  # (the loop keeps only weak references to tasks)
        killing.add_done_callback(_KILLING.discard)
        await asyncio.shield(killing)
        raise
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        where = f" in {job.cwd!r}" if job.cwd is not None else ""
        reason = f"could not start {job.command[0]!r}{where}: {exc}"
        return TestJobResult(False, None, False, loop.time() - started, reason)
    # start_new_session: the job leads a new session and process group whose id is its pid
    pgid = transport.get_pid()
    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(collect.exited), job.timeout)
        except TimeoutError:
            timed_out = True
            _signal_group(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(collect.exited), kill_grace)
            except TimeoutError:
                _signal_group(pgid, signal.SIGKILL)
                await collect.exited
        # What the job left behind in its group (a server it started, a `sleep &`) would
        # hold the pipe open and outlive the rollout. (The group id cannot be taken by
        # another process while any member lives, so this reaches only the job's own.)
        _signal_group(pgid, signal.SIGKILL)
        # past the wait, a process that left the group holds the pipe: keep what we have
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(collect.drained), _DRAIN_WAIT)
    except asyncio.CancelledError:
        _signal_group(pgid, signal.SIGKILL)
        await collect.exited  # SIGKILL cannot be ignored: this is prompt; no zombie is left
        raise
    finally:
        transport.close()
    code = transport.get_returncode()
    exit_code = None if timed_out else code
    return TestJobResult(
        passed=exit_code == 0,
        exit_code=exit_code,
        timed_out=timed_out,
        duration=loop.time() - started,
        tail=collect.text(),
    )


RunJob = Callable[[TestJob, Mapping[str, str]], Awaitable[TestJobResult]]


@dataclass(eq=False)
class _RouteJob:
    """One route's test job: the attempt started last, its task, results not yet taken."""

    attempt: int
    started_at: float
    task: asyncio.Task[None] | None = None
    finished: list[tuple[int, TestJobResult]] = field(default_factory=list)
    last: tuple[int, TestJobResult] | None = None


class TestJobRunner:
    """Runs routes' test jobs in the background, one at a time per route.

    The controller calls `start` when a candidate is to be tested and takes finished
    results with `results` on its ticks; ``on_done`` (called when a job finishes) lets it
    wake up for them. ``clock`` stamps ``started_at`` in `status`; ``run`` runs one job
    (`run_test_job`; a fake in the controller's tests)."""

    __test__ = False  # a runner, not a pytest test class

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        on_done: Callable[[], None] | None = None,
        *,
        run: RunJob = run_test_job,
        pending: set[str] | None = None,
    ) -> None:
        self.clock = clock
        # routes with results to take (added to when a job finishes, never taken from here:
        # the controller asks `results` only of a route it finds there)
        self.pending: set[str] = set() if pending is None else pending
        self.on_done = on_done
        self._run = run
        self._routes: dict[str, _RouteJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # where jobs reach the candidate: the preview listener (None: the candidate's own
        # address); known once the proxy listens, and jobs asked for before then wait
        self.preview_url: str | None = None
        self._listening = False
        self._asked: dict[str, tuple[int, TestJob, str, str]] = {}

    def listening(self, preview_url: str | None) -> None:
        """The proxy listens (``preview_url``: its preview listener, if any): jobs asked for
        until now start, later ones at once."""
        self.preview_url, self._listening = preview_url, True
        asked, self._asked = self._asked, {}
        for route, args in asked.items():
            self.ask(route, *args)

    def ask(self, route: str, attempt: int, job: TestJob, candidate: str, revision: str) -> None:
        """Run ``job`` against ``route``'s candidate (``candidate``: its own URL, used when
        there is no preview listener) with ``SPLITPROXY_PREVIEW_URL``, ``SPLITPROXY_ROUTE``
        and ``SPLITPROXY_REVISION`` in its environment; deferred until `listening`."""
        if not self._listening:
            self._asked[route] = (attempt, job, candidate, revision)
            return
        env = {
            "SPLITPROXY_PREVIEW_URL": self.preview_url or candidate,
            "SPLITPROXY_ROUTE": route,
            "SPLITPROXY_REVISION": revision,
        }
        self.start(route, attempt, job, env)

    def start(self, route: str, attempt: int, job: TestJob, env: Mapping[str, str]) -> None:
        """Start ``job`` for ``route`` as ``attempt``; a job still running for the route is
        cancelled (its result is never reported). Results not yet taken are kept."""
        state = self._routes.get(route)
        if state is not None and state.task is not None:
            state.task.cancel()
        if state is None:
            state = self._routes[route] = _RouteJob(attempt, self.clock())
        else:
            state.attempt, state.started_at = attempt, self.clock()
        logger.info(
            "test job for %s (attempt %d) started: %s", route, attempt, shlex.join(job.command)
        )
        coro = self._one(route, state, attempt, job, dict(env))
        task = asyncio.get_running_loop().create_task(
            coro, name=f"splitproxy-testjob-{route}-{attempt}"
        )
        state.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(
        self, route: str, state: _RouteJob, attempt: int, job: TestJob, env: dict[str, str]
    ) -> None:
        try:
            result = await self._run(job, env)
        except asyncio.CancelledError:
            logger.info("test job for %s (attempt %d) cancelled", route, attempt)
            raise
        except Exception as exc:  # a runner bug fails the test; it must not hang the rollout
            logger.exception("test job for %s (attempt %d) could not run", route, attempt)
            result = TestJobResult(False, None, False, 0.0, f"{type(exc).__name__}: {exc}")
        if state.task is asyncio.current_task():
            state.task = None
        state.finished.append((attempt, result))
        state.last = (attempt, result)
        self.pending.add(route)
        outcome = "passed" if result.passed else "timed out" if result.timed_out else "failed"
        logger.info(
            "test job for %s (attempt %d) %s: exit code %s after %.1fs",
            route,
            attempt,
            outcome,
            result.exit_code,
            result.duration,
        )
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # the waker's failure is not the job's
                logger.exception("test job for %s: on_done failed", route)

    def results(self, route: str) -> list[tuple[int, TestJobResult]]:
        """The results of ``route``'s jobs finished since the last call, with their attempt
        numbers, oldest first (taken: each is returned once)."""
        state = self._routes.get(route)
        if state is None or not state.finished:
            return []
        taken, state.finished = state.finished, []
        return taken

    def running(self, route: str) -> bool:
        state = self._routes.get(route)
        return state is not None and state.task is not None and not state.task.done()

    def status(self, route: str) -> dict[str, Any] | None:
        """``route``'s test job for status: the attempt started last, whether it runs, when it
        started (``clock`` time) and the last result (with its attempt); None if none ran."""
        state = self._routes.get(route)
        if state is None:
            return None
        last = None
        if state.last is not None:
            attempt, result = state.last
            last = {"attempt": attempt, **result.as_dict()}
        return {
            "attempt": state.attempt,
            "running": self.running(route),
            "started_at": state.started_at,
            "last": last,
        }

    def forget(self, route: str) -> None:
        """``route`` lost its rollout: cancel its job (the process group is killed) and drop
        its results."""
        self._asked.pop(route, None)
        state = self._routes.pop(route, None)
        if state is not None and state.task is not None:
            state.task.cancel()

    async def settle(self) -> None:
        """Wait for the jobs running, cancelled ones included (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel every job and wait until each has been killed and reaped."""
        for task in self._tasks:
            task.cancel()
        await self.settle()


__all__ = ["KILL_GRACE", "TAIL_CHARS", "TestJobResult", "TestJobRunner", "run_test_job"]
