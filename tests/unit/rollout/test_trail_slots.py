"""Stable's latency thresholds per closed trailing slot (`trailing`, the tenth round).

A tick is judged against stable's trailing quantiles over the 10-s slots closed before its
own: never its own slot's requests (its own tick's included), drawn again when a slot closes
(the first tick of a later slot) or ages out, and the same thresholds, the same dict, between
those. A stable bin is written once a tick, into the open slot; the sum gains a slot when it
closes. A state saved and loaded (`codec`) judges as one never saved."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.codec import _decode_evidence, _encode_evidence
from splitproxy.rollout.evidence import Evidence, min_threshold_requests
from splitproxy.rollout.histograms import hist_add, hist_quantiles
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.trailing import TRAIL_SLOT
from tests.unit.rollout.drive import spec
from tests.unit.rollout.test_trailing import by_bound

FAST, SLOW = 0.01, 1.0


def evidence() -> Evidence:
    e = Evidence(spec(checks=[{"metric": "latency", "compare": "stable"}]), path_class_slots=2)
    e.fresh_tests()
    return e


def stable(n: int, bound: float) -> Sample:
    return Sample("stable", n, 0, 0.5, None, ((bound, n),))


def candidate(n: int, bound: float) -> Sample:
    return Sample("candidate", n, 0, 0.5, None, ((bound, n),))


def test_a_tick_is_judged_by_the_closed_slots_never_by_its_own_slot() -> None:
    e = evidence()
    for second in range(10):  # slot 0: 5,000 fast requests
        e.fold(float(second), [stable(500, FAST)], tests=False)
    assert e.thresholds == {}  # the slot is still open
    e.fold(10.0, [stable(500, SLOW)], tests=True)  # slot 0 closes: stable is slow from now on
    drawn = e.thresholds
    assert drawn == {0.95: FAST, 0.99: FAST}
    for second in range(11, 20):
        # 500 slow requests a tick into the open slot 10: with them in the sum, p95 (5,225th
        # of 5,500 already at 11 s) would be the slow bucket
        e.fold(float(second), [stable(500, SLOW), candidate(10, SLOW)], tests=True)
        assert e.thresholds is drawn  # the same thresholds, not drawn again
    # the candidate's slow requests were judged against the fast thresholds: all of them
    assert e.latency_tests[0.95].counts() == {0.5: (90, 5000)}
    e.fold(20.0, [], tests=True)  # slot 10 closes: half of the sum is slow now
    assert e.thresholds == {0.95: SLOW, 0.99: SLOW}


def test_a_stable_bin_is_written_once_into_the_open_slot_and_the_sum_gains_it_on_close() -> None:
    e = evidence()
    e.fold(3.0, [stable(400, FAST)], tests=False)
    total = dict(e.trail_total)
    e.fold(4.0, [stable(100, SLOW)], tests=False)
    assert e.trail_total == total == {}  # the tick wrote its slot only
    assert by_bound(e.trail[-1][2]) == {FAST: 400, SLOW: 100}
    e.fold(10.0, [stable(7, FAST)], tests=False)
    assert by_bound(e.trail_total) == {FAST: 400, SLOW: 100}  # slot 0, once
    assert by_bound(e.trail[-1][2]) == {FAST: 7}  # slot 10, open


BOUNDS = [0.001 * 1.5**k for k in range(24)]
HIST = st.dictionaries(st.sampled_from(BOUNDS), st.integers(1, 400), max_size=6)
TICK = st.tuples(
    st.sampled_from([0.0, 1.0, 1.0, 1.0, 4.0, 10.0, 300.0, 700.0, 4000.0]),  # since the last
    st.lists(HIST, max_size=3),  # stable's histograms
    st.booleans(),  # saved and loaded before this tick (`codec`)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TICK, max_size=80))
def test_the_thresholds_are_the_closed_slots_quantiles_and_a_loaded_state_judges_the_same(
    ticks: list[tuple[float, list[dict[float, int]], bool]],
) -> None:
    e, kept = evidence(), evidence()  # ``kept``: saved and loaded now and then
    now = 0.0
    for gap, hists, reload in ticks:
        now += gap
        if reload:
            saved = json.loads(json.dumps(_encode_evidence(kept)))
            kept = evidence()
            _decode_evidence(kept, saved)
        samples = [Sample("stable", sum(h.values()), 0, 0.5, None, tuple(h.items())) for h in hists]
        slot = now // TRAIL_SLOT * TRAIL_SLOT
        closed: dict[float, int] = {}
        for start, _, hist in e.trail:
            if start != slot:
                hist_add(closed, by_bound(hist).items())
        e.fold(now, samples, tests=False)
        kept.fold(now, samples, tests=False)
        n = sum(closed.values())
        wanted = [q for q in (0.95, 0.99) if n >= min_threshold_requests(q)]
        assert e.thresholds == (hist_quantiles(closed, wanted) if wanted else {})
        assert kept.thresholds == e.thresholds
        assert kept.trail == e.trail
        assert kept.trail_total == e.trail_total
