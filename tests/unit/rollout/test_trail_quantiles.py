"""Stable's trailing quantiles found from where they stood the tick before
(`trailing.trail_quantiles`, the counts above each kept by `trail_add`) are the quantiles
walked afresh over the whole sum (`histograms.hist_quantiles`): over any run of ticks (traffic
that moves the quantiles up and down, opens buckets, ages slots out, a sum written by `codec`,
quantiles asked on some ticks only, in any set, p above 1 included), tick after tick."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.histograms import hist_add, hist_quantiles
from splitproxy.rollout.sketch import bound_of
from splitproxy.rollout.trailing import trail_add, trail_quantiles
from tests.unit.rollout.drive import spec
from tests.unit.rollout.test_trailing import by_bound

BOUNDS = [0.001 * 1.5**k for k in range(24)]  # enough buckets for a quantile to wander
HIST = st.dictionaries(st.sampled_from(BOUNDS), st.integers(0, 400), max_size=8)
QS = st.lists(st.sampled_from([0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0, 1.5]), max_size=4)
TICK = st.tuples(
    st.sampled_from([0.0, 1.0, 1.0, 1.0, 10.0, 300.0, 700.0, 4000.0]),  # seconds since the last
    st.lists(HIST, max_size=3),  # the tick's stable histograms
    QS,  # asked after the tick (none: not asked)
    st.booleans(),  # the sum written afresh, as `codec` restores it
)


def walked(e: Evidence, qs: list[float]) -> dict[float, float | None]:
    """The quantiles walked afresh over the whole sum, by its bounds."""
    return hist_quantiles(by_bound(e.trail_total), qs)


def evidence() -> Evidence:
    e = Evidence(spec(checks=[{"metric": "latency", "compare": "stable"}]), path_class_slots=2)
    e.fresh_tests()
    return e


@settings(max_examples=300, deadline=None)
@given(st.lists(TICK, max_size=80))
def test_the_quantiles_kept_are_the_quantiles_walked_afresh(
    ticks: list[tuple[float, list[dict[float, int]], list[float], bool]],
) -> None:
    e = evidence()
    now = 0.0
    for gap, hists, qs, restored in ticks:
        now += gap
        requests = sum(sum(h.values()) for h in hists)
        trail_add(e, now, requests, 0, [sorted(h.items()) for h in hists])
        if restored:  # as `codec` restores it: every slot written out, a new sum
            total: dict[int, int] = {}
            for _, _, hist in e.trail:
                hist_add(total, hist.items())
            assert total == e.trail_total
            e.trail_total = total
            e.trail_bounds = None  # (its sorted bounds to be made afresh)
        assert trail_quantiles(e, qs) == walked(e, qs)


def test_a_quantile_moves_up_and_down_from_where_it_stood() -> None:
    e = evidence()
    trail_add(e, 0.0, 100, 0, [[(0.01, 90), (0.1, 9), (1.0, 1)]])
    assert trail_quantiles(e, [0.95]) == {0.95: 0.1}
    kept = e.trail_at[0.95]
    assert (bound_of(kept.bound), kept.above) == (0.1, 1)
    trail_add(e, 1.0, 100, 0, [[(1.0, 100)]])  # slow traffic: p95 climbs to the top bucket
    assert kept.above == 101  # counted above the kept bucket as it came
    assert trail_quantiles(e, [0.95]) == {0.95: 1.0} == walked(e, [0.95])
    trail_add(e, 2.0, 2000, 0, [[(0.01, 2000)]])  # fast traffic: back down to the bottom
    assert trail_quantiles(e, [0.95]) == {0.95: 0.01} == walked(e, [0.95])
    assert e.trail_count == sum(e.trail_total.values()) == 2200


def test_a_bucket_that_reaches_the_rank_exactly_is_the_quantile_either_way() -> None:
    e = evidence()  # every bucket there from the start: the kept bucket moves, none opens
    trail_add(e, 0.0, 100, 0, [[(0.01, 98), (0.1, 1), (1.0, 1)]])
    assert trail_quantiles(e, [0.5]) == {0.5: 0.01}
    trail_add(e, 1.0, 300, 0, [[(0.1, 101), (1.0, 199)]])  # up: 0.1's 200 is the rank, 200
    assert trail_quantiles(e, [0.5]) == {0.5: 0.1} == walked(e, [0.5])
    trail_add(e, 2.0, 204, 0, [[(0.01, 204)]])  # down: 0.01's 302 is the rank, 302
    assert trail_quantiles(e, [0.5]) == {0.5: 0.01} == walked(e, [0.5])
