"""Sparse latency histograms: ``{upper bound in seconds: count}`` (pure).

Both versions' histograms come from one bucket layout (see `sketch.LatencySketch.histogram`),
so adding, subtracting and comparing them bucket by bucket is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def hist_add(into: dict[float, int], hist: Iterable[tuple[float, int]], sign: int = 1) -> None:
    """Add (``sign=-1``: subtract) ``hist``'s counts into ``into``; empty buckets go."""
    get = into.get
    for bound, count in hist:
        if count:
            left = get(bound, 0) + sign * count
            if left:
                into[bound] = left
            else:
                into.pop(bound, None)


def hist_quantile(hist: Mapping[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (None when empty)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bound in sorted(hist):
        seen += hist[bound]
        if seen >= rank:
            return bound
    return max(hist)


def hist_quantiles(hist: Mapping[float, int], qs: Iterable[float]) -> dict[float, float | None]:
    """`hist_quantile` for each of ``qs`` (the same answers), sorting the buckets once."""
    total = sum(hist.values())
    if total <= 0:
        return dict.fromkeys(qs)
    ordered = sorted(hist)
    out: dict[float, float | None] = {}
    for q in qs:
        rank = q * total
        seen = 0
        found: float | None = None
        for bound in ordered:
            seen += hist[bound]
            if seen >= rank:
                found = bound
                break
        out[q] = found if found is not None else ordered[-1]
    return out


def hist_above(hist: Iterable[tuple[float, int]], threshold: float) -> int:
    """Requests in buckets above ``threshold`` (a bucket bound): slower than it."""
    return sum(count for bound, count in hist if bound > threshold)
