"""The evidence of a rollout, asked directly: `splitproxy.rollout.evidence`."""

from __future__ import annotations

import math

from splitproxy.rollout.evidence import Evidence, min_threshold_requests
from splitproxy.rollout.messages import CheckResult, Sample
from tests.unit.rollout.drive import hist, spec, traffic

LATENCY = [{"metric": "latency", "compare": "stable", "quantiles": [0.95]}]


def running(**kw: object) -> Evidence:
    e = Evidence(spec(**kw), path_class_slots=4)
    e.fresh_tests()
    e.restart_window(0.0)
    return e


def test_latency_thresholds_come_from_stable_s_history_in_slots_closed_before_the_tick() -> None:
    e = running(checks=LATENCY)
    needed = min_threshold_requests(0.95)
    history = [Sample("stable", needed, 0, None, None, hist(needed, needed // 10, 0.05, 0.5))]
    e.fold(1.0, history, tests=True)
    assert e.thresholds == {}  # the tick's own requests never set its threshold
    e.fold(2.0, traffic(0.1), tests=True)
    assert e.thresholds == {}  # nor those of its 10-s slot, still open
    e.fold(10.0, traffic(0.1), tests=True)
    assert e.thresholds == {0.95: 0.5}
    (latency,) = [c for c in e.evaluate(10.0) if c.name == "latency_vs_stable"]
    assert latency.detail == "stable p95 500ms"


def test_a_fold_without_tests_grows_stable_history_only() -> None:
    e = running(checks=[{"metric": "error_rate", "compare": "stable"}])
    e.fold(1.0, traffic(0.1, candidate=(10, 5)), tests=False)
    assert e.window.requests == 0
    assert e.errors_test is not None
    assert e.errors_test.pooled.events == 0
    assert e.guard is not None
    assert e.guard.requests == 0
    assert e.trail_requests == 90  # stable's latencies are kept all the same
    e.fold(2.0, traffic(0.1, candidate=(10, 5)), tests=True)
    assert (e.window.requests, e.window.errors) == (10, 5)
    assert e.errors_test.pooled.events == 5
    assert e.guard.requests == 10


def test_the_window_holds_until_long_and_large_enough_then_passes_or_fails() -> None:
    e = running(interval="10s", min_requests=20, checks=[{"metric": "error_rate", "max": 0.1}])
    step = e.spec.plan[0]
    e.fold(1.0, traffic(0.1, candidate=(10, 0)), tests=True)
    assert e.window_outcome(5.0, step, e.evaluate(5.0)).outcome == "hold"  # too short
    assert e.window_outcome(10.0, step, e.evaluate(10.0)).outcome == "hold"  # too few
    e.fold(11.0, traffic(0.1, candidate=(10, 0)), tests=True)
    assert e.window_outcome(11.0, step, e.evaluate(11.0)).outcome == "pass"
    e.fold(12.0, traffic(0.1, candidate=(20, 15)), tests=True)  # 15 of 40: shown above 10 %
    failed = e.window_outcome(12.0, step, e.evaluate(12.0))
    assert (failed.outcome, failed.reason) == ("fail", "failed: error_rate")
    e.restart_window(12.0)
    assert e.window.requests == 0


def test_a_window_without_data_holds_or_fails_as_the_spec_says() -> None:
    for on_no_data, outcome in (("hold", "hold"), ("fail", "fail")):
        e = running(on_no_data=on_no_data, interval="10s")
        got = e.window_outcome(10.0, e.spec.plan[0], e.evaluate(10.0))
        assert got.outcome == outcome
        if outcome == "fail":
            assert got.reason == "no candidate traffic in the window"


def test_an_external_value_older_than_the_window_is_no_data() -> None:
    e = running(checks=[{"prometheus": "http://prom:9090", "query": "up", "min": 1}])
    e.record_external(5.0, {"prometheus": 1.0})
    (check,) = [c for c in e.evaluate(6.0) if c.kind == "external"]
    assert (check.value, check.verdict) == (1.0, "pass")
    e.restart_window(7.0)
    (check,) = [c for c in e.evaluate(8.0) if c.kind == "external"]
    assert (check.value, check.verdict) == (None, "no_data")


def test_stable_breaching_is_stable_s_last_minute_above_the_guard_s_cap() -> None:
    e = running()
    e.fold(1.0, traffic(0.1, stable=(90, 30)), tests=True)
    assert e.stable_breaching()
    e.fold(100.0, traffic(0.1, stable=(90, 0)), tests=True)  # the bad minute is over
    assert not e.stable_breaching()
    crash = Sample("candidate", 10, 10, 0.1)  # the candidate far worse than stable
    e.fold(101.0, [Sample("stable", 10, 4, 0.1), crash], tests=True)
    assert not e.stable_breaching()  # 4 of 100 is under the cap of 5 % over the minute
    e.fold(102.0, [Sample("stable", 10, 6, 0.1), crash], tests=True)
    assert e.stable_breaching()  # 10 of 110 is above it


def test_stable_failing_in_the_same_seconds_as_the_candidate_is_an_incident() -> None:
    """A shared incident (a database blip): both versions at 10 % errors for a few seconds
    after a calm minute. The minute's average is still under the cap; the same seconds are
    not."""
    e = running()
    for t in range(1, 61):
        e.fold(float(t), traffic(0.1, stable=(90, 0), candidate=(10, 0)), tests=True)
    for t in range(61, 69):
        e.fold(float(t), traffic(0.1, stable=(900, 90), candidate=(100, 10)), tests=True)
    assert e.stable_breaching()
    # the same seconds, but the candidate ten times worse than stable: its own fault
    e2 = running()
    for t in range(1, 69):
        e2.fold(float(t), traffic(0.1, stable=(900, 27), candidate=(100, 90)), tests=True)
    assert not e2.stable_breaching()


def test_a_failed_comparison_carries_a_lower_bound_above_one() -> None:
    e = running(checks=[{"metric": "error_rate", "compare": "stable"}])
    for t in range(1, 30):
        e.fold(float(t), traffic(0.5, stable=(50, 0), candidate=(50, 5)), tests=True)
    (compare,) = [c for c in e.evaluate(30.0) if c.kind == "compare"]
    assert compare.verdict == "fail"
    assert compare.ci is None  # intervals are added on demand
    (shown,) = [c for c in e.with_ci([compare])]
    assert shown.ci is not None
    assert shown.ci[0] > 1
    assert shown.ci[1] == math.inf


def test_the_end_of_a_rollout_drops_its_tests_but_keeps_stable_s_history() -> None:
    e = running()
    e.fold(1.0, traffic(0.1), tests=True)
    e.record_external(1.0, {"x": 1.0})
    e.end()
    assert (e.errors_test, e.latency_tests, e.guard, e.external) == (None, {}, None, {})
    assert e.trail_requests == 90
    assert e.evaluate(2.0) == ()  # nothing runs: no comparisons, no guard, no checks


def _latency_verdict(tolerance: str | None, candidate_at: float, ticks: int = 30) -> CheckResult:
    """Stable: p95 at 500 ms; the candidate's 10 requests a tick all take ``candidate_at``."""
    check: dict[str, object] = {"metric": "latency", "compare": "stable", "quantiles": [0.95]}
    if tolerance is not None:
        check["tolerance"] = tolerance
    e = running(checks=[check])
    needed = min_threshold_requests(0.95)
    e.fold(0.0, [Sample("stable", needed, 0, None, None, hist(needed, needed // 10))], tests=True)
    for t in range(1, ticks + 1):
        stable = Sample("stable", 90, 0, 0.1, "/", hist(90, 9))
        candidate = Sample("candidate", 10, 0, 0.1, "/", ((candidate_at, 10),))
        e.fold(float(t), [stable, candidate], tests=True)
    (latency,) = [c for c in e.evaluate(float(ticks)) if c.name == "latency_vs_stable"]
    return latency


def test_a_tolerance_forgives_a_small_slowdown_and_not_a_large_one() -> None:
    # 10 % slower than stable's p95 on every request: shown without a tolerance
    assert _latency_verdict(None, 0.55).verdict == "fail"
    forgiven = _latency_verdict("20%", 0.55)
    assert (forgiven.verdict, forgiven.sample) == ("no_data", 0)  # not one slow request
    assert forgiven.detail == "stable p95 500ms, slow beyond +20%"
    # four times stable's p95: beyond any 20 % margin
    assert _latency_verdict("20%", 2.0).verdict == "fail"
