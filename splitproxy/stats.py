"""Live traffic windows: what each version of a route did in the last minutes (pure).

The analyzer judges a candidate from these, and ``GET /api/v1/routes/{name}`` shows them. Per
route, a `Window` keeps a ring of short time buckets (1 s by default). A bucket holds, for each
version, the number of requests, the number of errors and a `LatencySketch` of their latencies,
all routed at one candidate probability: a request is observed with the probability that it
had of going to the candidate when it was routed (the weight, for a weighted or sticky
decision), or None when it was not routed at random (an override rule, a fallback), and a
change of probability within a second starts a new bucket. The analyzer's attribution tests
need exactly that: each event with the probability in force when its request was routed.

Costs: O(1) work per observation (a few integer updates and one logarithm), and constant memory
per route: at most ``capacity`` buckets, each with two sketches of at most `MAX_BINS` bins.

Nothing here reads a clock: every call takes ``now`` (seconds; the recorder passes Unix time).
Time that goes backwards (a wall-clock step) is folded into the newest bucket, so buckets stay
in order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

RELATIVE_ACCURACY: Final = 0.02  # the promise: a quantile is within 2 % of the true value
_ALPHA: Final = 0.0199  # what the bins are built for, a hair inside the promise
_GAMMA: Final = (1 + _ALPHA) / (1 - _ALPHA)
_INV_LOG_GAMMA: Final = 1 / math.log(_GAMMA)
# Latencies are tracked between these bounds (seconds); outside, they are clamped to them.
MIN_LATENCY: Final = 1e-6
MAX_LATENCY: Final = 1e5
_MIN_KEY: Final = math.ceil(math.log(MIN_LATENCY) * _INV_LOG_GAMMA)
_MAX_KEY: Final = math.ceil(math.log(MAX_LATENCY) * _INV_LOG_GAMMA)
MAX_BINS: Final = _MAX_KEY - _MIN_KEY + 1

_ceil = math.ceil
_log = math.log

STABLE: Final = 0
CANDIDATE: Final = 1
VERSIONS: Final = ("stable", "candidate")


def nearest_rank(q: float, n: int) -> int:
    """The 0-based rank of the ``q``-quantile of ``n`` sorted values: ``⌈q·n⌉ - 1``."""
    return max(0, math.ceil(q * n - 1e-9) - 1)


def _key(value: float) -> int:
    if value <= MIN_LATENCY:
        return _MIN_KEY
    if value >= MAX_LATENCY:
        return _MAX_KEY
    return math.ceil(math.log(value) * _INV_LOG_GAMMA)


def _value(key: int) -> float:
    # bin ``key`` holds (gamma**(key-1), gamma**key]; this point is within alpha of all of it
    return 2 * _GAMMA**key / (_GAMMA + 1)


class LatencySketch:
    """Latencies in logarithmic bins (DDSketch): quantiles within `RELATIVE_ACCURACY`.

    Bin ``k`` counts the values in ``(γ^(k-1), γ^k]`` with ``γ = (1+α)/(1-α)``; reporting
    ``2γ^k/(γ+1)`` for any of them is off by at most ``α`` relatively. Bins are a sparse dict,
    so a sketch holds at most `MAX_BINS` entries whatever it has seen.
    """

    __slots__ = ("bins", "count", "total")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        if MIN_LATENCY < value < MAX_LATENCY:
            key = _ceil(_log(value) * _INV_LOG_GAMMA)
        else:
            key = _MIN_KEY if value <= MIN_LATENCY else _MAX_KEY
        bins = self.bins
        bins[key] = bins.get(key, 0) + 1
        self.count += 1
        self.total += value

    def merge(self, other: LatencySketch) -> None:
        bins = self.bins
        for key, n in other.bins.items():
            bins[key] = bins.get(key, 0) + n
        self.count += other.count
        self.total += other.total

    def copy(self) -> LatencySketch:
        new = LatencySketch()
        new.bins = dict(self.bins)
        new.count = self.count
        new.total = self.total
        return new

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 ≤ q ≤ 1), nearest-rank: within 2 % of the ``⌈q·n⌉``-th
        smallest latency (inside ``[MIN_LATENCY, MAX_LATENCY]``); None when empty. (So the
        p99 of fewer than 100 requests is the slowest of them.)"""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is not between 0 and 1")
        if self.count == 0:
            return None
        rank = nearest_rank(q, self.count)
        seen = 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen > rank:
                return _value(key)
        raise AssertionError("bin counts do not add up")  # pragma: no cover

    def histogram(self) -> tuple[tuple[float, int], ...]:
        """The bins as ``(upper bound in seconds, count)`` pairs, smallest first (one layout
        for every sketch, so histograms of both versions line up)."""
        return tuple((_GAMMA**key, self.bins[key]) for key in sorted(self.bins))

    def count_above(self, threshold: float) -> int:
        """How many latencies exceed ``threshold`` (bins are counted whole, so values within
        2 % of the threshold may fall either side)."""
        edge = _key(threshold)
        return sum(n for key, n in self.bins.items() if key > edge)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def __repr__(self) -> str:
        return f"<LatencySketch n={self.count} bins={len(self.bins)}>"


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """What one version did in one bucket (or a merge of buckets)."""

    requests: int
    errors: int
    latency: LatencySketch  # a copy: reading never changes the window

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Observation:
    """One time bucket of a route: ``[start, end)``, all routed at ``probability``."""

    start: float
    end: float
    # the chance these requests had of being routed to the candidate; None: not at random
    probability: float | None
    stable: VersionCounts
    candidate: VersionCounts

    def version(self, name: str) -> VersionCounts:
        return self.candidate if name == "candidate" else self.stable


class _Bucket:
    __slots__ = ("end", "errors", "latency", "probability", "requests", "start")

    def __init__(self, start: float, end: float, probability: float | None) -> None:
        self.start = start
        self.end = end
        self.probability = probability
        self.requests = [0, 0]
        self.errors = [0, 0]
        self.latency = (LatencySketch(), LatencySketch())

    def counts(self, version: int) -> VersionCounts:
        return VersionCounts(
            self.requests[version], self.errors[version], self.latency[version].copy()
        )


class Window:
    """The recent traffic of one route: a ring of at most ``capacity`` buckets."""

    __slots__ = ("_buckets", "_current", "resolution")

    def __init__(self, capacity: int = 120, resolution: float = 1.0) -> None:
        if capacity < 1 or resolution <= 0:
            raise ValueError("a window needs capacity >= 1 and resolution > 0")
        self.resolution = resolution
        self._buckets: deque[_Bucket] = deque(maxlen=capacity)
        self._current: _Bucket | None = None

    @property
    def capacity(self) -> int:
        maxlen = self._buckets.maxlen
        assert maxlen is not None
        return maxlen

    def observe(
        self,
        now: float,
        version: int,
        latency: float | None,
        error: bool,
        probability: float | None,
    ) -> None:
        """Count one request: ``version`` is `STABLE` or `CANDIDATE`, ``latency`` in seconds
        (None for a request whose latency means nothing, such as a WebSocket session)."""
        bucket = self._current
        if bucket is None or now >= bucket.end or probability != bucket.probability:
            bucket = self._next(now, probability)
        bucket.requests[version] += 1
        if error:
            bucket.errors[version] += 1
        if latency is not None:
            bucket.latency[version].add(latency)

    def _next(self, now: float, probability: float | None) -> _Bucket:
        current = self._current
        start = now - now % self.resolution
        if current is not None and start < current.start:
            start = current.start  # the clock went back: stay in order
        bucket = self._current = _Bucket(start, start + self.resolution, probability)
        self._buckets.append(bucket)
        return bucket

    def _between(self, since: float, until: float | None) -> Iterator[_Bucket]:
        res = self.resolution
        for bucket in self._buckets:
            if bucket.start >= since and (until is None or bucket.start + res <= until):
                yield bucket

    def observations(self, since: float, until: float | None = None) -> list[Observation]:
        """The buckets that start at or after ``since`` (oldest first), and, with ``until``,
        end at or before it. A reader that consumes each bucket once asks for complete ones:
        ``observations(last, until=now)``, then ``last = <the largest end returned>``."""
        res = self.resolution
        return [
            Observation(
                b.start, b.start + res, b.probability, b.counts(STABLE), b.counts(CANDIDATE)
            )
            for b in self._between(since, until)
        ]

    def totals(self, since: float, until: float | None = None) -> tuple[VersionCounts, ...]:
        """Stable's and the candidate's counts, merged over the buckets ``observations`` would
        return."""
        out = []
        buckets = list(self._between(since, until))
        for version in (STABLE, CANDIDATE):
            sketch = LatencySketch()
            requests = errors = 0
            for b in buckets:
                requests += b.requests[version]
                errors += b.errors[version]
                sketch.merge(b.latency[version])
            out.append(VersionCounts(requests, errors, sketch))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Summary:
    """A version's recent traffic, as status shows it."""

    requests: int
    rate: float  # requests per second over the span
    errors: int
    error_rate: float | None  # errors / requests; None without requests
    p50: float | None  # seconds
    p95: float | None
    p99: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON for the status API: latencies in milliseconds."""
        return {
            "requests": self.requests,
            "rate": round(self.rate, 3),
            "errors": self.errors,
            "error_rate": None if self.error_rate is None else round(self.error_rate, 6),
            "latency_ms": {"p50": _ms(self.p50), "p95": _ms(self.p95), "p99": _ms(self.p99)},
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarize(counts: VersionCounts, span: float) -> Summary:
    sketch = counts.latency
    return Summary(
        requests=counts.requests,
        rate=counts.requests / span,
        errors=counts.errors,
        error_rate=counts.error_rate,
        p50=sketch.quantile(0.5),
        p95=sketch.quantile(0.95),
        p99=sketch.quantile(0.99),
    )


class Windows:
    """A `Window` per route name."""

    def __init__(self, capacity: int = 120, resolution: float = 1.0) -> None:
        self.capacity = capacity
        self.resolution = resolution
        self._windows: dict[str, Window] = {}

    def window(self, route: str) -> Window:
        """The route's window, created empty on first use (writers keep a reference)."""
        window = self._windows.get(route)
        if window is None:
            window = self._windows[route] = Window(self.capacity, self.resolution)
        return window

    def observe(
        self,
        route: str,
        now: float,
        version: int,
        latency: float | None,
        error: bool,
        probability: float | None,
    ) -> None:
        self.window(route).observe(now, version, latency, error, probability)

    def observations(
        self, route: str, since: float, until: float | None = None
    ) -> list[Observation]:
        """See `Window.observations`; an unknown route has none."""
        window = self._windows.get(route)
        return [] if window is None else window.observations(since, until)

    def summary(self, route: str, now: float, span: float = 60.0) -> dict[str, Summary]:
        """Per version, the last ``span`` seconds up to ``now``: rate, error rate, p50/p95/p99."""
        window = self._windows.get(route)
        if window is None:
            empty = VersionCounts(0, 0, LatencySketch())
            return {v: summarize(empty, span) for v in VERSIONS}
        since = now - span
        since -= since % window.resolution  # whole buckets: the oldest may reach a bit further
        totals = window.totals(since)
        return {v: summarize(c, span) for v, c in zip(VERSIONS, totals, strict=True)}

    def retain(self, routes: Iterable[str]) -> None:
        """Forget the routes not named (after a reload removed them)."""
        keep = set(routes)
        for name in [n for n in self._windows if n not in keep]:
            del self._windows[name]

    def __contains__(self, route: str) -> bool:
        return route in self._windows
