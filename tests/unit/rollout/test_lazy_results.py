"""The comparisons' and the guard's results made when read (`results`, `frozen`), against the
full computation.

- A snapshot makes the live test's numbers bit for bit (log e-values, the debt text, the worst
  class, the guard's requests), and still the same after the live test moved on.
- The ceilings are sound: whenever `surely_below` says an e-value is below its bar, the e-value
  made in floats is below it (bars put right at the e-value included).
- Over any run of ticks, each tick's lazy results carry the verdict of the evaluation before
  this change (kept verbatim below) and, made at once, after the next tick's fold (as the
  events of gate answers and commands read them) or at the end, equal its results in every
  field. (Older ones are held by no one: `Analyzer.checks` holds the latest tick's.)
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.deferred import Checks, DeferredThresholds
from splitproxy.rollout.evidence import Evidence, StepWindow, guard_detail, latency_detail
from splitproxy.rollout.frozen import (
    FrozenFamily,
    FrozenMixture,
    GuardView,
    ceiling,
    family_ceiling,
    freeze,
    guard_lead_ceiling,
    guard_loose_ceiling,
    mixtures_ceiling,
    surely_below,
)
from splitproxy.rollout.messages import CheckResult, Sample, Verdict
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.results import (
    LazyResult,
    StaleResult,
    error_result,
    guard_result,
    latency_result,
    made,
)
from splitproxy.rollout.sequential import (
    AttributionTest,
    PathClassTests,
    RateGuard,
    attribution_log_e,
    mean_log_e,
    split_alpha,
)
from splitproxy.rollout.units import UnitTable
from tests.unit.rollout.drive import spec
from tests.unit.rollout.test_evaluate_memo import TICK, samples_of

P = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 0.9])
BATCH = st.tuples(P, st.integers(0, 30), st.integers(0, 30))  # p, candidate, stable events
OPS = st.lists(st.one_of(BATCH, st.just("restart")), max_size=40)


def _mixture(ops: list[Any], keep: int) -> RecoveringTest:
    test = RecoveringTest(keep=keep)
    for op in ops:
        if op == "restart":
            test.restart()
        else:
            test.update(*op)
    return test


def _exp(log_e: float) -> float:
    return math.exp(log_e) if log_e < 700 else math.inf


# --- snapshots ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(OPS, OPS, st.integers(1, 5))
def test_a_mixture_snapshot_is_the_live_test_then_and_later(
    ops: list[Any], later: list[Any], keep: int
) -> None:
    test = _mixture(ops, keep)
    frozen = freeze(test)
    assert isinstance(frozen, FrozenMixture)
    then = (test.log_e, test.e_value, test.debt(), test.events)
    assert (frozen.log_e, frozen.e_value, frozen.debt(), frozen.events) == then
    for op in later:  # the live test moves on; the snapshot does not
        test.restart() if op == "restart" else test.update(*op)
    assert (frozen.log_e, frozen.e_value, frozen.debt(), frozen.events) == then


@settings(max_examples=200, deadline=None)
@given(st.lists(BATCH, max_size=30), st.lists(BATCH, max_size=10))
def test_an_attribution_snapshot_is_the_live_test(batches: list[Any], later: list[Any]) -> None:
    test = AttributionTest()
    for b in batches:
        test.update(*b)
    frozen = freeze(test)
    then = (test.log_e, test.e_value, test.events)
    assert (frozen.log_e, frozen.e_value, frozen.events) == then
    for b in later:
        test.update(*b)
    assert (frozen.log_e, frozen.e_value, frozen.events) == then


CLASS = st.sampled_from(["/a", "/b", "/c", "/d", "~other"])


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(st.one_of(st.tuples(BATCH, CLASS), st.just("restart")), max_size=40),
    st.booleans(),
)
def test_a_family_snapshot_is_the_live_family(slots: int, ops: list[Any], mixed: bool) -> None:
    factory = RecoveringTest if mixed else AttributionTest
    family = PathClassTests(slots, factory=factory)
    for op in ops:
        if op == "restart":
            for t in family.tests():
                if isinstance(t, RecoveringTest):
                    t.restart()
        else:
            (p, x, y), name = op
            family.update(p, x, y, name)
    frozen = FrozenFamily(family)
    assert frozen.log_e == family.log_e
    assert frozen.e_value == family.e_value
    worst, live = frozen.worst_class(), family.worst_class()
    assert (worst is None) == (live is None)
    if worst is not None and live is not None:
        assert (worst[0], worst[1].e_value) == (live[0], live[1].e_value)
    assert family_ceiling(frozen) == family_ceiling(family)
    _sound(family_ceiling(family), family.log_e)


GUARD_OPS = st.lists(st.tuples(st.integers(0, 80), st.integers(0, 20)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0.001, 0.01, 0.05, 0.2, 0.4, 0.9]),
    st.sampled_from([(2.0, 4.0, 8.0), (2.0,), (1.5, 3.0), (4.0, 8.0, 16.0, 32.0)]),
    st.integers(1, 60),
    st.integers(1, 12),
    GUARD_OPS,
    GUARD_OPS,
)
def test_a_guard_view_is_the_live_guard_and_its_ceiling_is_sound(
    cap: float,
    multipliers: tuple[float, ...],
    block: int,
    keep: int,
    ops: list[tuple[int, int]],
    later: list[tuple[int, int]],
) -> None:
    guard = RateGuard(cap, multipliers=multipliers, block=block, keep=keep)
    for n, x in ops:
        guard.update(n + x, x)
        view = GuardView(guard)
        assert (view.log_e, view.e_value, view.requests) == (
            guard.log_e, guard.e_value, guard.requests,
        )  # fmt: skip
        _sound(view.ceiling(), guard.log_e)
        loose = guard_loose_ceiling(guard._comps, guard._ab)
        _sound(loose, guard.log_e)
        assert loose >= view.ceiling() - 1e-9
        lead = guard_lead_ceiling(guard)  # the same, from the component kept in the lead
        _sound(lead, guard.log_e)
        assert lead == loose or abs(lead - loose) <= 1e-9 * max(1.0, abs(loose))
    view = GuardView(guard)
    then = (guard.log_e, guard.requests)
    restored = RateGuard.from_dict(guard.to_dict())
    assert (restored.log_e, restored.requests) == then
    for n, x in later:
        guard.update(n + x, x)
    assert (view.log_e, view.requests) == then


def test_the_loose_guard_ceiling_gives_up_on_huge_components() -> None:
    guard = RateGuard(0.05)
    guard.update(2**20, 0)
    assert guard_loose_ceiling(guard._comps, guard._ab) == 0.0  # at its size limit
    guard.update(1, 1)
    assert guard_loose_ceiling(guard._comps, guard._ab) == math.inf
    assert guard_lead_ceiling(guard) == math.inf  # kept lead or not
    assert guard_lead_ceiling(guard) == math.inf
    assert GuardView(guard).ceiling() < 3.0  # the tight one answers (log 8: the newest one)


def _sound(top: float, log_e: float) -> None:
    """``top`` is a ceiling of ``log_e``: any bar `surely_below` passes is above the e-value
    as the results make it, bars right at the e-value included."""
    e = _exp(log_e)
    assert top == math.inf or log_e <= top + 1e-9
    for bar in (e, math.nextafter(e, math.inf), e * (1 + 1e-12), e * (1 + 2e-6), e * 1.5, 2.0):
        if 1.0 <= bar < math.inf and surely_below(top, bar):
            assert e < bar, (top, log_e, bar)


@settings(max_examples=200, deadline=None)
@given(OPS, st.integers(1, 5))
def test_a_mixture_ceiling_is_sound(ops: list[Any], keep: int) -> None:
    test = _mixture(ops, keep)
    _sound(ceiling(freeze(test).leaves()), test.log_e)
    other = _mixture(ops[::-1], keep)
    both = [*freeze(test).leaves(), *freeze(other).leaves()]
    assert mixtures_ceiling((test, other)) == ceiling(both)  # read in place, the same


@given(st.lists(st.lists(st.floats(allow_nan=True), min_size=1, max_size=8), max_size=4))
def test_the_ceiling_of_any_ratios_bounds_their_e_values(leaves: list[list[float]]) -> None:
    top = ceiling(leaves)
    assert top >= 0.0
    assert all(v <= top for leaf in leaves for v in leaf if not math.isnan(v))
    for leaf in leaves:  # a NaN the ceiling skips makes its e-value NaN: never past a bar
        log_e = attribution_log_e(-math.log(len(leaf)), leaf)
        assert math.isnan(log_e) or log_e <= top + 1e-9 or top == math.inf


# --- the evaluation, lazy against the full computation -----------------------------------


def _error_then(e: Evidence, name: str, test: PathClassTests) -> CheckResult:
    """`Evidence._error_result` before the results were made lazily (verbatim)."""
    bar = 1 / e.alpha.error
    value = test.e_value
    detail = ""
    worst = test.worst_class()
    if worst is not None:
        detail = f"worst path class {worst[0]}: e={worst[1].e_value:.3g}"
    if isinstance(test.pooled, RecoveringTest):
        detail = "; ".join(d for d in (f"pooled {test.pooled.debt()}", detail) if d)
    if len(e.units) or e.units.skipped:
        detail += f"; sticky users counted once: {len(e.units)}"
        detail += f" (table full, {e.units.skipped} errors left out)" * bool(e.units.skipped)
    events = test.pooled.events
    verdict: Verdict = "fail" if value >= bar else ("pass" if events else "no_data")
    return CheckResult(
        name, "compare", value, None, bar, events, verdict, detail, None, "error_rate", "e_value"
    )


def _latency_then(e: Evidence, name: str) -> CheckResult:
    """`Evidence._latency_result` before the results were made lazily (verbatim)."""
    thresholds = e.thresholds
    bar = 1 / e.alpha.latency
    log_e = mean_log_e([t.log_e_at(1.0) for t in e.latency_tests.values()])
    value = math.exp(log_e) if log_e < 700 else math.inf
    events = sum(t.events for t in e.latency_tests.values())
    tolerance = e.latency_compare.tolerance if e.latency_compare else 0.0
    detail = latency_detail(tuple(thresholds.items()), tolerance)
    if not thresholds and not events:
        detail = "stable history too short"
        return CheckResult(
            name, "compare", value, None, bar, 0, "no_data", detail, None, "latency", "e_value"
        )
    verdict: Verdict = "fail" if value >= bar else ("pass" if events else "no_data")
    return CheckResult(
        name, "compare", value, None, bar, events, verdict, detail, None, "latency", "e_value"
    )


def _guard_then(e: Evidence, guard: RateGuard) -> CheckResult:
    """`Evidence._guard_result` before the results were made lazily (verbatim)."""
    bar, value = 1 / e.alpha.guard, guard.e_value
    verdict: Verdict = "fail" if value >= bar else "pass"
    return CheckResult(
        "guard", "guard", value, None, bar, guard.requests, verdict, guard_detail(guard.cap),
        None, "error_rate", "e_value",
    )  # fmt: skip


CHECKS = [
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable", "tolerance": 0.1},
]


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.tuples(TICK, st.sampled_from(["now", "later", "never"])), max_size=40),
    st.sampled_from([0.01, 0.2, 0.9, 1.0]),  # α: large ones put the bars in the e-values' reach
    st.sampled_from([0.01, 0.05, 0.3]),  # the guard's cap
)
def test_lazy_results_are_the_full_ones_whenever_read(
    ticks: list[tuple[Any, str]], alpha: float, cap: float
) -> None:
    rollout = spec(checks=CHECKS, alpha=min(alpha, 0.2), guard={"error_rate": cap})
    e = Evidence(rollout, path_class_slots=2)
    e.alpha = split_alpha(alpha, error=True, latency=True, guard=True)  # beyond the file's 0.2
    e.fresh_tests()
    e.units = UnitTable(cap=3)
    now = 0.0
    later: list[tuple[LazyResult | CheckResult, CheckResult]] = []
    for (gap, cells, op), when in ticks:
        now += gap
        e.fold(now, samples_of(cells), tests=True)
        if op == "restore" and e.errors_test is not None:  # as codec.decode does
            data = e.errors_test.to_dict()
            e.errors_test = PathClassTests.from_dict(data, RecoveringTest.from_dict, RecoveringTest)
        for r, then_result in later:  # the previous tick's, read after this tick's fold
            assert made(r) == then_result
        later = []
        _, rest = e.evaluate_deferred(now)
        assert e.errors_test is not None
        assert e.guard is not None
        then = {
            "error_rate_vs_stable": _error_then(e, "error_rate_vs_stable", e.errors_test),
            "latency_vs_stable": _latency_then(e, "latency_vs_stable"),
            "guard": _guard_then(e, e.guard),
        }
        assert {r.name for r in rest} == set(then)
        for r in rest:
            assert r.verdict == then[r.name].verdict  # the tick's decision
            if when == "now":
                assert made(r) == then[r.name]
            elif when == "later":
                later.append((r, then[r.name]))
    for r, then_result in later:
        assert made(r) == then_result


def test_checks_append_and_judged_leave_the_lazy_results_unmade() -> None:
    pending = guard_result(RateGuard(0.05), 1000.0)
    expected = guard_result(RateGuard(0.05), 1000.0).result()
    checks = Checks()
    window = StepWindow()
    deferred = DeferredThresholds(1.0, window, (), 0.01, 0)
    checks.defer(deferred, (pending,), eager=False)
    health = CheckResult("candidate_health", "health", 3.0, None, 10.0, 0, "pass")
    checks.append(health)
    assert pending.pending
    assert [r.name for r in checks.anytime()] == ["guard", "candidate_health"]
    judging = checks.judged()
    assert deferred.pending  # nothing made until the outcome reads it
    judged = [(r.name, r.kind, r.verdict) for r in judging]
    assert pending.pending  # the window's outcome reads the verdicts only
    assert checks.get() == (expected, health)
    assert judged == [(r.name, r.kind, r.verdict) for r in checks.get()]
    assert not pending.pending
    checks.append(health)  # after the results were made: appended to them
    assert checks.get() == (expected, health, health)


def test_a_result_read_after_its_tests_changed_unsnapshotted_refuses() -> None:
    """The safety net behind `Evidence.fold`'s detaching: a wrong number is never shown."""
    guard = RateGuard(0.05)
    result = guard_result(guard, 1000.0)
    guard.update(10, 0)
    with pytest.raises(StaleResult):
        result.result()
    tests = (RecoveringTest(), RecoveringTest())
    latency = latency_result("latency_vs_stable", tests, ((0.95, 0.1),), 0.0, 222.0)
    tests[1].update(0.5, 1, 1)
    with pytest.raises(StaleResult):
        latency.result()
    family = PathClassTests(2, factory=RecoveringTest)
    errors = error_result("error_rate_vs_stable", family, 222.0, 0, 0)
    family.update(0.5, 1, 0, "/a")
    with pytest.raises(StaleResult):
        errors.result()


def test_a_detached_result_reads_as_it_was() -> None:
    guard = RateGuard(0.05)
    guard.update(40, 1)
    result = guard_result(guard, 1000.0)
    then = guard_result(guard, 1000.0).result()
    result.detach()
    guard.update(10, 0)
    assert result.result() == then


def test_a_fold_with_no_reader_after_it_leaves_the_results_to_go_stale() -> None:
    """`Evidence.fold(read_after=False)` takes no snapshot: a result of the previous
    evaluation read all the same refuses (`StaleResult`) instead of showing new numbers;
    with a reader after it (the default), it reads as it was."""
    for read_after in (False, True):
        e = Evidence(spec(checks=CHECKS), path_class_slots=2)
        e.fresh_tests()
        e.fold(
            1.0, [Sample("candidate", 20, 1, 0.5, "/a"), Sample("stable", 20, 0, 0.5)], tests=True
        )
        _, rest = e.evaluate_deferred(1.0)
        guard = next(r for r in rest if r.name == "guard")
        assert isinstance(guard, LazyResult)
        assert guard.pending
        then = _guard_then(e, e.guard)  # type: ignore[arg-type]
        e.fold(2.0, [Sample("candidate", 20, 0, 0.5, "/a")], tests=True, read_after=read_after)
        if read_after:
            assert guard.result() == then
        else:
            with pytest.raises(StaleResult):
                guard.result()


def test_a_threshold_check_after_a_fold_with_no_reader_refuses_rather_than_show_new_numbers() -> (
    None
):
    """The threshold checks' results (`DeferredThresholds`) follow the same rule: after a fold
    with no reader after it, no copy of the step window's histogram is kept, and a latency
    check read all the same raises `StaleResult`; with a reader after the fold it reads as it
    was, made then (the counts' checks, which copy their numbers at once, read as they were
    either way)."""
    checks = [{"metric": "latency_p99", "max": "50ms"}, {"metric": "error_rate", "max": "1%"}]
    for read_after in (False, True):
        e = Evidence(spec(checks=checks), path_class_slots=2)
        e.fresh_tests()
        fast = Sample("candidate", 20, 1, 0.5, "/a", latency=((0.01, 20),))
        e.fold(1.0, [fast], tests=True)
        thresholds, _ = e.evaluate_deferred(1.0)
        assert thresholds.pending
        then = DeferredThresholds(1.0, e.window, e.threshold_checks, e.spec.alpha, 0).results()
        slow = Sample("candidate", 20, 0, 0.5, "/a", latency=((1.0, 20),))
        e.fold(2.0, [slow], tests=True, read_after=read_after)
        assert e.window.latency == {0.01: 20, 1.0: 20}
        if read_after:
            assert thresholds.results() == then
        else:
            with pytest.raises(StaleResult):
                thresholds.results()
