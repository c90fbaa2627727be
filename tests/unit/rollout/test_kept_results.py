"""The comparisons' results kept between ticks (`Evidence._kept`, keyed on counters of their
tests' updates and fresh starts) are the results made afresh: over any run of ticks (errors or
none, slow requests or none, stable's history growing, the comparisons' fresh starts), the
error and the latency comparison `Evidence.evaluate` shows are those `_error_result` and
`_latency_result` make from the tests as they stand, and the latency comparison's text (kept
while stable's quantiles stay) the one written afresh."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.recovery import RESTART_EVERY
from tests.unit.rollout.drive import spec

CHECKS = [{"metric": "error_rate", "compare": "stable"}, {"metric": "latency", "compare": "stable"}]
BOUNDS = [0.004, 0.01, 0.05, 0.2, 1.0]
SAMPLE = st.tuples(
    st.sampled_from(["stable", "candidate"]),
    st.integers(0, 400),  # requests
    st.integers(0, 3),  # errors
    st.sampled_from([None, "/a", "/b"]),  # path class
    st.dictionaries(st.sampled_from(BOUNDS), st.integers(1, 300), max_size=3),  # latency
)
TICK = st.tuples(
    st.sampled_from([1.0, 1.0, 2.0, RESTART_EVERY]),  # seconds since the last tick
    st.lists(SAMPLE, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(TICK, max_size=40), st.sampled_from([0.0, 0.1, 0.25]))
def test_kept_comparison_results_are_those_made_afresh(
    ticks: list[tuple[float, list[tuple[str, int, int, str | None, dict[float, int]]]]],
    tolerance: float,
) -> None:
    checks = [CHECKS[0], {**CHECKS[1], "tolerance": tolerance}]
    e = Evidence(spec(checks=checks), path_class_slots=2)
    e.start()
    error_key, latency_key = e.compare_keys
    now = 0.0
    for gap, cells in ticks:
        now += gap
        samples = [
            Sample(v, n, min(x, n), 0.1, c, tuple(sorted(h.items())))  # type: ignore[arg-type]
            for v, n, x, c, h in cells
        ]
        e.fold(now, samples, tests=True)
        shown = {r.name: r for r in e.evaluate(now)}
        assert e.errors_test is not None
        assert shown[error_key] == e._error_result(error_key, e.errors_test)
        assert shown[latency_key] == e._latency_result(latency_key)
        # its text, kept while stable's quantiles stay, is the one written afresh
        detail = ", ".join(f"stable p{q * 100:g} {c * 1000:.4g}ms" for q, c in e.thresholds.items())
        if e.thresholds and tolerance:
            detail += f", slow beyond +{tolerance * 100:g}%"
        if not e.thresholds and not shown[latency_key].sample:
            detail = "stable history too short"
        assert shown[latency_key].detail == detail
