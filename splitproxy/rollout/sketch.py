"""Latencies in logarithmic bins (DDSketch): quantiles within 2 %, in bounded memory (pure).

The live windows keep one `LatencySketch` per version and time bucket; every sketch shares one
bin layout, so the histograms of both versions line up bucket by bucket (the analyzer's input).
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from functools import reduce
from operator import add
from typing import Final

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


def _reduce_sum(values: Iterable[float], start: float) -> float:
    return reduce(add, values, start)


# ``start + values[0] + values[1] + …``, added one at a time in order: what adding each value as
# it comes gives, bit for bit. The builtin ``sum`` does exactly that for floats up to 3.11 (in
# C, a double accumulator: ~60 instructions a value against ~290 for ``reduce``); from 3.12 on
# it compensates the rounding, which is more exact but not the same number.
sequential_sum: Final[Callable[[Iterable[float], float], float]] = (
    sum if sys.version_info < (3, 12) else _reduce_sum
)


def nearest_rank(q: float, n: int) -> int:
    """The 0-based rank of the ``q``-quantile of ``n`` sorted values: ``⌈q·n⌉ - 1``."""
    return max(0, math.ceil(q * n - 1e-9) - 1)


def _key(value: float) -> int:
    if value <= MIN_LATENCY:
        return _MIN_KEY
    if value >= MAX_LATENCY:
        return _MAX_KEY
    return math.ceil(math.log(value) * _INV_LOG_GAMMA)


def _add_key(value: float) -> int:
    """The bin `add` gives ``value``: `_key`, and NaN in the last bin."""
    if MIN_LATENCY < value < MAX_LATENCY:
        return math.ceil(math.log(value) * _INV_LOG_GAMMA)
    return _MIN_KEY if value <= MIN_LATENCY else _MAX_KEY


def _first_with_key(key: int) -> float:
    """The smallest float `_add_key` puts in bin ``key`` or above (``key > _MIN_KEY``): from
    ``γ^(key-1)``, the bin's edge, a float at a time (the logarithm's rounding moves the edge
    by a few floats; a few thousand steps in all, at import)."""
    value = _GAMMA ** (key - 1)
    if _add_key(value) >= key:
        while _add_key(below := math.nextafter(value, 0.0)) >= key:
            value = below
        return value
    while _add_key(value) < key:
        value = math.nextafter(value, math.inf)
    return value


# Where each bin starts as `add` computes it: ``_MIN_KEY + bisect_right(_STARTS, value)`` is
# ``_add_key(value)`` for any value but NaN, given a logarithm that is monotonic around each
# edge, as a faithful one is (tests/unit/test_recorder_lean.py checks the floats around every
# edge). `add_all` finds where a run of sorted values leaves its bin with it.
_STARTS: Final = [_first_with_key(key) for key in range(_MIN_KEY + 1, _MAX_KEY + 1)]

# key -> ``_GAMMA**key``, the histograms' bucket bounds: every key a sketch makes, made once
# (`histogram` runs for each version of each closed bucket of each route, every tick)
_BOUNDS: dict[int, float] = {key: _GAMMA**key for key in range(_MIN_KEY, _MAX_KEY + 1)}


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

    def add_all(self, values: list[float]) -> None:
        """`add` each of ``values``, in order: the same bins, count and total (the same
        additions in the same order). Sorted, the values fall into a few runs, one per bin,
        found by bisection (`_STARTS`): a few C calls per bin instead of a logarithm, a product
        and a ceiling per value (the live windows hand their latencies over in batches)."""
        if not values:
            return
        total = sequential_sum(values, self.total)
        if total != total:  # a NaN (they do not sort): one at a time
            for value in values:
                self.add(value)
            return
        ordered = sorted(values)
        bins = self.bins
        n = len(ordered)
        i = 0
        while i < n:  # a bin at a time: a logarithm per bin rather than per value
            key = _MIN_KEY + bisect_right(_STARTS, ordered[i])
            j = bisect_left(ordered, _STARTS[key - _MIN_KEY], i) if key < _MAX_KEY else n
            bins[key] = bins.get(key, 0) + j - i
            i = j
        self.count += n
        self.total = total

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
        bounds, counts = self.columns()
        return tuple(zip(bounds, counts, strict=True))

    def columns(self) -> tuple[list[float], list[int]]:
        """`histogram` as two columns, the bounds and the counts: for a reader that walks it
        (``zip``) once or twice and keeps nothing (``tally``), without a pair per bin."""
        bins = self.bins
        keys = sorted(bins)
        try:
            bounds = list(map(_BOUNDS.__getitem__, keys))
        except KeyError:  # a key outside the layout (bins set by hand): the same power
            bounds = [_BOUNDS.setdefault(key, _GAMMA**key) for key in keys]
        return bounds, list(map(bins.__getitem__, keys))

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
