"""Stable's trailing history kept in one pass (`trailing.trail_add`) is the history the tick
kept before, merging the tick's stable histograms first and adding the merged one to its slot
and to the sum: over any run of ticks (gaps that fill a slot, open the next, or age the oldest
out; few requests, so old slots are kept for their count), the same slots, request count and
last minute, tick after tick; and since the tenth round the sum is that of the slots closed
(all but the tick's own), the thresholds each tick judges by are drawn from the slots closed
before it (never its own slot's), and a tick that closes no slot and ages none out reuses the
thresholds, and the limits made from them, as they were."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.evidence import Evidence, min_threshold_requests
from splitproxy.rollout.histograms import hist_add, hist_quantiles
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.sketch import bound_of
from splitproxy.rollout.trailing import (
    STABLE_RECENT,
    TRAIL_MAX_AGE,
    TRAIL_MIN_REQUESTS,
    TRAIL_SLOT,
    TRAIL_WINDOW,
)
from tests.unit.rollout.drive import spec


class Before:
    """The trailing history as `Evidence._trail_add` kept it before `trailing` existed."""

    def __init__(self) -> None:
        self.trail: list[list[Any]] = []
        self.trail_total: dict[float, int] = {}
        self.trail_requests = 0
        self.recent: list[list[float]] = []

    def fold(self, now: float, samples: list[Sample]) -> None:
        n = x = 0
        hist: dict[float, int] = {}
        for s in samples:
            if s.version == "stable":
                n += s.requests
                x += s.errors
                if s.latency:
                    hist_add(hist, s.latency)
        slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
        if n or hist:
            if self.recent and self.recent[-1][0] == slot:
                self.recent[-1][1] += n
                self.recent[-1][2] += x
            else:
                self.recent.append([slot, n, x])
        while self.recent and self.recent[0][0] < now - STABLE_RECENT:
            self.recent.pop(0)
        if hist:
            counted = sum(hist.values())
            if self.trail and self.trail[-1][0] == slot:
                hist_add(self.trail[-1][2], hist.items())
                self.trail[-1][1] += counted
            else:
                self.trail.append([slot, counted, dict(hist)])
            hist_add(self.trail_total, hist.items())
            self.trail_requests += counted
        while self.trail:
            oldest_slot, oldest_n, oldest_hist = self.trail[0]
            age = now - oldest_slot
            keep_for_count = self.trail_requests - oldest_n < TRAIL_MIN_REQUESTS
            if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
                break
            self.trail.pop(0)
            hist_add(self.trail_total, oldest_hist.items(), -1)
            self.trail_requests -= oldest_n


def settled(e: Evidence) -> list[list[Any]]:
    """``e``'s slots as `codec` saves them (every slot's histogram written as it comes)."""
    return e.trail


def by_bound(hist: dict[int, int]) -> dict[float, int]:
    """A histogram of the trail (keyed by ordinals, `histograms.ordinal`) keyed by bounds."""
    return {bound_of(key): count for key, count in hist.items()}


def slots_by_bound(trail: list[list[Any]]) -> list[list[Any]]:
    """`by_bound` of each slot's histogram."""
    return [[slot, n, by_bound(hist)] for slot, n, hist in trail]


def closed_sum(before: Before, now: float) -> dict[float, int]:
    """The sum of ``before``'s slots closed at ``now`` (every slot but ``now``'s)."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    total: dict[float, int] = {}
    for start, _, hist in before.trail:
        if start != slot:
            hist_add(total, hist.items())
    return total


def thresholds_afresh(total: dict[float, int]) -> dict[float, float]:
    """Stable's thresholds walked afresh over ``total``, each with the requests it needs."""
    n = sum(total.values())
    wanted = [q for q in (0.95, 0.99) if n >= min_threshold_requests(q)]
    found = hist_quantiles(total, wanted) if wanted else {}
    return {q: c for q, c in found.items() if c is not None and c != math.inf}


BOUNDS = [0.004, 0.01, 0.05, 0.2, 1.0, 3.0]
SAMPLE = st.tuples(
    st.sampled_from(["stable", "stable", "candidate"]),
    st.integers(0, 300),  # requests
    st.integers(0, 5),  # errors
    st.dictionaries(st.sampled_from(BOUNDS), st.integers(0, 900), max_size=4),  # latency
)
TICK = st.tuples(
    st.sampled_from([0.0, 1.0, 3.0, 10.0, 61.0, 700.0, 4000.0]),  # seconds since the last
    st.lists(SAMPLE, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TICK, max_size=60), st.booleans(), st.lists(st.booleans(), min_size=1))
def test_the_trail_is_the_one_kept_before(
    ticks: list[tuple[float, list[tuple[str, int, int, dict[float, int]]]]],
    judging: bool,
    reads: list[bool],
) -> None:
    """... read or not between ticks (``reads``: as `codec` does)."""
    checks = [{"metric": "latency", "compare": "stable"}, {"metric": "latency_p99", "max": "1s"}]
    e = Evidence(spec(checks=checks), path_class_slots=2)
    e.fresh_tests()
    before = Before()
    window: dict[float, int] = {}
    now = 0.0
    for i, (gap, cells) in enumerate(ticks):
        now += gap
        samples = [
            Sample(version, n, min(x, n), 0.1, None, tuple(sorted(hist.items())))  # type: ignore[arg-type]
            for version, n, x, hist in cells
        ]
        # the tick judges by the slots closed before it, whatever it brings
        judged_by = thresholds_afresh(closed_sum(before, now))
        was, cuts = e.thresholds, e._cuts
        changes = (
            e.trail_open and e.trail[-1][0] != math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
        ) or (e.trail_changed)
        e.fold(now, samples, tests=judging)
        assert e.thresholds == judged_by
        if i and not changes:  # neither a slot closed nor one aged out: reused as they were
            assert e.thresholds is was
            assert e._cuts is cuts
        before.fold(now, samples)
        if judging:
            for s in samples:
                if s.version == "candidate":
                    hist_add(window, s.latency)
        assert slots_by_bound(settled(e)) == before.trail
        assert by_bound(e.trail_total) == closed_sum(before, now)
        assert e.trail_requests == before.trail_requests
        assert e.recent == before.recent
        assert e.window.latency == window
        assert e._latency_thresholds() == thresholds_afresh(closed_sum(before, now))
        if reads[i % len(reads)]:
            assert slots_by_bound(e.trail) == before.trail


def test_a_slot_aged_out_mid_slot_draws_the_thresholds_again() -> None:
    e = Evidence(spec(checks=[{"metric": "latency", "compare": "stable"}]), path_class_slots=2)
    e.fresh_tests()
    for now, bound in ((0.0, 3.0), (590.0, 0.01), (700.0, 1.0)):
        e.fold(now, [Sample("stable", 2500, 0, 0.1, None, ((bound, 2500),))], tests=False)
    # at 700 the tick judged by slots 0 and 590 (half at 3 s); slot 0 aged out after it, and
    # slot 700 is still open: the next tick, in the same slot, judges by slot 590 alone
    assert e.thresholds == {0.95: 3.0, 0.99: 3.0}
    assert by_bound(e.trail_total) == {0.01: 2500}
    e.fold(701.0, [], tests=False)
    assert e.thresholds == {0.95: 0.01, 0.99: 0.01}
