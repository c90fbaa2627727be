"""Latencies in logarithmic bins (DDSketch): quantiles within 2 %, in bounded memory (pure).

The live windows keep one `LatencySketch` per version and time bucket; every sketch shares one
bin layout, so the histograms of both versions line up bucket by bucket (the analyzer's input).
"""

from __future__ import annotations

import math
from typing import Final

from splitproxy.rollout.histograms import from_ordinal, ordinal

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


def nearest_rank(q: float, n: int) -> int:
    """The 0-based rank of the ``q``-quantile of ``n`` sorted values: ``⌈q·n⌉ - 1``."""
    return max(0, math.ceil(q * n - 1e-9) - 1)


def _key(value: float) -> int:
    if value <= MIN_LATENCY:
        return _MIN_KEY
    if value >= MAX_LATENCY:
        return _MAX_KEY
    return math.ceil(math.log(value) * _INV_LOG_GAMMA)


class _Bounds(dict[int, float]):
    """key -> ``_GAMMA**key``, the histograms' bucket bounds: every key a sketch makes, made
    once (a sketch's bins are read for each version of each closed bucket of each route, every
    tick); a key outside the layout (bins set by hand) gets the same power, kept."""

    def __missing__(self, key: int) -> float:
        bound = self[key] = _GAMMA**key
        return bound


_BOUNDS: Final = _Bounds({key: _GAMMA**key for key in range(_MIN_KEY, _MAX_KEY + 1)})
_bound_of = _BOUNDS.__getitem__
BOUNDS: Final[dict[int, float]] = _BOUNDS  # (for the tally's one pass over a sketch's bins)


class _Ordinals(dict[int, int]):
    """key -> ``ordinal(_GAMMA**key)``: the bin's bound as the integer stable's trailing sum
    is keyed by (`histograms.ordinal`), made once per key like `_Bounds`."""

    def __missing__(self, key: int) -> int:
        made = self[key] = ordinal(_BOUNDS[key])
        return made


ORDINALS: Final = _Ordinals({key: ordinal(bound) for key, bound in _BOUNDS.items()})
# ... and back, for the layout's bounds (any other ordinal is worked out: `bound_of`)
_BY_ORDINAL: Final = {made: _BOUNDS[key] for key, made in ORDINALS.items()}


def bound_of(key: int) -> float:
    """``from_ordinal(key)``, looked up for the bounds of the sketches' layout."""
    bound = _BY_ORDINAL.get(key)
    return from_ordinal(key) if bound is None else bound


def ordinal_of(bound: float) -> int:
    """``ordinal(bound)``, looked up for the bounds of the sketches' layout."""
    made = _ORDINAL_OF.get(bound)
    return ordinal(bound) if made is None else made


_ORDINAL_OF: Final = {bound: made for made, bound in _BY_ORDINAL.items()}


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
        bins = self.bins
        keys = sorted(bins)
        return tuple(zip(map(_bound_of, keys), map(bins.__getitem__, keys), strict=True))

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
