"""Sums the tick keeps as the data come, instead of making them again each tick, equal the
sums made afresh: an attribution test's event count (``AttributionTest.events``, asked
several times a tick; a sticky route's tests hold hundreds of ``p``), through updates at any
``p`` (uninformative ones ignored), a save and restore, and a mixture's fresh starts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import AttributionTest

UPDATE = st.tuples(
    st.sampled_from([0.0, 0.05, 0.1, 0.123, 0.5, 1.0]),
    st.integers(0, 6),
    st.integers(0, 6),
    st.sampled_from(["", "", "", "restore", "restart"]),
)


def _fresh(test: AttributionTest) -> int:
    return sum(x + y for x, y in test.counts().values())


@settings(max_examples=200, deadline=None)
@given(st.lists(UPDATE, max_size=60))
def test_the_event_count_kept_is_the_sum_over_the_counts(
    updates: list[tuple[float, int, int, str]],
) -> None:
    plain = AttributionTest()
    mixture = RecoveringTest(keep=3)
    for p, x, y, op in updates:
        plain.update(p, x, y)
        mixture.update(p, x, y)
        if op == "restore":
            plain = AttributionTest.from_dict(plain.to_dict())
            mixture = RecoveringTest.from_dict(mixture.to_dict())
        elif op == "restart":
            mixture.restart()
        assert plain.events == _fresh(plain)
        assert mixture.events == sum(x + y for x, y in mixture.counts().values())
        assert all(t.events == _fresh(t) for _, t in mixture._comps)
