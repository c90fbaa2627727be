"""The external-check poller: Prometheus queries and web checks read in the background.

`ExternalPoller` owns the reads of the rollouts' external checks and the asyncio tasks that
make them. The controller calls `ExternalPoller.poll` on each tick of an active rollout; a
check is read when its interval has passed since its previous read started (``every``; the
controller passes ``ControlOptions.external_interval``, or half the rollout's interval
between 0.25 s and 30 s, so each step window sees a fresh value) and no read of it is still
out. A read that fails (`sources.SourceError`, or any exception of the reader) is a reading
with no value and the error. Values wait until the controller takes them on its next tick
(`ExternalPoller.values`; the route is added to ``pending``, the controller's set of routes
with something to take); the last reading of each check (value, time, error) stays for the
route's status (`ExternalPoller.status`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from splitproxy.config import PrometheusCheck, WebCheck
from splitproxy.rollout.sources import SourceError, query_prometheus, read_web

logger = logging.getLogger("splitproxy.rollout.external")

ExternalCheck = PrometheusCheck | WebCheck
# Reads an external check once: its value, None for "no data"; raises SourceError.
ExternalReader = Callable[[ExternalCheck], Awaitable[float | None]]


def make_reader(session: aiohttp.ClientSession) -> ExternalReader:
    """Reads external checks on ``session``: a web check without ``json_path`` is 1.0 for a
    2xx answer and 0.0 otherwise (so its bound is ``min: 1``)."""

    async def read(check: ExternalCheck) -> float | None:
        if isinstance(check, PrometheusCheck):
            return await query_prometheus(
                session, check.prometheus, check.query, timeout=check.timeout
            )
        reading = await read_web(
            session,
            check.web,
            field=check.json_path,
            timeout=check.timeout,
            method=check.method,
            headers=check.headers,
            body=check.body,
        )
        if check.json_path is None:
            return 1.0 if 200 <= reading.status < 300 else 0.0
        return reading.value

    return read


@dataclass(eq=False)
class _Readings:
    """One route's external checks: fresh values, last readings, reads out."""

    values: dict[str, float | None] = field(default_factory=dict)  # not yet taken
    last: dict[str, tuple[float | None, float, str | None]] = field(default_factory=dict)
    polled_at: dict[str, float] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ExternalPoller:
    """Reads external checks in the background; see the module docstring.

    Without a ``reader``, `start` opens an aiohttp session of its own for the reads (and
    `close` closes it). ``clock`` stamps the readings shown in status."""

    def __init__(
        self,
        reader: ExternalReader | None,
        clock: Callable[[], float],
        pending: set[str] | None = None,
    ) -> None:
        self.reader = reader
        self.clock = clock
        # routes with values to take (added to, never taken from, here: see the docstring)
        self.pending: set[str] = set() if pending is None else pending
        self._routes: dict[str, _Readings] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.reader is None:
            self._session = aiohttp.ClientSession()
            self.reader = make_reader(self._session)

    def poll(self, route: str, checks: Sequence[ExternalCheck], every: float, now: float) -> None:
        """Start a read of each of ``checks`` that is due at ``now`` (Unix time)."""
        if self.reader is None or not checks:
            return
        readings = self._routes.setdefault(route, _Readings())
        for check in checks:
            key = check.key
            due = now - readings.polled_at.get(key, -math.inf) >= every
            if due and key not in readings.in_flight:
                readings.polled_at[key] = now
                readings.in_flight.add(key)
                self._spawn(readings, self._read(route, readings, check), f"{route}:{key}")

    async def _read(self, route: str, readings: _Readings, check: ExternalCheck) -> None:
        assert self.reader is not None
        error: str | None = None
        value: float | None = None
        try:
            value = await self.reader(check)
        except SourceError as exc:
            error = str(exc)
        except Exception as exc:  # a reader bug is a failed reading, not a dead controller
            error = f"{type(exc).__name__}: {exc}"
        finally:
            readings.in_flight.discard(check.key)
        readings.values[check.key] = value
        readings.last[check.key] = (value, self.clock(), error)
        self.pending.add(route)

    def values(self, route: str) -> dict[str, float | None]:
        """The values read for ``route`` since the last call, by check key (taken)."""
        readings = self._routes.get(route)
        if readings is None or not readings.values:
            return {}
        taken, readings.values = readings.values, {}
        return taken

    def status(self, route: str) -> dict[str, dict[str, Any]]:
        """The last reading of each check of ``route``: value, time and error."""
        readings = self._routes.get(route)
        if readings is None:
            return {}
        return {
            key: {"value": value, "at": at, "error": error}
            for key, (value, at, error) in sorted(readings.last.items())
        }

    def forget(self, route: str) -> None:
        """``route`` lost its rollout: cancel its reads and drop its readings."""
        readings = self._routes.pop(route, None)
        if readings is not None:
            for task in list(readings.tasks):
                task.cancel()

    def _spawn(self, readings: _Readings, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"splitproxy-external-{name}")
        readings.tasks.add(task)
        task.add_done_callback(readings.tasks.discard)
        task.add_done_callback(_log_failure)

    async def settle(self) -> None:
        """Wait for the reads out (tests)."""
        while True:
            tasks = [t for r in self._routes.values() for t in r.tasks]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the reads out; close the session `start` opened."""
        tasks = [t for r in self._routes.values() for t in r.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.reader = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", task.get_name(), exc_info=task.exception())


__all__ = ["ExternalCheck", "ExternalPoller", "ExternalReader", "make_reader"]
