"""In the bake the threshold checks are judged window by window (the rollout's ``interval``),
not once at the bake's end: a candidate breaking an absolute threshold (a p99 over its max, an
error rate over ``max`` but under the guard's cap) is reverted within a window or two, not
after the whole bake."""

from __future__ import annotations

from tests.unit.rollout.test_bluegreen import BG, bluegreen

BAKE = 30


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
