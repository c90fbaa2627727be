"""The threshold checks' results made when first read (`deferred`) are the ones made on their
tick: against the evaluation before the shortcut (kept here verbatim), read at once, after the
window changed, after it was replaced, after more windows were judged, or never; and an
analyzer whose results are read every tick decides and shows what one never read does, through
manual commands and gate answers whose events carry the previous tick's results."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import LATENCY_QUANTILES, MetricCheck
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import encode
from splitproxy.rollout.deferred import DeferredThresholds, bounded
from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.histograms import hist_above, hist_quantile
from splitproxy.rollout.messages import CheckResult, Sample, metric_unit
from splitproxy.rollout.thresholds import shown_above, window_alpha
from tests.unit.rollout.drive import Driver, op_kwargs, spec, traffic

CHECKS: list[dict[str, Any]] = [
    {"metric": "error_rate", "max": "2%"},
    {"metric": "success_rate", "min": "97%"},
    {"metric": "latency_p99", "max": "300ms"},
    {"metric": "latency_p50", "min": "1ms", "max": "100ms"},
    {"metric": "request_rate", "min": 1},
]


def old_threshold_check(
    e: Evidence, now: float, check: MetricCheck, unshown: set[str]
) -> CheckResult:
    """`Evidence._threshold_check` as it was before the results were deferred."""
    w = e.window
    value: float | None = None
    sample = w.requests
    sides: list[tuple[int, float]] = []
    low, high = check.min, check.max
    metric = check.metric
    quantile = LATENCY_QUANTILES.get(metric)
    if metric in ("error_rate", "success_rate") and w.requests:
        value = w.errors / w.requests
        if metric == "success_rate":
            value = 1 - value
    elif metric == "request_rate" and now > w.start:
        value = w.requests / (now - w.start)
    elif quantile is not None:
        sample = sum(w.latency.values())
        value = hist_quantile(w.latency, quantile)
    result = bounded(
        check.key, "threshold", value, low, high, sample, metric=metric, unit=metric_unit(metric)
    )
    if result.verdict != "fail":
        return result
    if metric in ("error_rate", "success_rate") and w.requests:
        n, x = w.requests, w.errors
        if metric == "success_rate":
            x = n - x
        if high is not None:
            sides.append((x, high))
        if low is not None:
            sides.append((n - x, 1 - low))
    elif quantile is not None:
        if high is not None:
            sides.append((hist_above(w.latency.items(), high), 1 - quantile))
        if low is not None:
            sides.append((sample - hist_above(w.latency.items(), low), quantile))
    if not sides:
        return result
    level = window_alpha(e.spec.alpha, e.windows_judged + 1, len(e.threshold_checks))
    x_e = max(shown_above(x, sample, share, level)[1] for x, share in sides)
    if x_e >= 1 / level:
        return result._replace(detail=f"shown: e={x_e:.3g} >= {1 / level:.3g}")
    unshown.add(check.key)
    detail = f"over the line, not shown yet: e={x_e:.3g} < {1 / level:.3g}"
    return result._replace(verdict="pass", detail=detail)


LATENCY = st.lists(
    st.tuples(st.sampled_from([0.0005, 0.01, 0.05, 0.2, 0.5, 2.0]), st.integers(1, 9))
)
OP = st.one_of(
    st.tuples(st.just("fold"), st.integers(0, 60), st.integers(0, 6), LATENCY),
    st.tuples(st.just("evaluate"), st.booleans(), st.none(), st.none()),
    st.tuples(st.just("read"), st.integers(0, 5), st.none(), st.none()),
    st.tuples(st.just("judged"), st.none(), st.none(), st.none()),
    st.tuples(st.just("restart"), st.none(), st.none(), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(OP, max_size=40))
def test_deferred_results_are_those_of_their_tick(ops: list[tuple[str, Any, Any, Any]]) -> None:
    e = Evidence(spec(checks=CHECKS), path_class_slots=2)
    e.fresh_tests()
    now = 0.0
    made: list[tuple[DeferredThresholds, tuple[CheckResult, ...], set[str]]] = []
    for op, a, b, c in ops:
        now += 1.0
        if op == "fold":
            hist = tuple(sorted(dict(c).items()))
            samples = [Sample("candidate", a, min(a, b), 0.1, "/", hist)]
            e.fold(now, samples, tests=True)
        elif op == "evaluate":
            unshown: set[str] = set()
            want = tuple(old_threshold_check(e, now, ch, unshown) for ch in e.threshold_checks)
            deferred, _ = e.evaluate_deferred(now)
            made.append((deferred, want, unshown))
            if a:  # read at once, as the window's outcome does past its length and size
                assert e.unshown == unshown
        elif op == "read" and made:
            deferred, want, unshown = made[a % len(made)]
            assert deferred.results() == want
            assert deferred.unshown() == unshown
        elif op == "judged":
            e.windows_judged += 1
        elif op == "restart":
            e.restart_window(now)
    for deferred, want, unshown in made:
        assert deferred.results() == want
        assert deferred.unshown() == unshown


def _drive(read_every_tick: bool, ops: list[tuple[str, int]]) -> tuple[list[Any], dict[str, Any]]:
    checks = [{"metric": "error_rate", "max": "5%"}, {"metric": "latency_p99", "max": "400ms"}]
    d = Driver(Analyzer("r", spec(checks=checks), gates=("step",)))
    for op, arg in ops:
        kw = op_kwargs(op, arg)
        candidate = (10, arg % 4)
        d.tick(traffic(d.weight / 100, candidate=candidate, candidate_slow=arg % 3), **kw)
        if read_every_tick:
            d.a.checks  # noqa: B018 (made now)
    return [ev.to_dict() for ev in d.events()], encode(d.a)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tick", "tick", "tick", "pause", "resume", "gate"]), st.integers(0, 11)
        ),
        max_size=60,
    )
)
def test_an_analyzer_read_every_tick_decides_as_one_never_read(ops: list[tuple[str, int]]) -> None:
    eager_events, eager_state = _drive(True, ops)
    lazy_events, lazy_state = _drive(False, ops)
    assert lazy_events == eager_events
    assert lazy_state == eager_state


def test_a_threshold_check_named_guard_is_made_at_once() -> None:
    checks = [{"name": "guard", "metric": "error_rate", "max": "5%"}]
    d = Driver(Analyzer("r", spec(checks=checks, guard=None)))
    d.run(3)
    assert d.a._checks._thresholds is None  # made at once: nothing pending
    assert [c.name for c in d.a.checks] == ["guard"]
    assert not math.isnan(d.now)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(CHECKS), unique_by=lambda c: c["metric"]))
def test_whether_the_results_read_the_histogram_is_known_from_the_spec(
    checks: list[dict[str, Any]],
) -> None:
    # `Evidence` works out once per spec what `DeferredThresholds` would from its checks
    e = Evidence(spec(checks=checks), path_class_slots=2)
    deferred, _ = e.evaluate_deferred(1.0)
    afresh = DeferredThresholds(1.0, e.window, list(e.threshold_checks), 0.05, 0)
    assert deferred._needs_latency == afresh._needs_latency
    assert afresh._needs_latency == any(c.metric in LATENCY_QUANTILES for c in e.threshold_checks)
