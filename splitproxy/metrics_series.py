"""What the recorder keeps per route and version (`Series`), its histograms, and the mirror and
reload tallies: plain numbers, exported on scrape by ``metrics._Collector``.

*Raw until read.* The data path's two calls per exchange (``Recorder.exchange_started`` and
``exchange_finished``) are the recorder's hot path. For user traffic they do not update the
counters themselves: they append the request's routing reason, status, duration and time to
first byte to short lists on the series (one ``list.append`` each, which CPython runs without
a Python call), and `Series.fold` turns the lists into the counters in C-level passes
(``list.count``, ``sum``, ``list.sort`` and a few bisects) once a list holds
`FOLD_AT` values, and before anything reads them: every counter a reader sees (``codes``,
``reasons``, ``started``, ``finished``, ``durations``, ``ttfbs``, ``in_flight``) is a property
that folds first. The counts are sums, so folding later adds the same numbers; the histograms'
sums are folded in arrival order (`sequential_sum`: the same float additions, in the same
order, as adding each value as it comes), so the exposed values are identical to counting each
request at once (``tests/unit/test_recorder_lean.py`` pits them against each other).
Bounded: at most `FOLD_AT` values per list, four lists per series.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable
from functools import reduce
from operator import add
from typing import Final, TypeVar

from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.mirror_compare import RESULTS as MIRROR_RESULTS
from splitproxy.dataplane.mirror_compare import MirrorOutcome, MirrorResult
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.windows import Window

# Seconds: Prometheus' defaults plus resolution around typical 200 ms - 1 s p99 thresholds.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_LE: Final = (*(repr(b) for b in LATENCY_BUCKETS), "+Inf")
# raw values a series' list holds before they are folded into its counters: the fold's fixed
# cost (a sort, a few bisects) spread over this many requests, at most ~2 KB per list
FOLD_AT: Final = 64
_K = TypeVar("_K", int, str)
MIRROR_EXAMPLES: Final = 20  # divergent copies kept per route for status
MIRROR_LATENCIES: Final = 1024  # recent latencies per side kept for status' quantiles


def _reduce_sum(values: Iterable[float], start: float) -> float:
    return reduce(add, values, start)


# ``start + values[0] + values[1] + …``, added one at a time in order: what adding each value as
# it comes gives, bit for bit. The builtin ``sum`` does exactly that for floats up to 3.11 (in
# C, a double accumulator: ~60 instructions a value against ~290 for ``reduce``); from 3.12 on
# it compensates the rounding, which is more exact but not the same number.
sequential_sum: Final[Callable[[Iterable[float], float], float]] = (
    sum if sys.version_info < (3, 12) else _reduce_sum
)


class Histogram:
    """Bucket counts and a sum; cumulative only when exported."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bucket whose upper bound is >= value, i.e. value <= le.
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def fold(self, values: list[float]) -> None:
        """`observe` each of ``values`` in order (and empty the list): the same counts and the
        same sum, bit for bit, in a few C-level passes instead of a Python call per value."""
        total = sequential_sum(values, self.sum)  # the same additions in the same order
        if total != total:  # a NaN (never a duration from a monotonic clock): one at a time
            for value in values:
                self.observe(value)
            values.clear()
            return
        self.sum = total
        values.sort()  # the counts do not depend on the order; the sum is already taken
        counts = self.counts
        n = len(values)
        lo = bisect_left(LATENCY_BUCKETS, values[0])
        hi = bisect_left(LATENCY_BUCKETS, values[-1])
        if lo == hi:  # the common case: every value in one bucket
            counts[lo] += n
        else:
            below = 0  # values in the buckets before ``i``
            for i in range(lo, hi):
                upto = bisect_right(values, LATENCY_BUCKETS[i], below)  # value <= le
                counts[i] += upto - below
                below = upto
            counts[hi] += n - below
        values.clear()

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for le, count in zip(_LE, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


class ReloadStats:
    """Outcomes of config loads, for the ``splitproxy_config_*`` metrics."""

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_successful = True
        self.last_success_at = 0.0

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.success += 1
            self.last_success_at = now
        else:
            self.failure += 1
        self.last_successful = ok


def _count_into(counts: dict[_K, int], values: list[_K]) -> None:
    first = values[0]
    n = values.count(first)  # mostly one status, one reason: compared by identity, in C
    if n == len(values):
        counts[first] = counts.get(first, 0) + n
        return
    for value, n in Counter(values).items():
        counts[value] = counts.get(value, 0) + n


class Series:
    """Everything counted for one route and version.

    The ``raw_*`` lists are the hot path's (see the module docstring): ``raw_reasons`` the
    routing reasons of exchanges started (each one started), ``raw_codes`` the statuses of
    user exchanges finished (each one finished), ``raw_durations`` and ``raw_ttfbs`` their
    latencies. Everything else reads the properties."""

    __slots__ = (
        "_codes",
        "_durations",
        "_finished",
        "_reasons",
        "_started",
        "_ttfbs",
        "errors",
        "mirror",
        "preview",
        "preview_durations",
        "raw_codes",
        "raw_durations",
        "raw_reasons",
        "raw_ttfbs",
        "synthetic",
        "version",
        "window",
    )

    def __init__(self, version: Version | None) -> None:
        self.version = version  # None: the series of requests never routed to a version
        self._codes: dict[int, int] = {}
        self.synthetic: dict[int, int] = {}  # codes of synthetic requests
        self.preview: dict[int, int] = {}  # codes of preview requests
        self.mirror: dict[int, int] = {}  # codes the candidate gave mirrored copies
        self.preview_durations: Histogram | None = None  # made by the first preview request
        self._started = 0
        self._finished = 0
        self._reasons: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._durations = Histogram()
        self._ttfbs = Histogram()
        self.window: Window | None = None
        self.raw_reasons: list[str] = []
        self.raw_codes: list[int] = []
        self.raw_durations: list[float] = []
        self.raw_ttfbs: list[float] = []

    def fold(self) -> None:
        """Count what the raw lists hold (and empty them)."""
        reasons = self.raw_reasons
        if reasons:
            _count_into(self._reasons, reasons)
            self._started += len(reasons)
            reasons.clear()
        codes = self.raw_codes
        if codes:
            _count_into(self._codes, codes)
            self._finished += len(codes)
            codes.clear()
        if self.raw_durations:
            self._durations.fold(self.raw_durations)
        if self.raw_ttfbs:
            self._ttfbs.fold(self.raw_ttfbs)

    # Counters the recorder also bumps directly (the rare paths: retries, synthetic and
    # preview requests) are the underscored slots; readers see them folded.
    @property
    def codes(self) -> dict[int, int]:
        self.fold()
        return self._codes

    @property
    def reasons(self) -> dict[str, int]:
        self.fold()
        return self._reasons

    @property
    def started(self) -> int:
        self.fold()
        return self._started

    @property
    def finished(self) -> int:
        self.fold()
        return self._finished

    @property
    def durations(self) -> Histogram:
        self.fold()
        return self._durations

    @property
    def ttfbs(self) -> Histogram:
        self.fold()
        return self._ttfbs

    @property
    def in_flight(self) -> int:
        self.fold()
        return self._started - self._finished


class MirrorStats:
    """What became of one route's mirrored copies: counts by result, both sides' latencies
    (histograms for Prometheus, recent values for status) and the last divergent examples."""

    __slots__ = ("counts", "durations", "examples", "recent", "tally")

    def __init__(self) -> None:
        self.counts: dict[MirrorResult, int] = dict.fromkeys(MIRROR_RESULTS, 0)
        self.durations = {STABLE: Histogram(), CANDIDATE: Histogram()}
        self.recent: dict[str, deque[float]] = {
            STABLE: deque(maxlen=MIRROR_LATENCIES),
            CANDIDATE: deque(maxlen=MIRROR_LATENCIES),
        }
        self.examples: deque[tuple[float, MirrorOutcome]] = deque(maxlen=MIRROR_EXAMPLES)
        self.tally = MirrorTally()  # the answers since the rollout controller's last tick
