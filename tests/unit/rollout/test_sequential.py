"""The anytime-valid tests of `splitproxy.rollout.sequential`: validity, power, bookkeeping."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.sequential import (
    DEFAULT_GRID,
    AttributionTest,
    PathClassTests,
    RateGuard,
    events_needed,
    guard_rates,
    kl_bernoulli,
    logsumexp,
    lower_confidence_bound,
    mean_log_e,
    q_of,
    split_alpha,
)

probabilities = st.integers(min_value=1, max_value=9999).map(lambda bp: bp / 10_000)
batches = st.lists(
    st.tuples(probabilities, st.integers(0, 30), st.integers(0, 300)), min_size=0, max_size=12
)


def fed(batch: list[tuple[float, int, int]]) -> AttributionTest:
    test = AttributionTest()
    for p, x, y in batch:
        test.update(p, x, y)
    return test


# --- helpers -------------------------------------------------------------------------------


def test_logsumexp() -> None:
    assert logsumexp([]) == -math.inf
    assert logsumexp([0.0, 0.0]) == pytest.approx(math.log(2))
    assert logsumexp([1000.0, 1000.0]) == pytest.approx(1000 + math.log(2))
    assert logsumexp([-math.inf, 0.0]) == 0.0
    assert logsumexp([-math.inf]) == -math.inf


def test_q_and_kl() -> None:
    assert q_of(1.0, 0.05) == pytest.approx(0.05)
    assert q_of(4.0, 0.05) == pytest.approx(0.2 / 1.15)
    assert kl_bernoulli(0.05, 0.05) == 0.0
    # the reference's sizing example: p = 0.05, r = 4 -> KL ≈ 0.101, m* ≈ 81 events
    assert kl_bernoulli(q_of(4, 0.05), 0.05) == pytest.approx(0.101, abs=0.002)
    assert events_needed(4, 0.05, 0.0045, 1 / 16) == pytest.approx(81, abs=2)


# --- the attribution e-process ----------------------------------------------------------------


def test_starts_at_one_and_ignores_uninformative_events() -> None:
    test = AttributionTest()
    assert test.e_value == 1.0
    assert test.log_e == pytest.approx(0.0)
    test.update(0.0, 0, 10)  # p = 0: everything on stable, says nothing
    test.update(1.0, 10, 0)  # p = 1: everything on the candidate
    test.update(0.5, 0, 0)
    assert test.e_value == pytest.approx(1.0)
    assert test.events == 0
    assert test.counts() == {}


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="negative"):
        AttributionTest().update(0.5, -1, 0)
    with pytest.raises(ValueError, match="above 1"):
        AttributionTest(grid=(0.5, 2.0))


def test_candidate_events_raise_it_and_stable_events_lower_it() -> None:
    test = AttributionTest()
    test.update(0.1, 5, 0)
    assert test.e_value > 1
    low = AttributionTest()
    low.update(0.1, 0, 50)
    assert low.e_value < 1


@given(batches)
def test_a_batch_equals_its_events_one_by_one(batch: list[tuple[float, int, int]]) -> None:
    whole = fed(batch)
    single = AttributionTest()
    for p, x, y in batch:
        for _ in range(x):
            single.update(p, 1, 0)
        for _ in range(y):
            single.update(p, 0, 1)
    assert whole.log_e == pytest.approx(single.log_e, abs=1e-6)
    assert whole.counts() == single.counts()


@given(batches, probabilities)
def test_is_a_martingale_under_the_null(batch: list[tuple[float, int, int]], p: float) -> None:
    """Exactly: E[E_next | past] = E_now when the next event is the candidate's w.p. p."""
    before = fed(batch)
    on_candidate, on_stable = fed(batch), fed(batch)
    on_candidate.update(p, 1, 0)
    on_stable.update(p, 0, 1)
    expected = p * on_candidate.e_value + (1 - p) * on_stable.e_value
    assert expected == pytest.approx(before.e_value, rel=1e-9)


def test_mean_stays_at_most_one_in_simulation() -> None:
    rng = random.Random(7)
    weights = (0.05, 0.1, 0.2, 0.5)
    total = 0.0
    paths = 2000
    for _ in range(paths):
        test = AttributionTest()
        for p in weights:  # 20 events per step, the weight rising as in a rollout
            x = sum(rng.random() < p for _ in range(20))
            test.update(p, x, 20 - x)
        total += test.e_value
    assert total / paths <= 1.1  # the mean is exactly 1; 2000 paths, heavy right tail


def test_ville_bound_holds_under_peeking() -> None:
    """Look after every event: the chance of ever reaching 1/α stays below α."""
    rng = random.Random(11)
    alpha = 0.05
    bar = math.log(1 / alpha)
    crossed = 0
    paths = 300
    for _ in range(paths):
        test = AttributionTest()
        for i in range(1000):
            p = (0.05, 0.1, 0.2, 0.5)[min(3, i // 250)]
            cand = rng.random() < p
            test.update(p, int(cand), int(not cand))
            if test.log_e >= bar:
                crossed += 1
                break
    assert crossed / paths <= alpha


def test_detects_a_fourfold_rate_about_as_fast_as_the_sizing_formula_says() -> None:
    rng = random.Random(3)
    alpha, p, r = 0.0045 / 2, 0.05, 4.0
    needed = events_needed(r, p, alpha, 1 / len(DEFAULT_GRID))
    times = []
    for _ in range(200):
        test = AttributionTest()
        q = q_of(r, p)
        for n in range(1, 2000):
            cand = rng.random() < q
            test.update(p, int(cand), int(not cand))
            if test.e_value >= 1 / alpha:
                times.append(n)
                break
    assert len(times) == 200
    median = sorted(times)[100]
    assert 0.5 * needed <= median <= 1.5 * needed


def test_time_varying_p_uses_each_events_own_p() -> None:
    """A base-rate burst while the weight changes (Simpson's trap) does not fool it."""
    rng = random.Random(5)
    alpha = 0.01
    crossed = 0
    for _ in range(300):
        test = AttributionTest()
        for minute in range(40):
            p = (0.05, 0.5)[minute % 2]
            burst = 10 if minute % 4 == 1 else 1  # bursts always at the high weight
            events = 20 * burst
            x = sum(rng.random() < p for _ in range(events))
            test.update(p, x, events - x)
            if test.e_value >= 1 / alpha:
                crossed += 1
                break
    assert crossed / 300 <= alpha * 2


def test_the_shifted_test_is_the_test_at_one_and_falls_with_r0() -> None:
    test = fed([(0.05, 3, 40), (0.1, 2, 30), (0.5, 9, 9)])
    assert test.log_e_at(1.0) == test.log_e  # bit for bit: the decision's own number
    shifted = [test.log_e_at(r0) for r0 in (0.25, 0.5, 0.99, 1.01, 2.0, 4.0)]
    assert shifted == sorted(shifted, reverse=True)
    assert test.log_e_at(1.0 + 1e-9) == pytest.approx(test.log_e, abs=1e-6)
    assert AttributionTest().log_e_at(3.0) == 0.0  # no events: e = 1 for every r0


@settings(max_examples=300, deadline=None)
@given(batches, st.sampled_from([0.001, 0.0045, 0.01, 0.05]))
def test_the_lower_bound_is_above_one_exactly_when_the_test_rejects(
    batch: list[tuple[float, int, int]], alpha: float
) -> None:
    test = fed(batch)
    bar = 1 / alpha
    low = test.lower_confidence_bound(alpha)
    assert (low > 1) == (test.e_value >= bar)
    if 0 < low < math.exp(12):  # a rejected ratio, rounded down from the least one that isn't
        assert math.exp(test.log_e_at(low)) >= bar * (1 - 1e-9)
        assert math.exp(test.log_e_at(low * 1.0001)) < bar


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(probabilities, st.integers(0, 12), st.integers(0, 60), st.sampled_from("abcd")),
        max_size=12,
    ),
    st.sampled_from([0, 2, 10]),
)
def test_the_family_s_lower_bound_inverts_the_family(
    batch: list[tuple[float, int, int, str]], slots: int
) -> None:
    family = PathClassTests(slots=slots)
    for p, x, y, name in batch:
        family.update(p, x, y, f"/{name}")
    assert family.log_e_at(1.0) == family.log_e
    alpha = 0.0045
    low = family.lower_confidence_bound(alpha)
    assert (low > 1) == (family.e_value >= 1 / alpha)
    if 0 < low < math.exp(12):
        assert math.exp(family.log_e_at(low * 1.0001)) < 1 / alpha


def test_a_rejection_by_one_path_class_gives_a_bound_above_one() -> None:
    family = PathClassTests(slots=10)
    for _ in range(40):
        family.update(0.1, 0, 9, "/ok")
        family.update(0.1, 1, 1, "/broken")
    alpha = 0.0045
    assert family.e_value >= 1 / alpha
    assert family.pooled.e_value < 1 / alpha  # the pooled test alone has not seen it
    assert family.pooled.lower_confidence_bound(alpha) < 1  # the pooled bound alone is not
    assert family.lower_confidence_bound(alpha) > 1


def test_the_one_sided_lower_bound_covers_the_true_ratio() -> None:
    rng = random.Random(5)
    covered = 0
    for _ in range(60):
        test = AttributionTest()
        q = q_of(3.0, 0.1)
        lows = []
        for _ in range(40):
            for _ in range(10):
                cand = rng.random() < q
                test.update(0.1, int(cand), int(not cand))
            lows.append(test.lower_confidence_bound(0.05))
        covered += max(lows) <= 3.0  # anytime: at every look
        assert lows[-1] > 1  # 400 events at a threefold rate: clearly worse
    assert covered >= 57


def test_lower_confidence_bound_ends() -> None:
    assert AttributionTest().lower_confidence_bound(0.01) == 0.0
    none_on_candidate = fed([(0.1, 0, 50)])
    assert none_on_candidate.lower_confidence_bound(0.01) == 0.0
    all_on_candidate = fed([(0.1, 30, 0)])
    assert 10 < all_on_candidate.lower_confidence_bound(0.01) < 1e5
    # a decreasing log e that rejects everything up to e^12 is reported there
    assert lower_confidence_bound(lambda r0: 50.0, 0.01) == pytest.approx(math.exp(12))
    # the bound rounds down and is above 1 even when r0 = 1 is only just rejected
    just = lower_confidence_bound(lambda r0: math.log(100.0) - 1e-12 * (r0 - 1), 0.01)
    assert just > 1


def test_round_trip() -> None:
    test = fed([(0.05, 3, 40), (0.1, 2, 30), (0.5, 9, 9)])
    again = AttributionTest.from_dict(test.to_dict())
    assert again.log_e == test.log_e
    assert again.counts() == test.counts()
    assert again.to_dict() == test.to_dict()


# --- the path-class family ---------------------------------------------------------------------


def test_path_classes_fill_slots_then_share_the_overflow() -> None:
    family = PathClassTests(slots=2)
    for name in ("/a", "/b", "/c", "/d"):
        family.update(0.1, 1, 5, name)
    assert set(family.classes) == {"/a", "/b", "~other"}
    assert family.classes["~other"].events == 12
    assert family.pooled.events == 24


def test_unused_slots_count_as_one() -> None:
    family = PathClassTests(slots=10)
    assert family.e_value == pytest.approx(1.0)
    family.update(0.1, 3, 0, "/a")
    one = family.classes["/a"].e_value
    pooled = family.pooled.e_value
    assert family.e_value == pytest.approx(0.5 * pooled + 0.5 * (one + 10) / 11)


def test_without_slots_the_family_is_the_pooled_test() -> None:
    family = PathClassTests(slots=0)
    family.update(0.1, 3, 10, "/a")
    assert family.classes == {}
    assert family.log_e == family.pooled.log_e


def test_one_broken_endpoint_shows_in_its_class_first() -> None:
    rng = random.Random(9)
    family = PathClassTests(slots=10)
    for _ in range(50):
        for k in range(10):
            bad = k == 7
            x = sum(rng.random() < (0.3 if bad else 0.05) for _ in range(10))
            family.update(0.05, x, 10 - x if not bad else 2, f"/e{k}")
    worst = family.worst_class()
    assert worst is not None
    assert worst[0] == "/e7"


def test_family_round_trip() -> None:
    family = PathClassTests(slots=3)
    family.update(0.1, 2, 9, "/a")
    family.update(0.2, 1, 4, "/b")
    again = PathClassTests.from_dict(family.to_dict())
    assert again.log_e == family.log_e
    assert again.to_dict() == family.to_dict()


def test_mean_log_e() -> None:
    assert mean_log_e([]) == 0.0
    assert math.exp(mean_log_e([math.log(2), math.log(4)])) == pytest.approx(3)


# --- the guard ---------------------------------------------------------------------------------


def test_guard_rates_stay_between_cap_and_one() -> None:
    assert guard_rates(0.05) == pytest.approx((0.1, 0.2, 0.4))
    for cap in (0.2, 0.4, 0.9):
        assert all(cap < q < 1 for q in guard_rates(cap))
    with pytest.raises(ValueError, match="cap"):
        guard_rates(1.0)


@given(
    cap=st.floats(min_value=0.001, max_value=0.5),
    before=st.integers(0, 2000),
    after=st.integers(0, 2000),
    alpha=st.floats(min_value=0.0001, max_value=0.2),
)
def test_the_guard_never_trips_on_a_single_error(
    cap: float, before: int, after: int, alpha: float
) -> None:
    guard = RateGuard(cap)
    guard.update(before + 1, 0)
    peak = guard.e_value
    guard.update(1, 1)
    peak = max(peak, guard.e_value)
    guard.update(after + 1, 0)
    assert max(peak, guard.e_value) < 1 / (0.1 * alpha)


@settings(max_examples=50)
@given(
    cap=st.sampled_from([0.01, 0.05, 0.2]),
    history=st.lists(st.tuples(st.integers(1, 200), st.integers(0, 20)), max_size=8),
    n=st.integers(1, 50),
)
def test_the_guard_is_a_supermartingale_at_the_cap(
    cap: float, history: list[tuple[int, int]], n: int
) -> None:
    """E[E_next] <= E_now for a batch of n requests at the worst null rate (= cap)."""

    def guarded() -> RateGuard:
        g = RateGuard(cap, block=20, keep=4)
        for requests, errors in history:
            g.update(requests, min(errors, requests))
        return g

    now = guarded().e_value
    expected = 0.0
    for x in range(n + 1):
        g = guarded()
        g.update(n, x)
        expected += math.comb(n, x) * cap**x * (1 - cap) ** (n - x) * g.e_value
    assert expected <= now * (1 + 1e-9)


def test_the_guard_trips_within_a_second_on_a_crash() -> None:
    guard = RateGuard(0.05)
    guard.update(50, 15)  # 50 candidate requests, 30 % errors
    assert guard.e_value >= 1000


def test_the_guard_stays_quick_after_hours_of_good_traffic() -> None:
    """The mixture over start times: a late crash is seen as fast as an early one."""
    rng = random.Random(1)
    guard = RateGuard(0.05)
    for _ in range(3600):  # an hour at 50 candidate requests per second, 0.5 % errors
        guard.update(50, sum(rng.random() < 0.005 for _ in range(50)))
    assert guard.e_value < 1
    ticks = 0
    while guard.e_value < 1000:
        guard.update(50, sum(rng.random() < 0.3 for _ in range(50)))
        ticks += 1
    assert ticks <= 3


def test_the_guard_keeps_a_bounded_state_and_round_trips() -> None:
    guard = RateGuard(0.05, keep=5)
    for _ in range(100):
        guard.update(60, 0)
    state = guard.to_dict()
    assert len(state["components"]) == 5
    again = RateGuard.from_dict(state)
    assert again.log_e == guard.log_e
    assert again.to_dict() == state
    with pytest.raises(ValueError, match="errors"):
        guard.update(1, 2)


# --- α accounting ------------------------------------------------------------------------------


def test_alpha_split_as_in_the_reference() -> None:
    s = split_alpha(0.01, error=True, latency=True, guard=True)
    assert (s.error, s.latency, s.guard) == pytest.approx((0.0045, 0.0045, 0.001))
    s = split_alpha(0.01, error=True, latency=False, guard=True)
    assert (s.error, s.latency, s.guard) == pytest.approx((0.009, 0.0, 0.001))
    s = split_alpha(0.01, error=False, latency=False, guard=True)
    assert (s.error, s.latency, s.guard) == pytest.approx((0.0, 0.0, 0.001))
    s = split_alpha(0.01, error=True, latency=True, guard=False)
    assert (s.error, s.latency, s.guard) == pytest.approx((0.005, 0.005, 0.0))
    assert s.error + s.latency + s.guard <= s.total
