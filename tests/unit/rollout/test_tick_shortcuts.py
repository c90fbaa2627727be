"""The controller tick's shortcuts change no number: the cached e-values equal a fresh
computation bit for bit, and the windows' backward scan returns what a full scan returns."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.rollout.evidence import StepWindow
from splitproxy.rollout.histograms import (
    hist_merge,
    hist_quantile,
    hist_quantile_from,
    hist_quantiles,
)
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import (
    AttributionTest,
    PathClassTests,
    RateGuard,
    logsumexp,
)
from splitproxy.rollout.sketch import _GAMMA, LatencySketch
from splitproxy.rollout.windows import Window

P = st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.0, 1.0])
UPDATE = st.tuples(P, st.integers(0, 30), st.integers(0, 300))
# an update, a fresh start of the comparisons, or an update of the pooled test alone
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), UPDATE, st.sampled_from(["/a", "/b", "/c", "~other"])),
        st.tuples(st.just("restart"), UPDATE, st.just("")),
        st.tuples(st.just("pooled"), UPDATE, st.just("")),
    ),
    max_size=40,
)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _naive_logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top in (-math.inf, math.inf):
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


@given(st.lists(st.floats(-800, 800) | st.sampled_from([-math.inf, math.inf]), max_size=12))
def test_logsumexp_is_the_plain_formula(values: list[float]) -> None:
    assert _same(logsumexp(values), _naive_logsumexp(values))
    assert _same(logsumexp(iter(values)), _naive_logsumexp(values))


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_cached_e_values_equal_a_fresh_computation(
    ops: list[tuple[str, tuple[float, int, int], str]],
) -> None:
    family = PathClassTests(3, factory=RecoveringTest)
    plain = AttributionTest()
    for kind, (p, x, y), name in ops:
        if kind == "restart":
            for test in family.tests():
                assert isinstance(test, RecoveringTest)
                test.restart()
        elif kind == "pooled":  # as `Evidence.fold` does: the pooled test updated directly
            family.pooled.update(p, x, y)
        else:
            family.update(p, x, y, name)
            plain.update(p, x, y)
        fresh = PathClassTests.from_dict(
            family.to_dict(), load=RecoveringTest.from_dict, factory=RecoveringTest
        )
        assert _same(family.log_e, fresh.log_e)
        for test, again in zip(family.tests(), fresh.tests(), strict=True):
            assert _same(test.log_e, again.log_e)
        assert _same(plain.log_e, AttributionTest.from_dict(plain.to_dict()).log_e)
        assert _same(plain.log_e, _naive_logsumexp([plain._log_w + v for v in plain._log_l]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)), max_size=40))
def test_the_guard_answers_as_its_formula(batches: list[tuple[int, int]]) -> None:
    guard = RateGuard(0.02, block=20, keep=4)
    for n, x in batches:
        guard.update(n + x, x)
        parts = [
            -math.log(k)
            - math.log(k + 1)
            + _naive_logsumexp([guard._log_g + e * a + (r - e) * b for a, b in guard._ab])
            for k, r, e in guard._comps
        ]
        want = _naive_logsumexp([*parts, math.log(1.0 / (guard._started + 1))]) if parts else 0.0
        assert _same(guard.log_e, want)


def test_a_histogram_bound_is_the_power_it_stands_for() -> None:
    sketch = LatencySketch()
    for value in (0.0001, 0.003, 0.02, 0.02, 0.5, 7.0, 100.0):
        sketch.add(value)
    for _ in range(2):  # the second time from the table of bounds
        bounds = [bound for bound, _ in sketch.histogram()]
        assert bounds == [_GAMMA**key for key in sorted(sketch.bins)]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 30), st.sampled_from([0.05, 0.5, None])), min_size=1, max_size=60
    ),
    st.floats(0, 35),
    st.floats(0, 35) | st.none(),
)
def test_the_backward_scan_returns_what_a_full_scan_returns(
    requests: list[tuple[float, float | None]], since: float, until: float | None
) -> None:
    window = Window(capacity=8)
    now = 0.0
    for step, p in requests:
        now += step / 10  # the clock moves on, sometimes within a bucket, sometimes not
        window.observe(now, CANDIDATE if step > 15 else STABLE, 0.01, False, p)
    want = [
        b
        for b in window._buckets
        if b.start >= since and (until is None or b.start + window.resolution <= until)
    ]
    assert list(window.buckets(since, until)) == want


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 3), st.sampled_from([0.05, 0.5, None]), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([1.0, 0.25]),
)
def test_a_tick_after_tick_read_of_the_newest_buckets_is_what_a_full_scan_returns(
    steps: list[tuple[float, float | None, bool]], resolution: float
) -> None:
    """The controller's read, ``buckets(last, now)`` then ``last`` = the end of the last bucket
    returned, each tick: mostly the newest bucket alone or none (picked without the scan),
    sometimes several or one not yet complete."""
    window = Window(capacity=8, resolution=resolution)
    now = last = 0.0
    for step, p, tick in steps:
        now += step
        window.observe(now, STABLE, 0.01, False, p)
        if not tick:
            continue
        until = now + step / 2  # the tick comes a little later, or within the same bucket
        want = [b for b in window._buckets if b.start >= last and b.start + resolution <= until]
        got = window.buckets(last, until)
        assert got == want
        if got:
            last = got[-1].start + resolution


@given(
    st.dictionaries(st.sampled_from([0.01 * 1.04**k for k in range(60)]), st.integers(-3, 50)),
    st.lists(st.floats(0, 1), max_size=4),
)
def test_quantiles_sorted_once_are_the_quantiles(hist: dict[float, int], qs: list[float]) -> None:
    assert hist_quantiles(hist, qs) == {q: hist_quantile(hist, q) for q in qs}


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([0.001, 0.02, 0.3, 0.9, 0.9999999999999999]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 80)), max_size=40),
)
def test_the_guards_written_out_e_value_is_its_components_bit_for_bit(
    cap: float, batches: list[tuple[int, int]]
) -> None:
    guard = RateGuard(cap, block=20, keep=4)
    for n, x in batches:
        guard.update(n + x, x)
        comps = [guard._comp_log_e(c) for c in guard._comps]
        want = logsumexp([*comps, math.log(1.0 / (guard._started + 1))]) if comps else 0.0
        assert _same(guard.log_e, want)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.integers(-40, 40), st.integers(1, 5)), max_size=8), max_size=20),
    st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_a_windows_kept_bounds_give_the_quantile_sorted_afresh(
    ticks: list[list[tuple[int, int]]], q: float
) -> None:
    window = StepWindow()
    for tick in ticks:
        hist_merge(window.latency, [(1.1**key, count) for key, count in tick])
        assert window.latency_bounds() == sorted(window.latency, reverse=True)
        total = sum(window.latency.values())
        if total:
            got = hist_quantile_from(window.latency, window.latency_bounds(), total, q)
            assert got == hist_quantile(window.latency, q)
