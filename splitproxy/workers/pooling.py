"""One analyzer for several workers: their live-window buckets, summed per second (pure).

Each worker's data path writes its own live windows (``rollout/windows.py``), as a single
process does. Every quarter of a second a `Harvester` takes the buckets that closed since its
previous harvest (each exactly once) and the worker publishes them with a *watermark*: the time
up to which it has published everything. The leader's `Pool` collects every worker's buckets
(its own included) and releases a second to the analyzer once every live worker's watermark
has passed its end, or `LATE_AFTER` seconds after its end for a worker that stays silent (a
stalled or dying one): then the second is summed and appended to the `PooledWindows`, which is
what the controller and status read. A bucket that arrives after its second was released is
dropped (and counted): the analyzer consumes each second once and in order.

Summing keeps the analyzer's contract: buckets are summed only when they were routed at the
same candidate probability (a weight change reaches the workers a few milliseconds apart, so a
second may hold one bucket per probability, as a single process's window does); path classes
are summed by name (each worker names its classes in its own order of first sight); latency
sketches merge exactly.

Nothing here reads a clock or does IO: callers pass ``now`` (Unix time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import replace
from typing import Final

from splitproxy.config.vocabulary import VERSIONS
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import (
    PATH_CLASS_LIMIT,
    UNITS_PER_BUCKET,
    PathClassCounts,
    Period,
    Summary,
    VersionCounts,
    Windows,
    summarize,
)

LATE_AFTER: Final = 2.0  # seconds after a second's end: release it without a silent worker

Periods = Mapping[str, list[Period]]  # route -> buckets, oldest first
# who contributes to a `Pool`: a worker's index on one host, a replica's name across hosts
Member = Hashable


def _add(a: VersionCounts, b: VersionCounts) -> VersionCounts:
    sketch = a.latency.copy()
    sketch.merge(b.latency)
    return VersionCounts(a.requests + b.requests, a.errors + b.errors, sketch)


def merge_periods(periods: Iterable[Period]) -> list[Period]:
    """Buckets of one second from several workers, summed per candidate probability (in order
    of first appearance)."""
    by_probability: dict[float | None, Period] = {}
    for period in periods:
        have = by_probability.get(period.probability)
        if have is None:
            by_probability[period.probability] = period
            continue
        by_probability[period.probability] = Period(
            have.start,
            have.end,
            have.probability,
            _add(have.stable, period.stable),
            _add(have.candidate, period.candidate),
            _merge_classes((*have.path_classes, *period.path_classes)),
            _add(have.synthetic_stable, period.synthetic_stable),
            _add(have.synthetic_candidate, period.synthetic_candidate),
            have.sticky or period.sticky,
        )
    return list(by_probability.values())


def _merge_classes(classes: Iterable[PathClassCounts]) -> tuple[PathClassCounts, ...]:
    """Path classes of one second from several workers, summed by name. Sticky users with
    errors are kept once per version (in the first class that names them) and at most
    `UNITS_PER_BUCKET` per version, as one process's bucket keeps them."""
    cells: dict[str, list[int]] = {}
    units: dict[str, tuple[list[int], list[int]]] = {}
    seen: tuple[set[int], set[int]] = (set(), set())
    for cls in classes:
        cell = cells.setdefault(cls.name, [0] * 6)
        for i, n in enumerate((cls.stable_requests, cls.stable_errors, cls.candidate_requests,
                               cls.candidate_errors, cls.stable_unit_errors,
                               cls.candidate_unit_errors)):  # fmt: skip
            cell[i] += n
        mine = units.setdefault(cls.name, ([], []))
        for v, ids in enumerate((cls.stable_units, cls.candidate_units)):
            for unit in ids:
                if unit not in seen[v] and len(seen[v]) < UNITS_PER_BUCKET:
                    seen[v].add(unit)
                    mine[v].append(unit)
    out = []
    for name, (sr, se, cr, ce, sue, cue) in cells.items():
        stable_units, candidate_units = units[name]
        counts = PathClassCounts(name, sr, se, cr, ce, sue, cue)
        out.append(replace(counts, stable_units=tuple(stable_units),
                           candidate_units=tuple(candidate_units)))  # fmt: skip
    return tuple(out)


class PooledWindows(Windows):
    """Live windows whose writes stay local and whose reads are the pool.

    The data path of the leader writes its own requests here, exactly as into `Windows`
    (`window` is inherited); every read the controller and status make (`observations`,
    `summary`) answers from the buckets the `Pool` released: every worker's traffic, summed.
    `local_observations` reads the leader's own buckets, for its `Harvester`."""

    def __init__(
        self, capacity: int = 120, resolution: float = 1.0, path_classes: int = PATH_CLASS_LIMIT
    ) -> None:
        super().__init__(capacity, resolution, path_classes)
        self._pooled: dict[str, deque[Period]] = {}

    def add(self, route: str, periods: Iterable[Period]) -> None:
        """Append released buckets of ``route`` (in time order); the oldest beyond the
        window's capacity are forgotten."""
        ring = self._pooled.get(route)
        if ring is None:
            ring = self._pooled[route] = deque(maxlen=self.capacity)
        ring.extend(periods)

    def local_observations(
        self, route: str, since: float, until: float | None = None
    ) -> list[Period]:
        """This process's own buckets (see `windows.Window.observations`)."""
        return super().observations(route, since, until)

    def observations(self, route: str, since: float, until: float | None = None) -> list[Period]:
        """The pooled buckets that start at or after ``since`` and, with ``until``, end at or
        before it (as `windows.Window.observations` has it)."""
        ring = self._pooled.get(route)
        if ring is None:
            return []
        return [p for p in ring if p.start >= since and (until is None or p.end <= until)]

    def summary(self, route: str, now: float, span: float = 60.0) -> dict[str, Summary]:
        since = now - span
        since -= since % self.resolution
        totals = {v: VersionCounts(0, 0, LatencySketch()) for v in VERSIONS}
        for period in self.observations(route, since):
            for version in VERSIONS:
                totals[version] = _add(totals[version], period.version(version))
        return {v: summarize(c, span) for v, c in totals.items()}

    def retain(self, routes: Iterable[str]) -> None:
        keep = set(routes)
        super().retain(keep)
        for name in [n for n in self._pooled if n not in keep]:
            del self._pooled[name]


class Harvester:
    """Takes each closed bucket of a worker's live windows once: ``harvest(routes, now)``
    returns the buckets of ``routes`` that closed since the previous harvest, up to ``now``
    (the watermark to publish with them)."""

    def __init__(self, windows: Windows) -> None:
        self.windows = windows
        self._last: dict[str, float] = {}

    def harvest(self, routes: Iterable[str], now: float) -> dict[str, list[Period]]:
        read = (
            self.windows.local_observations
            if isinstance(self.windows, PooledWindows)
            else self.windows.observations
        )
        out: dict[str, list[Period]] = {}
        last = self._last
        seen = set()
        for route in routes:
            seen.add(route)
            periods = read(route, last.get(route, 0.0), now)
            if periods:
                last[route] = max(p.end for p in periods)
                out[route] = periods
        for gone in [r for r in last if r not in seen]:
            del last[gone]
        return out


class Pool:
    """The leader's collection of every worker's buckets (see the module docstring).

    ``members``: the contributors expected to publish, by any hashable id (a worker's index:
    the supervisor says who is alive; a replica's name: the heartbeats say who is); one no
    longer a member is not waited for. `release` moves the complete seconds into
    ``windows``, oldest first."""

    def __init__(self, windows: PooledWindows, late_after: float = LATE_AFTER) -> None:
        self.windows = windows
        self.late_after = late_after
        self.members: set[Member] = set()
        self.dropped = 0  # buckets that arrived after their second was released
        self._watermarks: dict[Member, float] = {}
        self._pending: dict[float, dict[str, list[Period]]] = {}  # second start -> route -> buckets
        self._released = 0.0  # every second that starts before this has been released

    def set_members(self, members: Iterable[Member]) -> None:
        self.members = set(members)
        for gone in [w for w in self._watermarks if w not in self.members]:
            del self._watermarks[gone]

    def contribute(self, worker: Member, watermark: float, periods: Periods) -> None:
        """A contributor's buckets, complete up to ``watermark``."""
        if watermark > self._watermarks.get(worker, 0.0):
            self._watermarks[worker] = watermark
        for route, buckets in periods.items():
            for period in buckets:
                if period.start < self._released:
                    self.dropped += 1
                    continue
                self._pending.setdefault(period.start, {}).setdefault(route, []).append(period)

    def release(self, now: float) -> None:
        """Append to the windows each pending second that every member has published past
        (or that is `LATE_AFTER` old), oldest first; stop at the first one still open."""
        if not self._pending:
            return
        marks = [self._watermarks.get(w, 0.0) for w in self.members]
        complete = min(marks) if marks else now
        resolution = self.windows.resolution
        for start in sorted(self._pending):
            end = start + resolution
            if end > complete and now < end + self.late_after:
                break
            for route, periods in self._pending.pop(start).items():
                self.windows.add(route, merge_periods(periods))
            self._released = max(self._released, end)
