"""The tick's hold path written out decides as the calls it replaced: an analyzer ticked with
the previous code of `Analyzer.tick` and the steps it called (kept here verbatim, with the
latency comparison's previous key) and one ticked with the current code, on the same random
ticks (health coming and going, revisions and specs changing, gate answers, commands, slow
and failing requests), make the same actions, the same results when read and the same saved
state, tick after tick.

The reference pins the written-out path to the calls it replaced, not the behaviour as such:
a change that means to make the tick decide differently changes the reference with it."""

from __future__ import annotations

import json
import math
from typing import Any, Final

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Rollout, Step
from splitproxy.dataplane.health import CandidateHealth
from splitproxy.rollout import ab, bluegreen, commands, holds, shadow
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import encode
from splitproxy.rollout.deferred import DeferredThresholds
from splitproxy.rollout.evidence import (
    EAGER_NAMES,
    Evidence,
    StepWindow,
    WindowOutcome,
)
from splitproxy.rollout.frozen import guard_lead_ceiling, guard_loose_ceiling, surely_below
from splitproxy.rollout.kept import Kept
from splitproxy.rollout.messages import (
    Action,
    CheckResult,
    Emit,
    GateResult,
    ManualCommand,
    Observation,
    SetWeight,
)
from splitproxy.rollout.phases import ACTIVE
from splitproxy.rollout.readiness import is_healthy
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.results import LazyResult, StaleResult, guard_result, latency_result
from splitproxy.rollout.results import _guard as _guard_made
from splitproxy.rollout.sequential import PathClassTests, RateGuard
from tests.unit.rollout.drive import traffic

_EAGER_NAMES: Final = frozenset({"guard", shadow.TEST_NAME})

CHECKS: Final = [
    {"metric": "error_rate", "max": "2%"},
    {"metric": "latency_p99", "max": "400ms"},
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable"},
]


def _spec(interval: int, min_requests: int, guard: bool) -> Rollout:
    data: dict[str, Any] = {
        "steps": [10, 25, 50],
        "interval": f"{interval}s",
        "min_requests": min_requests,
        "checks": CHECKS,
        "progress_deadline": "40s",
        "unhealthy_timeout": "5s",
    }
    if not guard:
        data["guard"] = None
    return Rollout.model_validate(data)


class _OldEvidence(Evidence):
    """The evaluation's previous code (verbatim): the comparisons asked through their methods
    and `Kept.get`, the latency one keyed on tuples of the thresholds and the tests. (Its
    thresholds, stable's quantiles drawn every tick over the ticks before it, went with the
    tenth round: they are drawn over the closed slots now, `trailing`, by the code both use.)"""

    def evaluate_deferred(
        self, now: float
    ) -> tuple[DeferredThresholds, tuple[CheckResult | LazyResult, ...]]:
        self.detach()  # the previous results may still be read, once this window changed
        deferred = self._deferred = DeferredThresholds(
            now,
            self.window,
            self.threshold_checks,
            self.spec.alpha,
            self.windows_judged,
            self.threshold_latency,
        )
        out: list[CheckResult | LazyResult] = []
        if self.external_checks:
            out += [self._external_check(c) for c in self.external_checks]
        base = self.baseline
        if base is not None:  # blue/green bake: against stable's numbers before the switch
            if self.error_compare is not None:
                out.append(base.error_check(self.error_compare.key, self.alpha.error))
            if self.latency_compare is not None:
                compare = self.latency_compare
                out.append(base.latency_check(compare.key, self.alpha.latency, compare.tolerance))
        else:
            if self.error_compare is not None and self.errors_test is not None:
                out.append(self._error_compare(self.compare_keys[0], self.errors_test))
            if self.latency_compare is not None:
                out.append(self._latency_compare(self.compare_keys[1]))
        guard = self.guard
        if guard is not None:  # kept while the guard saw no request
            alpha = self.alpha.guard
            key = (guard, guard.changes, alpha)
            out.append(self._kept[2].get(key, guard_result, guard, 1 / alpha))
        return deferred, tuple(out)

    def _error_compare(self, name: str, test: PathClassTests) -> LazyResult:
        units = self.units
        key = (test, self.error_changes, name, self.alpha.error, len(units), units.skipped)
        return self._kept[0].get(key, self._error_lazy, name, test)

    def _latency_compare(self, name: str) -> LazyResult:
        thresholds = tuple(self.thresholds.items())
        tests = tuple(self.latency_tests.values())
        key = (name, self.alpha.latency, thresholds, self.latency_changes, *self.latency_tests)
        key += tests
        return self._kept[1].get(key, self._old_latency_lazy, name, thresholds, tests)

    def _old_latency_lazy(
        self,
        name: str,
        thresholds: tuple[tuple[float, float], ...],
        tests: tuple[RecoveringTest, ...],
    ) -> LazyResult:
        tolerance = self.latency_compare.tolerance if self.latency_compare else 0.0
        return latency_result(name, tests, thresholds, tolerance, 1 / self.alpha.latency)


class _OldAnalyzer(Analyzer):
    """`Analyzer` with its tick's previous code (verbatim but for names)."""

    def __init__(self, route: str, spec: Rollout, **kw: Any) -> None:
        super().__init__(route, spec, **kw)
        self.evidence = _OldEvidence(spec, path_class_slots=self.path_class_slots)

    def tick(self, now: float, observation: Observation) -> list[Action]:
        self._actions = []
        elapsed = 0.0 if self.last_now is None else max(0.0, now - self.last_now)
        if self.phase == "progressing":
            self.active_time += elapsed
        readiness, health = self.readiness, observation.health
        if readiness.ready_at is None:
            readiness.elapse(elapsed, counting=self._counting())
        self.last_now, self.health = now, health

        fresh = self._follow_revision(now, observation.candidate)
        if readiness.ready_at is None:
            readiness.see(now, health)
        evidence = self.evidence
        if self.phase in ACTIVE and not fresh:
            window = evidence.window
            window.start = min(now, window.start + readiness.unserved(now, elapsed, health))
        judging = self.phase in ACTIVE and not fresh and readiness.judging(now, health)
        read_after = bool(observation.gates or observation.tests or observation.commands)
        evidence.fold(now, observation.samples, tests=judging, read_after=read_after)
        shadow.fold(self, observation.mirror, judging)
        ab.fold(self, now, observation.ab, fresh)
        evidence.record_external(now, observation.external)
        for result in observation.gates:
            holds.gate_result(self, now, result)
        for outcome in observation.tests:
            bluegreen.test_outcome(self, now, outcome)
        for command in observation.commands:
            commands.carry_out(self, now, command)
        if self.phase in ACTIVE:
            self._defer_checks(now)
            self._judge(now)
        else:
            self.checks = ()
        self._candidate_health(now)
        deadline = self.deadline
        if self.phase == "progressing" and deadline is not None and self.active_time > deadline:
            self._pause(now, "max_duration", f"still progressing after {deadline:g}s")
        if self.phase in ("progressing", "waiting"):
            self._progress(now)
        self.check_hold()
        actions, self._actions = self._actions, []
        return actions

    def _defer_checks(self, now: float) -> None:
        thresholds, rest = self.evidence.evaluate_deferred(now)
        eager = not _EAGER_NAMES.isdisjoint(self.evidence.threshold_keys)
        self._checks.defer(thresholds, rest + shadow.checks(self), eager=eager)

    def _judge(self, now: float) -> None:
        if shadow.judge(self, now):
            return
        guard = None
        failing = []
        for r in self._checks.anytime():
            if r.name == "guard":
                guard = r
            if r.kind == "compare" and r.verdict == "fail":
                failing.append(r)
        if guard is not None and guard.verdict == "fail":
            if self.evidence.stable_breaching():
                self.evidence.restart_guard()
                if self.phase != "paused":
                    both = "candidate and stable both above the guard's error rate"
                    self._pause(now, "incident", f"{both}: incident")
                return
            self._rollback(now, "the guard tripped: candidate error rate far above the cap")
            return
        if failing:
            names = ", ".join(r.name for r in failing)
            self._rollback(now, f"worse than stable: {names}")

    def _candidate_health(self, now: float) -> None:
        readiness, spec = self.readiness, self.spec
        if self.phase not in ("progressing", "waiting"):
            return
        if not readiness.ready and readiness.overdue(spec.progress_deadline):
            limit = f"{spec.progress_deadline:g}s"
            self._rollback(now, f"candidate never became ready (progress deadline {limit})")
            return
        if readiness.ready_at is None or is_healthy(self.health):
            readiness.unhealthy_since, readiness.strikes = None, 0
            return
        timeout = spec.unhealthy_timeout
        result = readiness.check(now, self.health, timeout)
        if result is not None:
            self._checks.append(result)
        if readiness.strike(now, self.health, timeout) and result is not None:
            since = readiness.unhealthy_since
            self._failure(now, f"candidate unavailable since t={since:g} for {result.value:g}s")

    def _progress(self, now: float) -> None:
        if self.phase == "waiting":
            holds.waiting(self, now)
            return
        hold = self.hold
        if hold is not None:
            self._wait_for(now, hold.what, hold.step, until=hold.until)
            return
        if not is_healthy(self.health):
            return
        if bluegreen.in_bake(self):
            bluegreen.bake(self, now)
            return
        if self.spec.ab is not None:
            ab.progress(self, now)
            return
        step = self.plan[self.step_index]
        if self._window_outcome(now, step) == "pass":
            self._advance(now)


HEALTH: Final = (
    None,
    CandidateHealth(ready=True, healthy=True, unhealthy_since=None),
    CandidateHealth(ready=False, healthy=False, unhealthy_since=None),
    CandidateHealth(ready=True, healthy=False, unhealthy_since=None),
    CandidateHealth(ready=True, healthy=False, unhealthy_since=3.0),
)
# one tick: health, revision, traffic (candidate requests, errors, slow), a gate answer or a
# command, the spec reloaded (a step's interval), whether its results are read after it
TICK = st.tuples(
    st.sampled_from([0] * 8 + [1] * 4 + [2, 3, 4]),
    st.sampled_from(["v2"] * 12 + ["v3", None]),
    st.integers(0, 12),
    st.integers(0, 3),
    st.integers(0, 4),
    st.sampled_from([None] * 8 + ["gate", "gate", "gate-no", "pause", "resume", "retry"]),
    st.sampled_from([None] * 12 + [3, 8]),
    st.booleans(),
)


def _observation(a: Analyzer, now: float, tick: tuple[Any, ...]) -> Observation:
    health, revision, n, errors, slow, event, _, _ = tick
    weight = a.weight or 0.0
    p = min(0.9, max(0.05, weight / 100))
    samples = traffic(
        p,
        stable=(90, int(now) % 2),
        candidate=(n, min(errors, n)),
        candidate_slow=min(slow, n),
        stable_slow=int(now) % 3,
    )
    gates: list[GateResult] = []
    orders: list[ManualCommand] = []
    if event in ("gate", "gate-no") and a.hold is not None:
        gates.append(GateResult(a.hold.what, a.hold.step, event == "gate"))  # type: ignore[arg-type]
    elif event in ("pause", "resume", "retry"):
        orders.append(ManualCommand(event, "cli", "test"))
    return Observation(revision, samples, orders, gates, {}, HEALTH[health])


def _shown(actions: list[Action]) -> list[Any]:
    return [
        a.event.to_dict() if isinstance(a, Emit) else a.percent if isinstance(a, SetWeight) else a
        for a in actions
    ]


@settings(max_examples=120, deadline=None)
@given(
    st.integers(2, 8),
    st.integers(3, 30),
    st.booleans(),
    st.sampled_from([(), ("step",)]),
    st.lists(TICK, min_size=1, max_size=120),
)
def test_the_hold_path_decides_as_the_calls_it_replaced(
    interval: int, min_requests: int, guard: bool, gates: tuple[Any, ...], ticks: list[Any]
) -> None:
    spec = _spec(interval, min_requests, guard)
    new = Analyzer("shop", spec, gates=gates)
    old = _OldAnalyzer("shop", spec, gates=gates)
    kinds: set[str] = set()
    for i, tick in enumerate(ticks):
        now = float(i)
        reload = tick[6]
        if reload is not None:
            again = _spec(reload, min_requests, guard)
            new.reconfigure(again)
            old.reconfigure(again)
        got = new.tick(now, _observation(new, now, tick))
        want = old.tick(now, _observation(old, now, tick))
        assert _shown(got) == _shown(want)
        assert (new.phase, new.weight, new.step_index, new.hold) == (
            old.phase,
            old.weight,
            old.step_index,
            old.hold,
        )
        if tick[7]:  # results read on some ticks only: unread, they are never made
            assert new.checks == old.checks
        kinds.update(e.kind for e in new.history[-len(got) :] if got)
    assert json.dumps(encode(new), sort_keys=True) == json.dumps(encode(old), sort_keys=True)
    KINDS.update(kinds)


KINDS: set[str] = set()  # what the examples got to (see the test below)


def test_the_examples_reach_steps_and_failures() -> None:
    test_the_hold_path_decides_as_the_calls_it_replaced()
    assert {"step", "check_failed", "rolled_back", "paused"} <= KINDS, KINDS


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0, 100),
    st.floats(0, 100),
    st.integers(0, 200),
    st.floats(0, 60),
    st.integers(0, 150),
    st.sampled_from(["hold", "fail"]),
)
def test_a_window_too_short_or_too_small_holds_without_reading_a_result(
    now: float, start: float, requests: int, interval: float, wanted: int, on_no_data: str
) -> None:
    """What `Analyzer._progress` returns on without asking: `Evidence.window_outcome` holds
    there, reading no result and counting no judged window."""
    spec = Rollout.model_validate(
        {"steps": [10], "interval": "30s", "min_requests": 10, "on_no_data": on_no_data}
    )
    step = Step.model_construct(weight=10.0, interval=interval, min_requests=wanted, pause=None)
    e = Evidence(spec, path_class_slots=0)
    e.window = StepWindow(start=start, requests=requests)

    def unread() -> Any:
        raise AssertionError("a result was read")
        yield

    if now - start < interval or 0 < requests < wanted:
        assert e.window_outcome(now, step, unread()) == WindowOutcome("hold")
        assert e.windows_judged == 0


def test_the_step_needs_follow_a_new_spec_of_the_same_digest() -> None:
    """The kept needs are the evidence's spec's: a reload that keeps the digest keeps them,
    and a new step list (another digest) is read afresh."""
    a = Analyzer("shop", _spec(5, 3, True))
    for i in range(12):
        a.tick(float(i), _observation(a, float(i), (0, "v2", 10, 0, 0, None, None, False)))
    assert a.phase == "progressing"
    kept = a._step_needs
    assert kept[0] is a.plan[a.step_index]
    assert kept[2:] == (5.0, 3)
    a.reconfigure(_spec(5, 3, True))  # the same digest: the running spec's needs
    a.tick(12.0, _observation(a, 12.0, (0, "v2", 10, 0, 0, None, None, False)))
    assert a._step_needs[2:] == (5.0, 3)
    a.reconfigure(_spec(9, 3, True))
    for i in range(13, 30):
        a.tick(float(i), _observation(a, float(i), (0, "v2", 10, 0, 0, None, None, False)))
    assert a._step_needs[2:] == (9.0, 3)


def test_the_latency_comparison_is_kept_for_equal_thresholds_in_another_dict() -> None:
    """The key holds the thresholds' dict, compared by value: a new dict with the same values
    keeps the result, other values or new tests make another."""
    e = Evidence(_spec(5, 3, True), path_class_slots=0)
    e.fresh_tests()

    def latency() -> Any:
        _, rest = e.evaluate_deferred(0.0)
        return next(r for r in rest if r.name == "latency_vs_stable")

    e.thresholds = {0.95: 0.25, 0.99: 0.5}
    first = latency()
    e.thresholds = {0.95: 0.25, 0.99: 0.5}
    assert latency() is first
    e.thresholds = {0.95: 0.25, 0.99: 0.75}
    second = latency()
    assert second is not first
    assert "750ms" in second.result().detail
    e.fresh_tests()
    assert latency() is not second
    assert isinstance(e._kept[1], Kept)
    assert not math.isnan(second.result().value or 0.0)


def test_the_eager_names_are_the_shadows_and_the_guards() -> None:
    assert frozenset({"guard", shadow.TEST_NAME}) == EAGER_NAMES


BATCH = st.tuples(st.sampled_from([0.05, 0.1, 0.25, 0.5]), st.integers(0, 6), st.integers(0, 6))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(BATCH, max_size=4), max_size=12),
    st.sampled_from([0.5, 5.0, 222.0]),
    st.booleans(),
)
def test_a_latency_result_on_the_evidences_dicts_is_the_one_on_tuples(
    ticks: list[list[tuple[float, int, int]]], bar: float, detach: bool
) -> None:
    """The tick hands the latency result the evidence's dicts themselves (no tuple of the
    tests and the thresholds per tick): the same verdict and the same numbers, made at once
    or later, after a snapshot or refused when stale, as with the tuples."""
    tests = {0.95: RecoveringTest(), 0.99: RecoveringTest()}
    thresholds = {0.95: 0.2, 0.99: 0.45}
    for batches in ticks:
        on_dicts = latency_result("latency_vs_stable", tests, thresholds, 0.1, bar)
        on_tuples = latency_result(
            "latency_vs_stable", tuple(tests.values()), tuple(thresholds.items()), 0.1, bar
        )
        assert on_dicts.verdict == on_tuples.verdict
        assert on_dicts.pending == on_tuples.pending
        expected = on_tuples.result()
        if detach:
            on_dicts.detach()
        for p, x, y in batches:
            tests[0.95 if x % 2 else 0.99].update(p, x, y)
            if y == 5:
                tests[0.95].restart()
        if on_dicts.pending and not detach and batches:
            try:
                on_dicts.result()
            except StaleResult:
                continue
        assert on_dicts.result() == expected


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0.01, 0.05, 0.2, 0.6]),
    st.integers(1, 60),
    st.integers(1, 5),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans()), max_size=80),
)
def test_the_guards_kept_lead_never_hides_a_crossing(
    cap: float, block: int, keep: int, batches: list[tuple[int, int, bool]]
) -> None:
    """The guard's ceiling read from its kept leading component is the full pass's (to a few
    ulps): components started and dropped, asked on some ticks only, a verdict at any bar."""
    guard = RateGuard(cap, block=block, keep=keep)
    for ok, errors, ask in batches:
        guard.update(ok + errors, errors)
        if not ask:
            continue  # (the lead then found again, or kept, after several batches)
        lead = guard_lead_ceiling(guard)
        loose = guard_loose_ceiling(guard._comps, guard._ab)
        assert abs(lead - loose) <= 1e-9 * max(1.0, abs(loose))
        bars = (2.0, 20.0, 1000.0, math.exp(loose) * (1 + 3e-6) if loose < 700 else 2.0)
        if lead == loose:  # (else a few ulps apart: the same verdict but at a bar between)
            assert [surely_below(lead, b) for b in bars] == [surely_below(loose, b) for b in bars]
        assert guard_result(guard, 1000.0).result() == _guard_made(guard, 1000.0)
