"""Sparse latency histograms: ``{upper bound in seconds: count}`` (pure).

Both versions' histograms come from one bucket layout (see `sketch.LatencySketch.histogram`),
so adding, subtracting and comparing them bucket by bucket is exact.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeVar

_K = TypeVar("_K", int, float)  # a histogram's keys: bounds, or their ordinals (`trailing`)

_DOUBLE: Final = struct.Struct("<d")
_LONG: Final = struct.Struct("<q")
_MAGNITUDE: Final = (1 << 63) - 1


def ordinal(bound: float) -> int:
    """An integer that orders as ``bound`` does among floats: its IEEE-754 bits (a positive
    float's bits, read as an integer, grow with it), the negatives mirrored below zero (-0.0
    and 0.0 alike, as they are equal). For every float but NaN, ``ordinal(a) < ordinal(b)``
    exactly when ``a < b``, and `from_ordinal` gives ``bound`` back, bit for bit (-0.0 as
    0.0). Stable's
    trailing sum is keyed by these (`trailing`): an integer is hashed and compared without
    ``_Py_HashDouble``, and any bound a histogram was given keeps its exact value."""
    bits: int = _LONG.unpack(_DOUBLE.pack(bound))[0]
    return bits if bits >= 0 else -(bits & _MAGNITUDE)


def from_ordinal(key: int) -> float:
    """The float whose `ordinal` is ``key``."""
    if key >= 0:
        value: float = _DOUBLE.unpack(_LONG.pack(key))[0]
        return value
    return -_DOUBLE.unpack(_LONG.pack(-key))[0]  # type: ignore[no-any-return]


def hist_add(into: dict[_K, int], hist: Iterable[tuple[_K, int]], sign: int = 1) -> None:
    """Add (``sign=-1``: subtract) ``hist``'s counts into ``into``; empty buckets go."""
    get = into.get
    for bound, count in hist:
        if count:
            left = get(bound, 0) + sign * count
            if left:
                into[bound] = left
            else:
                into.pop(bound, None)


def hist_merge(into: dict[float, int], hist: Iterable[tuple[float, int]]) -> None:
    """`hist_add` of positive counts into positive counts (no bucket can empty): the tick's
    path, without the check for an emptied bucket."""
    get = into.get
    for bound, count in hist:
        if count:
            into[bound] = get(bound, 0) + count


def hist_quantile(hist: Mapping[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (None when empty): the smallest
    bound whose cumulative count reaches ``q`` × the total. Counts are positive, as in every
    histogram here (`hist_add` drops the buckets it empties)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    return _from_top(hist, sorted(hist, reverse=True), total, q)


def hist_quantile_from(
    hist: Mapping[float, int], descending: list[float], total: int, q: float
) -> float:
    """`hist_quantile` given ``hist``'s bounds sorted largest first and its (positive) total."""
    return _from_top(hist, descending, total, q)


def hist_quantiles(hist: Mapping[_K, int], qs: Iterable[float]) -> dict[float, _K | None]:
    """`hist_quantile` for each of ``qs`` (the same answers), sorting the buckets once (keyed
    by bounds or by their ordinals alike: the same buckets, as they order alike)."""
    return hist_quantiles_from(hist, sorted(hist, reverse=True), qs)


def hist_quantiles_from(
    hist: Mapping[_K, int], descending: list[_K], qs: Iterable[float]
) -> dict[float, _K | None]:
    """`hist_quantiles` given ``hist``'s bounds sorted largest first."""
    total = sum(hist.values())
    if total <= 0:
        return dict.fromkeys(qs)
    return {q: _from_top(hist, descending, total, q) for q in qs}


def _from_top(hist: Mapping[_K, int], descending: list[_K], total: int, q: float) -> _K:
    """The smallest bound whose cumulative count (the total less the counts above it) reaches
    ``q * total``, walking down from the largest bound. The same bound as walking up and
    stopping at the first that reaches it (the counts are integers, so both cumulative sums
    are exact), but the tail quantiles the rollout asks for (p95, p99) lie a few buckets from
    the top, where walking up crosses nearly every bucket each tick."""
    rank = q * total
    seen = total  # the cumulative count up to and including ``bound``
    found = descending[0]  # the largest bound, if none reaches the rank (q > 1)
    for bound in descending:
        if seen < rank:
            break
        found = bound
        seen -= hist[bound]
    return found


def hist_above(hist: Iterable[tuple[float, int]], threshold: float) -> int:
    """Requests in buckets above ``threshold`` (a bucket bound): slower than it."""
    return sum(count for bound, count in hist if bound > threshold)


def slow_counts(
    hist: Iterable[tuple[float, int]], limits: Sequence[tuple[float, float]], lowest: float
) -> list[tuple[float, int]]:
    """``(q, hist_above(hist, c))`` for each ``(q, c)`` of ``limits`` whose count is not
    zero, in their order (``lowest``: the smallest ``c``): one pass over the buckets for all
    the limits, where most buckets lie below all of them and are passed over at once."""
    above = [0] * len(limits)
    for bound, count in hist:
        if bound > lowest:
            for j, (_, c) in enumerate(limits):
                if bound > c:
                    above[j] += count
    return [(limits[j][0], n) for j, n in enumerate(above) if n]
