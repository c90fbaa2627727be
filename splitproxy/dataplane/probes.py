"""The active prober: runs the health checks the `HealthBook` asks for, and reports back.

One task per `health.Probe` (an address of a backend with ``health:``, or of a rollout's
candidate without one): every ``interval`` it sends ``GET path`` on a new connection
(``Connection: close``) and reads the status line within ``timeout``; an ``expect``-ed status
is a ``success``. A TCP probe only connects. The first check of an address runs at once (a
new candidate's readiness should not wait an interval), then each task keeps its own period.
`Prober.sync` follows the book after each snapshot swap: new checks start, removed ones stop,
changed ones restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from splitproxy.dataplane.health import CheckResult, HealthBook, Probe
from splitproxy.dataplane.state import Snapshot

logger = logging.getLogger("splitproxy.health")

USER_AGENT: Final = b"splitproxy-health"
STATUS_LINE_LIMIT: Final = 8192


async def check_once(probe: Probe) -> CheckResult:
    """Run one check of ``probe``'s address now."""
    spec = probe.spec
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    probe.host, probe.port, limit=STATUS_LINE_LIMIT
                )
            except OSError:
                return "connect_error"
            if probe.tcp:
                return "success"
            host = probe.host if ":" not in probe.host else f"[{probe.host}]"
            writer.write(
                b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
                % (spec.path.encode("ascii"), host.encode("idna"), probe.port, USER_AGENT)
            )
            line = await reader.readline()
    except TimeoutError:
        return "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return "connect_error"  # reset before or while answering
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "connect_error" if not line else "unexpected_status"
    return "success" if int(parts[1]) in spec.expect else "unexpected_status"


class Prober:
    """Runs one task per probe of the book; `sync` after every snapshot swap."""

    def __init__(self, book: HealthBook) -> None:
        self.book = book
        self._tasks: dict[Probe, asyncio.Task[None]] = {}
        self._running = False

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(self._tasks)

    def start(self) -> None:
        """Begin running the checks (from the event loop)."""
        self._running = True
        self.sync()

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot (after the book has): start and stop checks."""
        self.sync()

    def sync(self) -> None:
        if not self._running:
            return
        wanted = set(self.book.probes())
        for probe in [p for p in self._tasks if p not in wanted]:
            self._tasks.pop(probe).cancel()
        loop = asyncio.get_running_loop()
        for probe in wanted - set(self._tasks):
            self._tasks[probe] = loop.create_task(self._run(probe))

    async def _run(self, probe: Probe) -> None:
        interval = probe.spec.interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            result = await check_once(probe)
            self.book.check(probe, result)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def stop(self) -> None:
        """Cancel every check and wait for them to end."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
