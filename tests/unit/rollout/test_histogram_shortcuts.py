"""The histogram shortcuts of the tick give the answers of the plain computations.

- `hist_quantile` / `hist_quantiles` walk down from the largest bound (p95 and p99 lie in the
  top buckets): for any histogram and any q, the bound found walking up from the smallest;
- `LatencySketch.histogram` reads the bounds from a table made at import: for any latencies,
  the pairs ``(γ^key, count)`` in key order, bit for bit;
- `slow_counts` counts the buckets above several limits in one pass: for any histogram (in
  any order) and limits, each limit's `hist_above`, the zeros left out, in the limits' order;
  a sketch's bins read through `sketch.BOUNDS` and `sketch.ORDINALS` (the tally's reading, the
  bins' own order) are `histogram`'s pairs and their ordinals;
- `thresholds.shown_above` keeps each line's alternatives and their logs: for any counts, line
  and level, the verdict and the e-value computed afresh, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from splitproxy.rollout import sketch
from splitproxy.rollout.histograms import (
    hist_above,
    hist_quantile,
    hist_quantiles,
    ordinal,
    slow_counts,
)
from splitproxy.rollout.sequential import RateGuard, guard_rates, logsumexp
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.thresholds import MULTIPLIERS, shown_above


def walking_up(hist: Mapping[float, int], q: float) -> float | None:
    """The quantile as the tick computed it before: the first bound, walking up from the
    smallest, whose cumulative count reaches ``q`` × the total."""
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


HISTS = st.dictionaries(st.floats(1e-6, 1e5, allow_nan=False), st.integers(1, 10_000), max_size=60)
QS = st.one_of(
    st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]),
    st.floats(0.0, 1.0),
    st.floats(1.0, 2.0),  # past the top: the largest bound, as before
)


@settings(max_examples=400, deadline=None)
@given(HISTS, QS)
def test_a_quantile_from_the_top_is_the_one_from_the_bottom(
    hist: dict[float, int], q: float
) -> None:
    assert hist_quantile(hist, q) == walking_up(hist, q)


@settings(max_examples=200, deadline=None)
@given(HISTS, st.lists(QS, max_size=4))
def test_quantiles_at_once_are_each_quantile(hist: dict[float, int], qs: list[float]) -> None:
    assert hist_quantiles(hist, qs) == {q: walking_up(hist, q) for q in qs}


LIMITS = [0.001, 0.002, 0.0021, 0.05, 0.7, 3.0]  # bounds and limits: ties both ways


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(LIMITS), st.integers(1, 50)), max_size=12),
    st.lists(st.tuples(QS, st.sampled_from([*LIMITS, 0.0, 0.0021, 0.7, 9.0])), max_size=4),
)
def test_slow_counts_in_one_pass_are_each_limits_count(
    pairs: list[tuple[float, int]], limits: list[tuple[float, float]]
) -> None:
    lowest = min((c for _, c in limits), default=0.0)
    want = [(q, n) for q, c in limits if (n := hist_above(pairs, c))]
    assert slow_counts(pairs, limits, lowest) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-7, 2e5), max_size=60), st.lists(st.integers(-2000, 2000), max_size=3))
def test_a_sketch_s_bins_read_through_the_tables_are_its_histogram(
    latencies: list[float], by_hand: list[int]
) -> None:
    """What the tally reads (each bin's key through `sketch.BOUNDS` and `sketch.ORDINALS`): the
    histogram's very pairs (bounds bit for bit, keys outside the layout set by hand included),
    and the ordinals of those bounds."""
    s = LatencySketch()
    for value in latencies:
        s.add(value)
    for key in by_hand:
        s.bins[key] = s.bins.get(key, 0) + 1
    pairs = [(sketch.BOUNDS[k], n) for k, n in s.bins.items()]
    assert sorted(pairs) == list(s.histogram())
    assert [b for b, _ in pairs] == [sketch._GAMMA**k for k in s.bins]
    assert [sketch.ORDINALS[k] for k in s.bins] == [ordinal(b) for b, _ in pairs]


def test_ties_at_the_rank_take_the_lower_bound() -> None:
    # cumulative counts 5, 10: the median (rank 5) is reached at 0.1 exactly, not at 0.2
    assert hist_quantile({0.1: 5, 0.2: 5}, 0.5) == 0.1
    assert hist_quantile({0.1: 5, 0.2: 5}, 0.51) == 0.2
    assert hist_quantile({0.3: 1}, 0.0) == 0.3


LATENCIES = st.lists(
    st.one_of(st.floats(1e-7, 2e5, allow_nan=False), st.sampled_from([0.0, 1e-6, 1e5, 3e5])),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(LATENCIES)
def test_a_histogram_has_the_bounds_computed_afresh(latencies: list[float]) -> None:
    s = LatencySketch()
    for v in latencies:
        s.add(v)
    expected = tuple((sketch._GAMMA**key, s.bins[key]) for key in sorted(s.bins))
    assert s.histogram() == expected
    assert sum(n for _, n in s.histogram()) == len(latencies)


def test_a_bin_outside_the_layout_still_gets_its_bound() -> None:
    s = LatencySketch()
    s.bins = {sketch._MAX_KEY + 3: 2, sketch._MIN_KEY: 1}
    s.count = 3
    assert s.histogram() == (
        (sketch._GAMMA**sketch._MIN_KEY, 1),
        (sketch._GAMMA ** (sketch._MAX_KEY + 3), 2),
    )


def shown_above_afresh(x: int, n: int, rate: float, alpha: float) -> tuple[bool, float]:
    """`thresholds.shown_above` as it was, each alternative's logs computed on every call."""
    if n <= 0 or x <= rate * n:
        return False, 1.0
    if rate <= 0.0:
        return True, math.inf
    if rate >= 1.0:
        return False, 1.0
    alts = guard_rates(rate, MULTIPLIERS)
    if not alts:
        return False, 1.0
    w = -math.log(len(alts))
    log_e = logsumexp(
        w + x * math.log(q / rate) + (n - x) * math.log((1 - q) / (1 - rate)) for q in alts
    )
    e = math.exp(log_e) if log_e < 700 else math.inf
    return e >= 1 / alpha, e


@example(1, 1, 0.9999999999999999, 0.01)  # no float between the line and 1: never shown
@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.one_of(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.5, 0.99, 1.0]), st.floats(0.0, 1.0)),
    st.sampled_from([0.01, 0.001, 1e-5]),
)
def test_a_threshold_shown_with_kept_logs_is_shown_afresh(
    x: int, n: int, rate: float, alpha: float
) -> None:
    x = min(x, n)
    assert outcome(shown_above, x, n, rate, alpha) == outcome(shown_above_afresh, x, n, rate, alpha)


def outcome(f: Callable[[int, int, float, float], tuple[bool, float]], *args: Any) -> object:
    """The answer, or the error (neither raises for any line in [0, 1]: compared all the
    same, so an error would have to be the same error)."""
    try:
        return f(*args)
    except ValueError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("cap", [0.9999999999999999, 0.999999999999999, 0.5])
def test_a_line_a_hair_under_one_is_never_crossed_and_never_crashes(cap: float) -> None:
    """A guard or threshold at 99.99999999999999 % (valid in a config: below 100 %) had an
    alternative rounded to 1.0 and raised "math domain error" in the tick."""
    guard = RateGuard(cap)
    for _ in range(50):
        guard.update(100, 100)  # every request failed: still not above such a line
    assert math.isfinite(guard.log_e) or guard.log_e == -math.inf
    assert RateGuard.from_dict(guard.to_dict()).e_value == guard.e_value
    shown, e = shown_above(1000, 1000, cap, 0.01)
    assert shown is (cap == 0.5)  # 1,000 errors in 1,000 show a 50 % line crossed, never those
    assert e >= 0.0
