"""The statistics behind the field decisions: fresh starts, per-user counts, binomial tails."""

from __future__ import annotations

import math

import pytest

from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import AttributionTest
from splitproxy.rollout.thresholds import shown_above, window_alpha
from splitproxy.rollout.units import RecentUnits, UnitTable


def test_a_fresh_start_sheds_the_debt_the_test_from_the_start_keeps() -> None:
    plain, mixed = AttributionTest(), RecoveringTest()
    for test in (plain, mixed):
        test.update(0.1, 0, 2000)  # stable alone failing: far below 1
    mixed.restart()
    for test in (plain, mixed):
        test.update(0.1, 30, 60)  # then the candidate at 4.5 x stable
    assert plain.e_value < 1e-6
    assert mixed.e_value > 1 / 0.0045  # past the error family's bar at α = 1 %
    assert mixed.lower_confidence_bound(0.0045) > 1.0
    assert mixed.restarts == 1


def test_without_debt_a_fresh_start_costs_at_most_half_the_evidence() -> None:
    plain, mixed = AttributionTest(), RecoveringTest()
    for _ in range(5):
        for test in (plain, mixed):
            test.update(0.1, 3, 10)
        mixed.restart()
    assert mixed.log_e >= plain.log_e + math.log(0.5)


def test_a_recovering_test_saves_and_reads_back_and_reads_a_plain_test() -> None:
    mixed = RecoveringTest(keep=3)
    for i in range(6):
        mixed.update(0.05, i, 20)
        mixed.restart()
    again = RecoveringTest.from_dict(mixed.to_dict())
    assert again.log_e == pytest.approx(mixed.log_e)
    assert again.restarts == mixed.restarts
    old = AttributionTest()
    old.update(0.1, 4, 9)
    assert RecoveringTest.from_dict(old.to_dict()).first is not None
    assert RecoveringTest.from_dict(old.to_dict()).to_dict() == old.to_dict()


def test_a_user_counts_once_and_a_recent_users_table_forgets_after_its_window() -> None:
    table = UnitTable(cap=2)
    assert [table.first(u) for u in (1, 1, 2, 3, 2)] == [True, False, True, False, False]
    assert table.skipped == 1  # user 3 came when the table was full
    recent = RecentUnits(window=60.0)
    assert [recent.count(t, 9) for t in (0.0, 30.0, 59.0, 60.0)] == [True, False, False, True]


def test_a_threshold_needs_the_counts_to_show_the_rate() -> None:
    assert shown_above(1, 40, 0.01, 0.005)[0] is False  # 2.5 % raw, nothing shown
    assert shown_above(10, 100, 0.01, 0.005)[0] is True
    assert shown_above(0, 100, 0.01, 0.5) == (False, 1.0)
    assert shown_above(1, 100, 0.01, 0.5) == (False, 1.0)  # at the line: never shown
    # the same share on more requests is more evidence
    assert shown_above(6, 200, 0.01, 1.0)[1] < shown_above(30, 1000, 0.01, 1.0)[1]
    levels = [window_alpha(0.01, j, 1) for j in range(1, 10_000)]
    assert sum(levels) <= 0.01


def test_a_candidate_at_the_line_is_rarely_shown_above_it_however_often_it_is_looked_at() -> None:
    """The chance of ever crossing, looking after every request of a 2,000-request window at
    exactly the line's rate, computed exactly over the binomial paths: at most the level."""
    rate, level, n = 0.01, 0.05, 2000
    alive = {0: 1.0}  # errors so far -> probability of not having crossed yet
    crossed = 0.0
    for k in range(1, n + 1):
        nxt: dict[int, float] = {}
        for x, prob in alive.items():
            for hit, p in ((x + 1, prob * rate), (x, prob * (1 - rate))):
                if shown_above(hit, k, rate, level)[0]:
                    crossed += p
                else:
                    nxt[hit] = nxt.get(hit, 0.0) + p
        alive = nxt
    assert crossed <= level
