"""The evidence of one route's rollout: what the analyzer knows, and how it weighs it (pure).

`Evidence` holds every number the rollout machine (`splitproxy.rollout.analyzer`) decides on,
and answers its questions; it never decides a move itself. It reads no clock (``now`` is
passed in), draws no random number and does no IO.

*Statistics.* Every tick, not only at the end of a step, three anytime-valid tests are
updated (see `splitproxy.rollout.sequential`); each can roll the candidate back at once:

- error rate against stable: randomization-attribution e-processes, pooled and per path
  class, averaged into one;
- latency against stable: attribution e-processes on "slower than stable's trailing q-th
  quantile" for each q (p95 and p99 by default), averaged;
- the guard: a one-sample test that the candidate's error rate is far above the guard's cap.

They share one α per rollout (default 1 %): the guard takes a tenth, the comparison families
split the rest. The e-processes span the whole rollout, across steps, pauses and restarts of
the proxy, so checking them every second costs no validity. Each comparison is a mixture over
start times (`splitproxy.rollout.recovery`): every `RESTART_EVERY` seconds a fresh copy
starts, so evidence in the candidate's favour (a stable-only incident) is not a debt a later
regression must repay. On a sticky route a user's first error counts once
(`splitproxy.rollout.units`), for the guard as well. When the guard
trips and stable's own error rate over the last minute is above the cap as well
(`Evidence.stable_breaching`), it is an incident, not the candidate's fault.

*What is kept.* Stable's trailing latency (about ten minutes, at least 2,000 requests when
available, in 10-s slots), from which `Evidence.fold` draws the thresholds for the latency
test over the slots *closed* before the current one, drawn again only when a slot closes or
ages out (`trailing`): so the thresholds are predictable, fixed before any request they
judge, the current slot's and tick's included; stable's last minute of requests
and errors (for the incident rule); the step's window of candidate traffic for the absolute
checks (`StepWindow`); the external checks' latest values. Requests not routed at random
(``p=None``) count for the absolute checks and the guard, never for the comparisons.

*Checks.* `Evidence.evaluate` judges every check of the spec (thresholds on the window, each
failed only when the window's counts show the rate beyond its line at the window's α,
`splitproxy.rollout.thresholds`;
external values newer than the window, the comparisons and the guard) into `CheckResult` values;
`Evidence.with_ci` adds to a comparison's result the one-sided interval ``[lower, inf)`` for
the candidate/stable rate ratio that inverts the e-process it decides on, at its α, so a
rollback for "worse than stable" always shows a lower bound above 1;
`Evidence.window_outcome` tells whether the step's window has passed, must hold, or failed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from splitproxy.config import (
    LATENCY_QUANTILES,
    CompareCheck,
    MetricCheck,
    PrometheusCheck,
    Rollout,
    Step,
    WebCheck,
)
from splitproxy.rollout.baseline import Baseline
from splitproxy.rollout.deferred import DeferredThresholds, bounded
from splitproxy.rollout.kept import Kept
from splitproxy.rollout.messages import CheckResult, Sample
from splitproxy.rollout.recovery import RESTART_EVERY, RecoveringTest
from splitproxy.rollout.results import (
    Judged,
    LazyResult,
    error_result,
    guard_result,
    latency_result,
    made,
)
from splitproxy.rollout.results import guard_detail as guard_detail  # (where they were)
from splitproxy.rollout.results import latency_detail as latency_detail
from splitproxy.rollout.sequential import (
    AlphaSplit,
    PathClassTests,
    RateGuard,
    lower_confidence_bound,
    mean_log_e,
    split_alpha,
)
from splitproxy.rollout.tally import Cuts, cuts_of, tally
from splitproxy.rollout.trailing import trail_close, trail_quantiles
from splitproxy.rollout.units import RecentUnits, UnitTable

# --- tuning that is not (yet) in the routing file --------------------------------------------

GUARD_MIN_STABLE: Final = 20  # stable requests needed to call an incident
INCIDENT_WINDOW: Final = 15.0  # seconds: "stable fails in the same seconds" as the candidate
INCIDENT_SHARE: Final = 0.5  # stable at this share of the guard's cap or more ...
INCIDENT_RATIO: Final = 3.0  # ... and the candidate at most this many times stable's rate

Outcome = Literal["pass", "hold", "fail"]
# the results the anytime decisions look up by name: the guard, and the shadow's divergence
# test (`shadow.TEST_NAME`)
EAGER_NAMES: Final = frozenset({"guard", "mirror_divergence_guard"})
# the latency check its needs are for; (q, stable requests it needs) per quantile; every q; the
# most any q needs
_Needs = tuple[CompareCheck | None, tuple[tuple[float, int], ...], tuple[float, ...], int]


def min_threshold_requests(q: float) -> int:
    """Stable requests needed before its q-quantile is a usable latency threshold."""
    return math.ceil(20 / (1 - q))


def step_needs(spec: Rollout, step: Step) -> tuple[float, int]:
    """What a step's window needs before it is judged: ``(interval, min_requests)``."""
    interval = step.interval if step.interval is not None else spec.interval
    wanted = step.min_requests if step.min_requests is not None else spec.min_requests
    return interval, wanted


@dataclass(slots=True)
class StepWindow:
    """The candidate's traffic since the current step window started."""

    start: float = 0.0
    requests: int = 0
    errors: int = 0
    latency: dict[float, int] = field(default_factory=dict)
    mirrored: int = 0  # mirrored copies compared with stable's answers (`shadow`)
    diverged: int = 0  # ... and among them, those that diverged
    # ``latency``'s bounds, largest first, as `latency_bounds` last sorted them: buckets are
    # only ever added to a window (counts are positive), so an equal length means the same
    bounds: list[float] | None = field(default=None, compare=False, repr=False)

    def latency_bounds(self) -> list[float]:
        """``sorted(self.latency, reverse=True)``, sorted again only when a bucket was added
        (the threshold checks ask every tick; a tick seldom opens a bucket)."""
        bounds = self.bounds
        if bounds is None or len(bounds) != len(self.latency):
            bounds = self.bounds = sorted(self.latency, reverse=True)
        return bounds


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """Whether the step's window passed, must hold on, or failed (``reason``: why it failed)."""

    outcome: Outcome
    reason: str = ""


# the outcomes without a reason, made once (a frozen dataclass sets each field through
# ``object.__setattr__``: every route's window is asked every tick, and most hold on)
HOLD: Final = WindowOutcome("hold")
PASS: Final = WindowOutcome("pass")


class Evidence:
    """The statistics and the check results of one route's rollout (see the module docstring).

    The e-processes (``errors_test``, ``latency_tests``, ``guard``) exist while a rollout
    runs (`start` creates them, `end` drops them); stable's trailing history (``trail``,
    ``recent``) outlives rollouts."""

    def __init__(self, spec: Rollout, *, path_class_slots: int) -> None:
        self.path_class_slots = path_class_slots
        self.configure(spec)
        self.window = StepWindow()
        self.external: dict[str, tuple[float | None, float]] = {}  # name -> (value, at)
        self.errors_test: PathClassTests | None = None
        self.latency_tests: dict[float, RecoveringTest] = {}
        self.units = UnitTable()  # sticky users whose first error was counted
        self.guard_units = RecentUnits()  # ... and those the guard counted
        self.restart_at: float | None = None  # the comparisons' next fresh start
        self.windows_judged = 0  # step windows judged in this rollout (thresholds' α)
        # the threshold checks' results of the latest `evaluate`, made when first read
        self._deferred: DeferredThresholds | None = None
        self.guard: RateGuard | None = None
        self.baseline: Baseline | None = None  # blue/green, from the switch on
        # stable's trailing latency, kept across rollouts: [slot start, requests, hist]; the
        # histograms keyed by each bound's ordinal (`histograms.ordinal`, see `trailing`)
        self.trail: list[list[Any]] = []
        self.trail_total: dict[int, int] = {}  # the closed slots' sum (all but the open one)
        self.trail_requests = 0  # in every slot, the open one's included
        self.trail_open = False  # the last slot is open (not in the sum yet)
        self.trail_changed = True  # the sum changed: the thresholds are to be drawn again
        # the thresholds' limits as the tally reads them, and the latency check they are for
        self._cuts: tuple[CompareCheck | None, Cuts] = (None, cuts_of(()))
        self.recent: list[list[float]] = []  # [slot start, stable requests, stable errors]
        # per tick, the last INCIDENT_WINDOW seconds: [now, stable n, x, candidate n, x]
        # (not saved: after a restart the incident rule starts from the minute rule alone)
        self.ticks: list[tuple[float, int, int, int, int]] = []
        # stable's trailing quantiles as they were before the latest `fold`
        self.thresholds: dict[float, float] = {}
        self._needs: _Needs = (None, (), (), 0)
        # the comparisons' and the guard's latest results, kept while their inputs do not change
        self._kept: tuple[Kept[LazyResult], Kept[LazyResult], Kept[LazyResult]] = (
            Kept(), Kept(), Kept()
        )  # fmt: skip
        # count the updates and fresh starts of the error and the latency comparisons'
        # tests, which happen here only (`fold`, `_restart_due`; a test replaced is another
        # object): what their kept results are keyed on, cheaper than every component's own
        # change count each tick. One each: once stable's thresholds are in, slow requests
        # come nearly every tick, errors about one tick in ten (0.5 %, 20 a second)
        self.error_changes = self.latency_changes = 0

    def configure(self, spec: Rollout) -> None:
        """Take the rollout spec's checks, α and guard (the running tests are kept)."""
        self.spec = spec
        self.threshold_checks = tuple(  # mirror_divergence is judged by `shadow`
            c for c in spec.checks if isinstance(c, MetricCheck) and c.metric != "mirror_divergence"
        )
        self.threshold_keys = frozenset(c.key for c in self.threshold_checks)
        # a threshold check named like a result the anytime decisions look up by name: the
        # tick's results are then made at once (`Analyzer._defer_checks`)
        self.threshold_eager = not EAGER_NAMES.isdisjoint(self.threshold_keys)
        self.threshold_latency = any(c.metric in LATENCY_QUANTILES for c in self.threshold_checks)
        self.external_checks = tuple(
            c for c in spec.checks if isinstance(c, PrometheusCheck | WebCheck)
        )
        compare = [c for c in spec.checks if isinstance(c, CompareCheck)]
        self.error_compare = next((c for c in compare if c.metric == "error_rate"), None)
        self.latency_compare = next((c for c in compare if c.metric == "latency"), None)
        # their names, formatted once (a pydantic property making an f-string on each tick)
        self.compare_keys = tuple(
            c.key if c else "" for c in (self.error_compare, self.latency_compare)
        )
        self.alpha: AlphaSplit = split_alpha(
            spec.alpha,
            error=self.error_compare is not None,
            latency=self.latency_compare is not None,
            guard=spec.guard is not None,
        )

    @property
    def quantiles(self) -> tuple[float, ...]:
        """The quantiles of stable's latency the latency comparison tests against."""
        return self.latency_compare.quantiles if self.latency_compare else ()

    # --- a rollout's life ---------------------------------------------------------------------

    def start(self) -> None:
        """Fresh statistics for a rollout that (re)starts: new e-processes, a new window."""
        self.end()
        self.fresh_tests()

    def fresh_tests(self) -> None:
        """New e-processes for the spec's comparisons and guard."""
        compare = self.error_compare
        slots = self.path_class_slots if compare and compare.per_path else 0
        self.errors_test = PathClassTests(slots, factory=RecoveringTest) if compare else None
        self.latency_tests = {q: RecoveringTest() for q in self.quantiles}
        self.units = UnitTable()
        self.guard_units = RecentUnits()
        self.restart_at = None
        self.windows_judged = 0
        self.guard = RateGuard(self.spec.guard.error_rate) if self.spec.guard else None
        self.baseline = None

    def start_baseline(self, now: float) -> None:
        """Blue/green switch: freeze stable's last minute and trailing quantiles; from now on
        the comparisons judge the candidate's live traffic against them (`baseline`)."""
        n = sum(int(s[1]) for s in self.recent)
        x = sum(int(s[2]) for s in self.recent)
        self.baseline = Baseline.freeze(now, n, x, self._latency_thresholds())

    def end(self) -> None:
        """No rollout runs: drop its window, external values and e-processes."""
        self.window = StepWindow()
        self.external = {}
        self.errors_test = None
        self.latency_tests = {}
        self.guard = None
        self.baseline = None

    def restart_window(self, now: float) -> None:
        """A new step window from ``now`` (a new step, or after a failed window)."""
        self.window = StepWindow(start=now)

    def restart_guard(self) -> None:
        """The guard starts afresh (after an incident: it was not the candidate's fault)."""
        assert self.spec.guard is not None
        self.guard = RateGuard(self.spec.guard.error_rate)

    # --- what comes in ------------------------------------------------------------------------

    def fold(
        self, now: float, samples: Sequence[Sample], *, tests: bool, read_after: bool = True
    ) -> None:
        """Take one tick's traffic. Stable's history always grows; with ``tests``, the
        candidate's window and the e-processes are updated too (not on the tick a rollout
        starts: those requests were routed under the previous regime). The latency
        thresholds used are stable's trailing quantiles over the slots closed before this
        tick's (predictable: fixed before the data they judge, see `trailing`); the same dict,
        and the same limits made from it, until a slot closes or ages out.

        ``read_after``: the latest evaluation's comparisons and guard may still be read after
        this fold, so those still unmade first take a snapshot of the tests it changes
        (`results.LazyResult.detach`), and the threshold checks one of the step window's
        histogram. False leaves them to go stale unread (read all the same, they raise
        `results.StaleResult`): the analyzer's tick, when no event of its own can read them
        before its next evaluation."""
        trail_close(self, now)  # a slot before this tick's joins the sum
        compare = self.latency_compare
        seen, cuts = self._cuts
        if self.trail_changed or seen is not compare:
            self.trail_changed = False
            self.thresholds = thresholds = self._latency_thresholds()
            # slow: beyond stable's quantile plus the check's tolerance, for both versions
            tolerance = compare.tolerance if compare else 0.0
            limits = thresholds
            if tolerance:
                limits = {q: c * (1.0 + tolerance) for q, c in thresholds.items()}
            cuts = cuts_of(tuple(limits.items()))
            self._cuts = (compare, cuts)
        keep = tests and read_after
        if tests:
            self.detach(keep)
            self._restart_due(now, keep)
        # the sums, from the live buckets themselves on the controller's path (`tally`), which
        # adds stable's latency to its open trailing slot as it reads it (`trailing`)
        cand_n, _, cand_gx, stab_n, _, stab_gx, pooled, classes, slow = tally(
            self, now, samples, tests, cuts.limits, cuts
        )
        if keep:
            # the results still unmade keep what they read, before their tests change
            kept_error, kept_latency, kept_guard = self._kept
            if pooled or classes:
                _detach(kept_error)
            if slow:
                _detach(kept_latency)
            if cand_n:
                _detach(kept_guard)
        if tests:
            self.error_changes += bool(pooled)
            self.latency_changes += bool(slow)
            if self.errors_test is not None:
                for p, (x, y) in pooled.items():
                    self.errors_test.pooled.update(p, x, y)
                for (p, name), (x, y) in classes.items():
                    self.errors_test.update_class(p, x, y, name)
            for (q, p), (x, y) in slow.items():
                self.latency_tests[q].update(p, x, y)
            if self.guard is not None:
                self.guard.update(cand_n, cand_gx)
            if self.baseline is not None:
                self.baseline.fold(samples, compare.tolerance if compare else 0.0)
        self.ticks.append((now, stab_n, stab_gx, cand_n, cand_gx))
        while self.ticks and self.ticks[0][0] <= now - INCIDENT_WINDOW:
            self.ticks.pop(0)

    def detach(self, keep: bool = True) -> None:
        """The step's window is about to change: results still unmade keep what they read
        (``keep`` false: they go stale unread, see `fold`)."""
        deferred = self._deferred
        if deferred is not None:
            deferred.detach(keep)

    def _restart_due(self, now: float, keep: bool) -> None:
        """Every `RESTART_EVERY` seconds of judged time, each comparison starts a fresh
        component (`recovery.RecoveringTest`): evidence debt is not carried for ever."""
        if self.restart_at is None:
            self.restart_at = now + RESTART_EVERY
        elif now >= self.restart_at:
            self.restart_at = now + RESTART_EVERY
            if keep:  # (see `fold`)
                _detach(self._kept[0])
                _detach(self._kept[1])
            self.error_changes += 1
            self.latency_changes += 1
            errors = self.errors_test.tests() if self.errors_test is not None else []
            for test in [*errors, *self.latency_tests.values()]:
                if isinstance(test, RecoveringTest):
                    test.restart()

    def record_external(self, now: float, values: Mapping[str, float | None]) -> None:
        """The external checks' values produced since the previous tick."""
        for name, value in values.items():
            self.external[name] = (value, now)

    def _latency_thresholds(self) -> dict[float, float]:
        """Stable's trailing quantiles over the closed slots (the sum, `trailing`: fixed
        before the data they judge, so predictable), each once they hold enough requests."""
        out: dict[float, float] = {}
        # (q, requests it needs) per quantile, made once per check, with every q and the
        # most any needs: after the first minutes stable's history has enough for all of them
        seen, needs, every, most = self._needs
        if seen is not self.latency_compare:
            needs = tuple((q, min_threshold_requests(q)) for q in self.quantiles)
            every = tuple([q for q, _ in needs])
            most = max([least for _, least in needs], default=0)
            self._needs = (self.latency_compare, needs, every, most)
        wanted: Sequence[float] = every
        closed = sum(self.trail_total.values())  # (the closed slots' requests)
        if closed < most:
            wanted = [q for q, least in needs if closed >= least]
        if not wanted:
            return out
        for q, c in trail_quantiles(self, wanted).items():
            if c is not None and c != math.inf:
                out[q] = c
        return out

    # --- what it says -------------------------------------------------------------------------

    def stable_breaching(self) -> bool:
        """Is stable failing too (an incident, not the candidate's fault)? Either in the same
        seconds as the candidate (in some span of the last ticks ending now, within
        `INCIDENT_WINDOW`: stable at half the guard's cap or more, and the candidate not
        `INCIDENT_RATIO` times worse than stable), or above the cap over the last minute."""
        assert self.spec.guard is not None
        cap = self.spec.guard.error_rate
        n = x = cn = cx = 0
        for tick in reversed(self.ticks):  # every span of ticks that ends now
            n, x, cn, cx = n + tick[1], x + tick[2], cn + tick[3], cx + tick[4]
            failing = n >= GUARD_MIN_STABLE and x / n >= INCIDENT_SHARE * cap
            if failing and (cn == 0 or cx / cn <= INCIDENT_RATIO * (x / n)):
                return True
        n = sum(int(s[1]) for s in self.recent)
        x = sum(int(s[2]) for s in self.recent)
        return n >= GUARD_MIN_STABLE and x / n >= cap

    def evaluate(self, now: float) -> tuple[CheckResult, ...]:
        """Every check of the spec as it stands at ``now``, in the spec's order of kinds:
        thresholds, external checks, the comparisons, the guard."""
        thresholds, rest = self.evaluate_deferred(now)
        return thresholds.results() + tuple([made(r) for r in rest])

    @property
    def unshown(self) -> set[str]:
        """The threshold checks over their line but not shown to be yet, as of the latest
        `evaluate`: the window holds on (made with those results, when first asked)."""
        deferred = self._deferred
        return deferred.unshown() if deferred is not None else set()

    def evaluate_deferred(
        self, now: float
    ) -> tuple[DeferredThresholds, tuple[CheckResult | LazyResult, ...]]:
        """`evaluate`, with the threshold checks' results made only when read (`deferred`)
        and the comparisons' and the guard's numbers too (`results`: their verdicts are
        known at once): ``(thresholds, the others)``; the tick's path. The latest one stands
        while nothing it is made of changed (`deferred`; not with external checks, whose values
        change in place, a bake's baseline, or a check reading ``now``: the request rate)."""
        window, prior, guard, units = self.window, self._deferred, self.guard, self.units
        checks = self.threshold_checks
        same = prior is not None and prior.checks is checks  # (else: does a check read ``now``?)
        timed = prior.timed if same and prior else any(c.metric == "request_rate" for c in checks)
        stamp: tuple[object, ...] | None = None
        if not (timed or self.external_checks or self.baseline is not None):
            stamp = (
                window, window.requests, window.errors, window.start, self.windows_judged,
                self.spec, self.errors_test, self.error_changes, len(units), units.skipped,
                self.latency_changes, self.latency_tests, self.thresholds,
                guard, 0 if guard is None else guard.changes,
            )  # fmt: skip
            if prior is not None and prior.stamp == stamp:
                prior.reattach(window)
                return prior, prior.rest
        if prior is not None:  # the previous results may still be read, once this changed
            prior.detach()
        deferred = self._deferred = DeferredThresholds(
            now, window, checks, self.spec.alpha, self.windows_judged, self.threshold_latency
        )
        deferred.stamp, deferred.timed = stamp, timed
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
        else:  # each kept while nothing it is made of changed (read in place: no call)
            kept = self._kept
            test = self.errors_test
            if self.error_compare is not None and test is not None:
                # most ticks bring it no new event: the result is then the previous tick's
                name, units = self.compare_keys[0], self.units
                key: tuple[object, ...] = (
                    test, self.error_changes, name, self.alpha.error, len(units), units.skipped
                )  # fmt: skip
                result = kept[0].value
                if result is None or kept[0].key != key:
                    result = kept[0].get(key, self._error_lazy, name, test)
                out.append(result)
            if self.latency_compare is not None:
                # the thresholds' and tests' dicts themselves in the key, compared by value (never
                # hashed): neither is written in place (`fold` makes new thresholds, new tests come
                # in a new dict); tests are compared as objects (a test replaced is another)
                name = self.compare_keys[1]
                key = (
                    name, self.alpha.latency, self.thresholds, self.latency_changes,
                    self.latency_tests,
                )  # fmt: skip
                result = kept[1].value
                if result is None or kept[1].key != key:
                    result = kept[1].get(key, self._latency_lazy, name)
                out.append(result)
        guard = self.guard
        if guard is not None:  # kept while the guard saw no request
            alpha = self.alpha.guard
            key = (guard, guard.changes, alpha)
            result = self._kept[2].value
            if result is None or self._kept[2].key != key:
                result = self._kept[2].get(key, guard_result, guard, 1 / alpha)
            out.append(result)
        rest = deferred.rest = tuple(out)
        return deferred, rest

    def _guard_result(self, guard: RateGuard) -> CheckResult:
        """The guard's result now, made (what the tick's kept one reads as)."""
        return guard_result(guard, 1 / self.alpha.guard).result()

    def window_outcome(self, now: float, step: Step, checks: Iterable[Judged]) -> WindowOutcome:
        """Has the step's window passed (long and large enough, every absolute check in
        ``checks`` passed), must it hold on, or has it failed (``on_no_data: fail`` turns a
        window without data into a failure)?"""
        interval, wanted = step_needs(self.spec, step)
        if now - self.window.start < interval:
            return HOLD
        n = self.window.requests
        fail_without_data = self.spec.on_no_data == "fail"
        if n == 0:
            if fail_without_data:
                return WindowOutcome("fail", "no candidate traffic in the window")
            return HOLD
        if n < wanted:
            return HOLD
        judged = [r for r in checks if r.kind in ("threshold", "external")]
        failed = [r.name for r in judged if r.verdict == "fail"]
        if failed:
            self.windows_judged += 1  # the next window's thresholds test at a smaller α
            return WindowOutcome("fail", "failed: " + ", ".join(failed))
        if self.unshown:  # over a line but not shown: neither failed nor passed yet
            return HOLD
        missing = [r.name for r in judged if r.verdict == "no_data"]
        if missing:
            if fail_without_data:
                self.windows_judged += 1
                return WindowOutcome("fail", "no data: " + ", ".join(missing))
            return HOLD
        self.windows_judged += 1
        return PASS

    def with_ci(self, results: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
        """The results with anytime-valid one-sided confidence intervals ``[lower, inf)`` for
        the rate ratios, each from inverting the e-process its comparison decides on (at its
        α), so a failed comparison's lower bound is above 1. For the error rate: the pooled
        and per-path-class family; for latency: the mean over quantiles, a bound on the
        worst of the quantiles' slow-request rate ratios."""
        out = []
        compare = self.error_compare
        for r in results:
            low: float | None = None
            if self.baseline is not None:  # a one-sample test: no ratio to bound
                out.append(r)
                continue
            if r.kind == "compare" and compare and r.name == compare.key and self.errors_test:
                low = self.errors_test.lower_confidence_bound(self.alpha.error)
            elif r.kind == "compare" and self.latency_tests:
                low = lower_confidence_bound(self._latency_log_e, self.alpha.latency)
            out.append(r._replace(ci=(low, math.inf)) if low is not None else r)
        return tuple(out)

    # --- the checks ---------------------------------------------------------------------------

    def _external_check(self, check: PrometheusCheck | WebCheck) -> CheckResult:
        value, at = self.external.get(check.key, (None, -math.inf))
        if at < self.window.start:
            value = None
        low, high = check.min, check.max
        if isinstance(check, WebCheck) and check.json_path is None:
            low, high = 1.0, None
        return bounded(check.key, "external", value, low, high, 0 if value is None else 1)

    def _error_lazy(self, name: str, test: PathClassTests) -> LazyResult:
        units = self.units
        return error_result(name, test, 1 / self.alpha.error, len(units), units.skipped)

    def _error_result(self, name: str, test: PathClassTests) -> CheckResult:
        """The error comparison's result now, made (what the tick's kept one reads as)."""
        return self._error_lazy(name, test).result()

    def _latency_lazy(self, name: str) -> LazyResult:
        tolerance = self.latency_compare.tolerance if self.latency_compare else 0.0
        tests, thresholds = self.latency_tests, self.thresholds  # (kept as they are)
        return latency_result(name, tests, thresholds, tolerance, 1 / self.alpha.latency)

    def _latency_result(self, name: str) -> CheckResult:
        """The latency comparison's result now, made (what the tick's kept one reads as)."""
        return self._latency_lazy(name).result()

    def _latency_log_e(self, r0: float = 1.0) -> float:
        """The latency family's log e-value for "slower-than-threshold rates at most ``r0`` ×
        stable's" (the mean over quantiles; at ``r0 = 1``, the one `_latency_compare` judges)."""
        return mean_log_e([t.log_e_at(r0) for t in self.latency_tests.values()])


def _detach(kept: Kept[LazyResult]) -> None:
    """A kept result still unmade takes a snapshot of its tests (`LazyResult.detach`)."""
    result = kept.value
    if result is not None:
        result.detach()
