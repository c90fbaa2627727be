"""The A/B test's statistics (`splitproxy.rollout.abtest`): validity, symmetry, verdicts."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from splitproxy.rollout.abtest import (
    DEFAULT_MAX_DURATION,
    DEFAULT_MIN_DURATION,
    HOUR,
    ArmCounts,
    ConversionTest,
    SampleRatioTest,
    judge,
    split_ab_alpha,
)

ALPHA = split_ab_alpha(0.01)

splits = st.integers(min_value=5, max_value=95).map(lambda pct: pct / 100)


@st.composite
def arms(draw: st.DrawFn, max_users: int = 10_000_000) -> ArmCounts:
    users = draw(st.integers(0, max_users))
    return ArmCounts(users, draw(st.integers(0, users)))


def fed(split: float, candidate: ArmCounts, stable: ArmCounts) -> ConversionTest:
    test = ConversionTest(split)
    test.update(candidate, stable)
    return test


def srm_fed(split: float, candidate_users: int, stable_users: int) -> SampleRatioTest:
    test = SampleRatioTest(split)
    test.update(candidate_users, stable_users)
    return test


def mirrored(interval: tuple[float, float]) -> tuple[float, float]:
    """The lift interval seen from the other variant: ratio r becomes 1/r."""
    low, high = interval
    return 1 / (1 + high) - 1, 1 / (1 + low) - 1


# --- the conversion test -------------------------------------------------------------------


@given(splits, arms(), arms())
def test_e_values_are_non_negative_and_finite_even_at_millions_of_users(
    split: float, candidate: ArmCounts, stable: ArmCounts
) -> None:
    test = fed(split, candidate, stable)
    assert math.isfinite(test.log_e) or test.log_e == -math.inf
    assert test.e_value >= 0.0
    srm = srm_fed(split, candidate.users, stable.users)
    assert math.isfinite(srm.log_e)
    assert srm.e_value >= 0.0


@given(splits, arms(), arms())
def test_swapping_the_variants_mirrors_the_decision_and_the_interval(
    split: float, candidate: ArmCounts, stable: ArmCounts
) -> None:
    test = fed(split, candidate, stable)
    swapped = fed(1 - split, stable, candidate)
    bar = -math.log(ALPHA.conversion)
    assume(abs(test.log_e - bar) > 1e-6)  # float noise may tip a value sitting on the bar

    assert swapped.log_e == pytest.approx(test.log_e, rel=1e-9, abs=1e-9)
    flip = {"candidate": "stable", "stable": "candidate", None: None}
    assert swapped.decision(ALPHA.conversion) == flip[test.decision(ALPHA.conversion)]
    interval = test.lift_interval(ALPHA.conversion)
    other = swapped.lift_interval(ALPHA.conversion)
    if interval is None:
        assert other is None
        return
    assert other is not None
    # the ends are found by bisection to 1e-5 in log r, on each side independently
    assert [math.log1p(v) for v in other] == pytest.approx(
        [math.log1p(v) for v in mirrored(interval)], abs=3e-5
    )


@given(splits, arms(), arms())
def test_the_lift_interval_contains_the_estimate_and_excludes_zero_iff_a_winner(
    split: float, candidate: ArmCounts, stable: ArmCounts
) -> None:
    test = fed(split, candidate, stable)
    interval = test.lift_interval(ALPHA.conversion)
    lift = test.lift
    if lift is None:
        assert interval is None
        assert test.decision(ALPHA.conversion) is None
        return
    assert interval is not None
    low, high = interval
    assert -1.0 <= low <= high
    if math.isfinite(lift) and -0.999 < lift < 1e5:  # inside the searched range of ratios
        assert low <= lift <= high
    excludes_zero = not low <= 0.0 <= high
    assert excludes_zero == (test.decision(ALPHA.conversion) is not None)


@given(splits, arms(), arms())
def test_the_state_survives_a_json_round_trip(
    split: float, candidate: ArmCounts, stable: ArmCounts
) -> None:
    test = fed(split, candidate, stable)
    back = ConversionTest.from_dict(json.loads(json.dumps(test.to_dict())))
    assert (back.split, back.grid) == (test.split, test.grid)
    assert (back.candidate, back.stable) == (test.candidate, test.stable)
    assert back.log_e == test.log_e
    assert back.lift_interval(0.01) == test.lift_interval(0.01)

    srm = srm_fed(split, candidate.users, stable.users)
    srm_back = SampleRatioTest.from_dict(json.loads(json.dumps(srm.to_dict())))
    assert srm_back.log_e == srm.log_e
    assert srm_back.concentration == srm.concentration


def test_cumulative_and_incremental_counts_give_the_same_test() -> None:
    by_batch, by_total = ConversionTest(0.5), ConversionTest(0.5)
    cand, stable = [0, 0], [0, 0]
    rng = random.Random(3)
    for _ in range(20):
        dc = ArmCounts(rng.randint(0, 500), rng.randint(0, 30))
        ds = ArmCounts(rng.randint(0, 500), rng.randint(0, 30))
        by_batch.update(dc, ds)
        cand = [cand[0] + dc.users, cand[1] + dc.converted]
        stable = [stable[0] + ds.users, stable[1] + ds.converted]
        by_total.update_totals(ArmCounts(*cand), ArmCounts(*stable))
    assert by_total.log_e == by_batch.log_e
    assert by_total.candidate == ArmCounts(*cand)


def test_counts_that_cannot_happen_are_refused() -> None:
    test = ConversionTest(0.5)
    test.update_totals(ArmCounts(100, 5), ArmCounts(100, 5))
    with pytest.raises(ValueError, match="went down"):
        test.update_totals(ArmCounts(90, 5), ArmCounts(100, 5))
    with pytest.raises(ValueError, match="more users converted"):
        test.update_totals(ArmCounts(100, 101), ArmCounts(100, 5))
    with pytest.raises(ValueError, match="negative"):
        test.update(ArmCounts(-1, 0), ArmCounts(0, 0))
    with pytest.raises(ValueError, match="split"):
        ConversionTest(1.0)
    srm = srm_fed(0.5, 10, 10)
    with pytest.raises(ValueError, match="went down"):
        srm.update_totals(9, 10)


def test_a_ten_percent_lift_is_found_and_its_interval_covers_it() -> None:
    test = fed(0.5, ArmCounts(200_000, 11_000), ArmCounts(200_000, 10_000))
    assert test.decision(ALPHA.conversion) == "candidate"
    assert test.lift == pytest.approx(0.10)
    low, high = test.lift_interval(ALPHA.conversion) or (0.0, 0.0)
    assert 0.0 < low < 0.10 < high < 0.25


def test_an_unequal_split_is_accounted_for() -> None:
    # 20 % of the users on the candidate and the same rate per user: no lift, no winner
    test = fed(0.2, ArmCounts(200_000, 10_000), ArmCounts(800_000, 40_000))
    assert test.lift == pytest.approx(0.0)
    assert test.decision(ALPHA.conversion) is None
    # the same conversion counts at a 50 % split would be a four-fold difference
    assert fed(0.5, ArmCounts(500_000, 10_000), ArmCounts(500_000, 40_000)).decision(0.01) == (
        "stable"
    )


def test_the_interval_narrows_at_millions_of_users() -> None:
    test = fed(0.5, ArmCounts(10_000_000, 500_000), ArmCounts(10_000_000, 500_000))
    low, high = test.lift_interval(ALPHA.conversion) or (-1.0, 1.0)
    assert -0.02 < low < 0.0 < high < 0.02
    assert test.decision(ALPHA.conversion) is None


def test_no_difference_rarely_crosses_the_bar_however_often_it_is_looked_at() -> None:
    # A/A: each converted user is the candidate's with the split's probability; looked at
    # after every batch of 1..60 conversions, 400 tests of 100 looks each
    rng = random.Random(7)
    alpha = 0.1
    crossed = 0
    for _ in range(400):
        test = ConversionTest(0.3)
        for _ in range(100):
            n = rng.randint(1, 60)
            x = sum(rng.random() < 0.3 for _ in range(n))
            test.update(ArmCounts(0, x), ArmCounts(0, n - x))
            if test.decision(alpha) is not None:
                crossed += 1
                break
    assert crossed / 400 <= alpha


# --- the SRM check ---------------------------------------------------------------------------


@given(splits, st.integers(0, 20_000_000))
def test_the_srm_check_stays_quiet_on_an_exact_split(split: float, users: int) -> None:
    candidate = round(split * users)
    assert not srm_fed(split, candidate, users - candidate).rejects(ALPHA.srm)


def test_the_srm_check_fires_on_a_55_45_split_with_enough_users_only() -> None:
    assert srm_fed(0.5, 5_500, 4_500).rejects(ALPHA.srm)
    assert not srm_fed(0.5, 55, 45).rejects(ALPHA.srm)
    assert srm_fed(0.2, 2_500, 7_500).rejects(ALPHA.srm)  # 25 % against a 20 % split
    assert srm_fed(0.5, 52_000, 48_000).rejects(ALPHA.srm)


# --- the verdict -------------------------------------------------------------------------------


def both_tests(
    candidate: ArmCounts, stable: ArmCounts, split: float = 0.5
) -> tuple[ConversionTest, SampleRatioTest]:
    return fed(split, candidate, stable), srm_fed(split, candidate.users, stable.users)


def test_a_winner_waits_for_min_duration() -> None:
    conversion, srm = both_tests(ArmCounts(200_000, 11_000), ArmCounts(200_000, 10_000))
    early = judge(conversion, srm, started=1000.0, now=1000.0 + 5 * HOUR)
    assert early.outcome == "running"
    assert not early.final
    assert "candidate ahead" in early.reason
    assert "19.0h to go" in early.reason

    later = judge(conversion, srm, started=1000.0, now=1000.0 + DEFAULT_MIN_DURATION)
    assert later.outcome == "candidate_wins"
    assert later.winner == "candidate"
    assert later.final
    assert later.lift == pytest.approx(0.10)
    assert later.lift_interval is not None
    assert later.lift_interval[0] > 0.0
    assert later.candidate == ArmCounts(200_000, 11_000)
    assert later.stable == ArmCounts(200_000, 10_000)
    assert later.e_value >= 1 / ALPHA.conversion
    assert "+10.00%" in later.reason


def test_a_worse_candidate_makes_stable_the_winner() -> None:
    conversion, srm = both_tests(ArmCounts(200_000, 9_000), ArmCounts(200_000, 10_000))
    verdict = judge(conversion, srm, started=0.0, now=2 * DEFAULT_MIN_DURATION)
    assert verdict.outcome == "stable_wins"
    assert verdict.winner == "stable"
    assert verdict.lift == pytest.approx(-0.10)


def test_without_a_difference_the_test_ends_at_max_duration_and_keeps_stable() -> None:
    conversion, srm = both_tests(ArmCounts(200_000, 10_050), ArmCounts(200_000, 10_000))
    running = judge(conversion, srm, started=0.0, now=DEFAULT_MAX_DURATION - 1)
    assert running.outcome == "running"
    done = judge(conversion, srm, started=0.0, now=DEFAULT_MAX_DURATION)
    assert done.outcome == "no_difference"
    assert done.winner is None
    assert "stable is kept" in done.reason


def test_a_sample_ratio_mismatch_overrides_a_winner() -> None:
    # 55/45 users at a 50 % split with the same rate per user: conversions look 22 % better
    conversion, srm = both_tests(ArmCounts(110_000, 5_500), ArmCounts(90_000, 4_500))
    assert conversion.decision(ALPHA.conversion) == "candidate"
    verdict = judge(conversion, srm, started=0.0, now=0.0)  # at any time
    assert verdict.outcome == "srm"
    assert verdict.final
    assert verdict.winner is None
    assert "55.00% candidate" in verdict.reason


def test_the_verdict_is_plain_json() -> None:
    conversion, srm = both_tests(ArmCounts(1_000, 0), ArmCounts(1_000, 3))  # lift −100 %
    data = judge(conversion, srm, started=0.0, now=HOUR).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["candidate"] == {"users": 1_000, "converted": 0, "rate": 0.0}
    empty = judge(ConversionTest(0.5), SampleRatioTest(0.5), started=0.0, now=0.0).to_dict()
    assert empty["lift"] is None
    assert empty["outcome"] == "running"
    json.dumps(empty, allow_nan=False)


def test_the_alpha_split_and_the_judges_preconditions() -> None:
    assert ALPHA.conversion == pytest.approx(0.009)
    assert ALPHA.srm == pytest.approx(0.001)
    assert ALPHA.conversion + ALPHA.srm == pytest.approx(ALPHA.total)
    with pytest.raises(ValueError, match="split"):
        judge(ConversionTest(0.5), SampleRatioTest(0.2), started=0.0, now=0.0)
    with pytest.raises(ValueError, match="min_duration"):
        judge(
            ConversionTest(0.5),
            SampleRatioTest(0.5),
            started=0.0,
            now=0.0,
            min_duration=2 * DEFAULT_MAX_DURATION,
        )


def test_an_interval_end_nothing_rejects_is_shown_unbounded() -> None:
    from splitproxy.rollout.abtest import _lift_text
    from splitproxy.rollout.sequential import BOUND_FAR

    far = math.exp(BOUND_FAR) - 1.0
    assert _lift_text(2.0, (-0.5, far)) == "lift +200.00% (interval -50.00% to +∞)"
    assert _lift_text(-0.5, (math.exp(-BOUND_FAR) - 1.0, 0.1)) == (
        "lift -50.00% (interval -100% to +10.00%)"
    )
