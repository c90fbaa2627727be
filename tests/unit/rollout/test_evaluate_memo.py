"""`Evidence.evaluate`'s memo changes no result: over any run of ticks (errors per path class
and version, sticky users failing again and again, a unit table that fills up, fresh starts
of the comparisons every minute, a restored test swapped in), the error comparison it returns
equals the one computed afresh, value, verdict and detail; so does the latency comparison
(stable's thresholds moving as its history grows), and the guard's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import PathClassTests
from splitproxy.rollout.units import UnitTable
from tests.unit.rollout.drive import spec

CHECKS = [
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable"},
    {"metric": "error_rate", "max": "1%"},
]
BOUNDS = [0.01, 0.05, 0.2, 1.0]
SAMPLE = st.tuples(
    st.sampled_from(["stable", "candidate"]),
    st.integers(0, 40),  # requests
    st.integers(0, 4),  # errors
    st.sampled_from([0.05, 0.25, 0.5, None]),
    st.sampled_from(["/a", "/b", "/c", "/d", "~other", None]),
    st.lists(st.integers(0, 5), max_size=3),  # sticky users among the errors
    st.lists(st.tuples(st.sampled_from(BOUNDS), st.integers(1, 400)), max_size=3),  # latency
)
TICK = st.tuples(
    st.sampled_from([0.0, 1.0, 7.0, 31.0]),  # seconds since the previous tick
    st.lists(SAMPLE, max_size=4),
    st.sampled_from(["", "", "", "", "restore"]),
)


Cell = tuple[str, int, int, float | None, str | None, list[int], list[tuple[float, int]]]


def samples_of(cells: list[Cell]) -> list[Sample]:
    """The tick's samples from drawn cells (errors at most the requests, the sticky users among
    the errors, the latency histogram sorted by bound)."""
    samples = []
    for version, n, x, p, cls, users, latency in cells:
        x = min(x, n)
        units = tuple(users[:x])
        hist = tuple(sorted(dict(latency).items()))
        samples.append(
            Sample(version, n, x, p, cls, hist, len(units), units)  # type: ignore[arg-type]
        )
    return samples


@settings(max_examples=150, deadline=None)
@given(st.lists(TICK, max_size=40))
def test_the_error_comparison_is_the_fresh_one_every_tick(
    ticks: list[tuple[float, list[Cell], str]],
) -> None:
    e = Evidence(spec(checks=CHECKS), path_class_slots=2)
    e.fresh_tests()
    e.units = UnitTable(cap=3)  # small: it fills, and its skipped errors show in the detail
    now = 0.0
    for gap, cells, op in ticks:
        now += gap
        e.fold(now, samples_of(cells), tests=True)
        if op == "restore" and e.errors_test is not None:  # as codec.decode does
            data = e.errors_test.to_dict()
            e.errors_test = PathClassTests.from_dict(data, RecoveringTest.from_dict, RecoveringTest)
        test = e.errors_test
        assert test is not None
        key = e.error_compare.key if e.error_compare is not None else ""
        results = {r.name: r for r in e.evaluate(now)}
        assert results[key] == e._error_result(key, test)
        assert results["latency_vs_stable"] == e._latency_result("latency_vs_stable")
        assert e.guard is not None
        assert results["guard"] == e._guard_result(e.guard)
