"""Known gap of the engine, kept visible: in the bake the threshold checks are judged only when
the bake's window ends, so a candidate breaking an absolute threshold (a p99 over its max, an
error rate over ``max`` but under the guard's cap) keeps every user for the whole bake before
it is reverted, although "any failure in the bake reverts at once"."""

from __future__ import annotations

import pytest

from tests.unit.rollout.test_bluegreen import BG, bluegreen

BAKE = 30


@pytest.mark.xfail(
    strict=True,
    reason="engine: the bake judges threshold checks only at the bake window's end "
    "(Evidence.window_outcome holds until `interval` = bake has passed), not at once",
)
def test_a_p99_over_its_threshold_in_the_bake_reverts_before_the_bake_ends() -> None:
    d = BG(
        bluegreen(bake=f"{BAKE}s", checks=[{"metric": "latency_p99", "max": "200ms"}]),
        slow=100,  # every live request takes 500 ms: the p99 is far over 200 ms
    )
    for _ in range(60):
        d.tick()
        if d.weight == 100:
            break
    switched = d.now
    assert d.weight == 100
    while d.phase == "progressing" and d.now < switched + BAKE + 5:
        d.tick()
    assert d.phase == "rolled_back"
    # ten seconds of live traffic all over the threshold is plenty to decide on
    assert d.now - switched <= 10, f"reverted {d.now - switched:g}s after the switch"
