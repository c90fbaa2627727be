"""The latency sketch: quantiles within 2 %, in bounded memory: `splitproxy.rollout.sketch`."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.rollout.sketch import (
    MAX_BINS,
    MAX_LATENCY,
    MIN_LATENCY,
    RELATIVE_ACCURACY,
    LatencySketch,
)

latencies = st.floats(min_value=MIN_LATENCY, max_value=MAX_LATENCY, allow_nan=False)
quantiles = st.floats(min_value=0.0, max_value=1.0)


def exact(values: list[float], q: float) -> float:
    """The nearest-rank quantile: the ⌈q·n⌉-th smallest value."""
    return sorted(values)[max(0, math.ceil(q * len(values)) - 1)]


@given(st.lists(latencies, min_size=1, max_size=300), quantiles)
def test_quantiles_are_within_two_percent_of_the_true_value(values: list[float], q: float) -> None:
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    estimate = sketch.quantile(q)
    assert estimate is not None
    truth = exact(values, q)
    assert abs(estimate - truth) <= RELATIVE_ACCURACY * truth


@given(
    st.lists(st.floats(min_value=1e-4, max_value=60.0), min_size=1, max_size=200),
    st.lists(st.floats(min_value=1e-4, max_value=60.0), min_size=1, max_size=200),
    quantiles,
)
def test_a_merge_answers_like_one_sketch_of_everything(
    a: list[float], b: list[float], q: float
) -> None:
    left, right, whole = LatencySketch(), LatencySketch(), LatencySketch()
    for v in a:
        left.add(v)
        whole.add(v)
    for v in b:
        right.add(v)
        whole.add(v)
    left.merge(right)
    assert left.count == len(a) + len(b)
    assert left.quantile(q) == whole.quantile(q)
    truth = exact(a + b, q)
    merged = left.quantile(q)
    assert merged is not None
    assert abs(merged - truth) <= RELATIVE_ACCURACY * truth


def test_a_sketch_stays_small_whatever_it_sees() -> None:
    sketch = LatencySketch()
    # 200 000 distinct values spread over the whole range, and beyond it
    for i in range(200_000):
        sketch.add(10 ** (-7 + 13 * i / 200_000))
    assert sketch.count == 200_000
    assert len(sketch.bins) <= MAX_BINS < 1000
    assert sketch.quantile(0.0) == pytest.approx(MIN_LATENCY, rel=RELATIVE_ACCURACY)
    assert sketch.quantile(1.0) == pytest.approx(MAX_LATENCY, rel=RELATIVE_ACCURACY)


def test_an_empty_sketch_has_no_quantiles_and_bad_quantiles_are_refused() -> None:
    sketch = LatencySketch()
    assert sketch.quantile(0.99) is None
    assert sketch.mean is None
    sketch.add(0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        sketch.quantile(1.5)


def test_the_histogram_lines_up_across_sketches() -> None:
    a, b = LatencySketch(), LatencySketch()
    for v in (0.010, 0.010, 0.200):
        a.add(v)
    b.add(0.0101)  # within the same 4 % bin as 10 ms
    bounds = [bound for bound, _ in a.histogram()]
    assert bounds == sorted(bounds)
    assert [n for _, n in a.histogram()] == [2, 1]
    assert b.histogram()[0][0] == a.histogram()[0][0]
    for (bound, _), v in zip(a.histogram(), (0.010, 0.200), strict=True):
        assert v <= bound < v * (1 + 2 * RELATIVE_ACCURACY + 0.001)


def test_count_above_a_threshold() -> None:
    sketch = LatencySketch()
    for ms in range(10, 101, 10):  # 10, 20, .. 100 ms
        sketch.add(ms / 1000)
    assert sketch.count_above(0.075) == 3  # 80, 90, 100 ms
    assert sketch.count_above(1.0) == 0
    assert sketch.count_above(0.0) == 10
    assert sketch.mean == pytest.approx(0.055)
