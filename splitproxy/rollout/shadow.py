"""The shadow phase and the divergence check: a candidate judged on mirrored copies (pure).

*The shadow phase* (``shadow: {duration: 5m, min_requests: 500}`` on a canary or blue/green
rollout) comes once the candidate is ready, before the ``pre-rollout`` gate and the first
step. The rollout waits at weight 0 on a ``shadow`` hold (`phases.Hold`) while the proxy
mirrors user requests to the candidate (the controller marks the route's rollout weight
``shadow``, and the data path's mirror copies with the route's ``mirror:`` settings, or
`config.mirror.SHADOW_MIRROR`). Users never reach the candidate; its answers to the copies
(`messages.MirrorSample`, once a tick) are the evidence:

- they fill the step window, so the threshold checks (``error_rate``, ``latency_p99``, ...)
  are judged on the mirrored answers, over a window of ``duration`` and ``min_requests``
  mirrored answers (`Evidence.window_outcome`); a failed window counts toward
  ``failure_limit`` and the window starts again;
- they feed the guard, which rolls back at once when the candidate's error rate is clearly
  above its cap (unless stable fails too: an incident pauses, as in any phase);
- their divergence from stable's answers is the ``mirror_divergence`` check.

A passed window ends the shadow (``proceed``): the ``pre-rollout`` gate or the first step
follows. A rollback in the shadow happens before any user request reached the candidate.

*The divergence check* (``{metric: mirror_divergence, max: 1%}``) is the share of compared
copies whose answers diverged from stable's (status class, and the body as the route's
``compare:`` says), over the step window: in the shadow, and in the steps of a route with
``mirror:`` (whose copies keep going to the candidate). It has no value until the window holds
as many compared copies as the window's ``min_requests`` (a handful of copies says little
about 1 %). Next to it, an anytime-valid test (`sequential.RateGuard`, at a tenth of the
rollout's α, as the guard) rolls back at once when the divergence is clearly above ``max``:
a candidate that answers every copy differently is rolled back after a few copies, not at the
end of the window.

These are the analyzer's seams for the phase; like `bluegreen`, they drive it through its own
moves (`Analyzer._wait_for`, `_proceed`, `_failure`, `_rollback`), so every change of phase
goes through the transition table and lands in the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from splitproxy.config import MetricCheck, Rollout, Step
from splitproxy.config.mirror import DIVERGENCE
from splitproxy.rollout.evidence import step_needs
from splitproxy.rollout.histograms import hist_add
from splitproxy.rollout.messages import CheckResult, MirrorSample, Verdict, bounded_verdict
from splitproxy.rollout.phases import HOLDING
from splitproxy.rollout.sequential import RateGuard

if TYPE_CHECKING:
    from splitproxy.config import Route
    from splitproxy.rollout.analyzer import Analyzer

TEST_SHARE: Final = 0.1  # of the rollout's α for the divergence test (the guard's share)
TEST_NAME: Final = "mirror_divergence_guard"


class ShadowState:
    """A rollout's shadow phase and divergence test: whether the shadow passed, what it saw
    since it began (for status and the ledger), and the divergence e-process (``test``, for
    the rollout's life; None without a ``mirror_divergence`` check whose ``max`` it can test).
    ``mirroring`` (not saved) says whether copies went to the candidate on the latest tick."""

    __slots__ = (
        "answered",
        "compared",
        "diverged",
        "errors",
        "mirroring",
        "passed",
        "started_at",
        "test",
    )

    def __init__(self, test: RateGuard | None = None) -> None:
        self.passed = False
        self.started_at: float | None = None
        self.answered = self.errors = self.compared = self.diverged = 0
        self.test = test
        self.mirroring = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "started_at": self.started_at,
            "answered": self.answered,
            "errors": self.errors,
            "compared": self.compared,
            "diverged": self.diverged,
            "test": self.test.to_dict() if self.test is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShadowState:
        """The state `to_dict` wrote; raises KeyError, TypeError or ValueError on a bad one."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{str(d)[:60]!r} is not an object")
        test = d.get("test")
        if test is not None and not isinstance(test, Mapping):
            raise TypeError(f"test: {str(test)[:60]!r} is not an object")
        st = cls(RateGuard.from_dict(test) if test is not None else None)
        if not isinstance(d["passed"], bool):
            raise TypeError(f"passed: {d['passed']!r} is not a boolean")
        st.passed = d["passed"]
        started = d["started_at"]
        st.started_at = None if started is None else float(started)
        counts = [int(d[k]) for k in ("answered", "errors", "compared", "diverged")]
        if min(counts) < 0 or counts[1] > counts[0] or counts[3] > counts[2]:
            raise ValueError(f"impossible counts {counts}")
        st.answered, st.errors, st.compared, st.diverged = counts
        return st


def divergence_checks(spec: Rollout) -> tuple[MetricCheck, ...]:
    """The spec's ``mirror_divergence`` checks."""
    return tuple(c for c in spec.checks if isinstance(c, MetricCheck) and c.metric == DIVERGENCE)


def fresh(spec: Rollout) -> ShadowState:
    """The state of a rollout that (re)starts: no shadow yet, a new divergence test."""
    caps = [c.max for c in divergence_checks(spec) if c.max is not None and 0.0 < c.max < 1.0]
    return ShadowState(RateGuard(min(caps)) if caps else None)


# --- the phase --------------------------------------------------------------------------------


def due(a: Analyzer) -> bool:
    """Does the rollout still owe its shadow phase (the candidate just became ready)?"""
    return a.spec.shadow is not None and not a.shadow.passed


def in_shadow(a: Analyzer) -> bool:
    """Is the rollout in its shadow phase (waiting on it, or paused there)?"""
    hold = a.hold
    return a.phase in HOLDING and hold is not None and hold.what == "shadow"


def where(a: Analyzer) -> str:
    """``"in the shadow, "`` to begin a ledger message with while in the shadow, else ``""``."""
    return "in the shadow, " if in_shadow(a) else ""


def holding(a: Analyzer) -> bool:
    """Is the rollout waiting in its shadow phase (user requests are mirrored meanwhile)?"""
    return a.phase == "waiting" and in_shadow(a)


def enter(a: Analyzer, now: float) -> None:
    """Begin the shadow: weight 0, a new window for the mirrored answers, the hold."""
    st = a.shadow
    st.started_at = now
    st.answered = st.errors = st.compared = st.diverged = 0
    a._set_weight(0.0)
    a.evidence.restart_window(now)
    a._wait_for(now, "shadow", 0)


def waiting(a: Analyzer, now: float) -> None:
    """One tick of the shadow: its window of mirrored answers judged as a step's is; a passed
    one ends the shadow, a failed one counts (and may roll back)."""
    shadow = a.spec.shadow
    assert shadow is not None
    step = Step.model_construct(
        weight=0.0, interval=shadow.duration, min_requests=shadow.min_requests, pause=None
    )
    outcome = a.evidence.window_outcome(now, step, a.checks)
    if outcome.outcome == "fail":
        a._failure(now, f"shadow: {outcome.reason}")
    elif outcome.outcome == "pass":
        st = a.shadow
        spent = now - (st.started_at if st.started_at is not None else now)
        a._proceed(now, f"shadow passed after {spent:g}s: {_summary(st)}")


def proceed(a: Analyzer, now: float) -> None:
    """The shadow's hold was released (it passed, or by hand): on to the first step, through
    the ``pre-rollout`` gate if any (``_proceed`` already moved to progressing)."""
    a.shadow.passed = True
    a._begin(now)


def _summary(st: ShadowState) -> str:
    share = f" ({st.diverged / st.compared:.2%})" if st.compared else ""
    return (
        f"{st.answered} mirrored answers, {st.errors} errors, "
        f"{st.diverged} of {st.compared} diverged{share}"
    )


# --- the evidence -----------------------------------------------------------------------------


def observed(route: Route | None, a: Analyzer, taken: MirrorSample | None) -> MirrorSample | None:
    """What the analyzer is told of the copies (the controller's question each tick): the
    sample taken from the recorder while copies go to the candidate (the route's ``mirror:``,
    or the shadow phase), else None."""
    if taken is None or route is None:
        return None
    return taken if route.mirror is not None or holding(a) else None


def fold(a: Analyzer, sample: MirrorSample | None, judging: bool) -> None:
    """Take one tick's mirrored answers: their divergence into the step window and the
    divergence test; in the shadow, also their requests, errors and latency (the threshold
    checks' window) and the guard. Not on a tick that is no evidence (``judging`` false)."""
    st = a.shadow
    st.mirroring = sample is not None
    if sample is None or not judging:
        return
    window = a.evidence.window
    window.mirrored += sample.compared
    window.diverged += sample.diverged
    if st.test is not None and sample.compared:
        st.test.update(sample.compared, sample.diverged)
    if not holding(a):
        return  # in the steps the windows hold the users' traffic: copies are no part of it
    a.evidence.detach()  # (done by the fold already; the window changes here too)
    window.requests += sample.answered
    window.errors += sample.errors
    hist_add(window.latency, sample.latency)
    guard = a.evidence.guard
    if guard is not None and sample.answered:
        guard.update(sample.answered, sample.errors)
    st.answered += sample.answered
    st.errors += sample.errors
    st.compared += sample.compared
    st.diverged += sample.diverged


def checks(a: Analyzer) -> tuple[CheckResult, ...]:
    """The divergence checks and the divergence test as they stand (none while no copies go
    to the candidate: outside the shadow on a route without ``mirror:``)."""
    st = a.shadow
    shadowing = in_shadow(a)
    if not (shadowing or st.mirroring):
        return ()
    window = a.evidence.window
    n, x = window.mirrored, window.diverged
    needed = _needed(a, shadowing)
    value = x / n if n and n >= needed else None
    detail = f"{x} of {n} compared copies diverged" + (
        f" (judged from {needed})" if value is None and needed > n else ""
    )
    out = [_bounded(c.key, value, c.min, c.max, n, detail) for c in divergence_checks(a.spec)]
    test = st.test
    if test is not None:
        bar = 1 / (a.spec.alpha * TEST_SHARE)
        e = test.e_value
        verdict: Verdict = "fail" if e >= bar else ("pass" if test.requests else "no_data")
        detail = f"divergence far above {test.cap:g}"
        result = CheckResult(TEST_NAME, "guard", e, None, bar, test.requests, verdict, detail,
                             metric=DIVERGENCE, unit="e_value")  # fmt: skip
        out.append(result)
    return tuple(out)


def _needed(a: Analyzer, shadowing: bool) -> int:
    """Compared copies the window needs before its divergence is judged: the window's
    ``min_requests`` (the shadow's, or the current step's)."""
    if shadowing and a.spec.shadow is not None:
        return a.spec.shadow.min_requests
    plan = a.plan
    step = plan[min(max(a.step_index, 0), len(plan) - 1)]
    return step_needs(a.spec, step)[1] if step.weight is not None else a.spec.min_requests


def _bounded(
    name: str,
    value: float | None,
    low: float | None,
    high: float | None,
    sample: int,
    detail: str,
) -> CheckResult:
    verdict = bounded_verdict(value, low, high)
    return CheckResult(
        name, "threshold", value, low, high, sample, verdict, detail, metric=DIVERGENCE,
        unit="fraction",
    )  # fmt: skip


def judge(a: Analyzer, now: float) -> bool:
    """The anytime decisions of this seam (before the analyzer's own `_judge`): a divergence
    clearly above ``max`` rolls back at once; in the shadow, so does the guard tripped by the
    mirrored answers (with the ledger saying so), unless stable fails too. True when it
    rolled back."""
    shadowing = in_shadow(a)
    if a.shadow.test is None and not shadowing:
        return False  # neither rule can fire (the tick's case on a route without a shadow)
    by_name = {r.name: r for r in a.checks}
    test = by_name.get(TEST_NAME)
    if test is not None and test.verdict == "fail" and a.shadow.test is not None:
        cap = a.shadow.test.cap
        message = f"mirrored answers diverge from stable's clearly above {cap:.2%}"
        a._rollback(now, where(a) + message)
        return True
    guard = by_name.get("guard")
    tripped = shadowing and guard is not None and guard.verdict == "fail"
    if tripped and not a.evidence.stable_breaching():
        message = "the guard tripped: mirrored answers' error rate far above the cap"
        a._rollback(now, where(a) + message)
        return True
    return False


# --- status -----------------------------------------------------------------------------------


def status(a: Analyzer) -> dict[str, Any] | None:
    """The shadow phase as the admin API shows it (None: the rollout has none): its ``stage``
    (``pending`` before it, ``mirroring``, ``paused``, ``passed``, or ``rolled_back`` in it),
    its settings, and what the mirrored answers said so far."""
    shadow = a.spec.shadow
    if shadow is None:
        return None
    st = a.shadow
    if holding(a):
        stage = "mirroring"
    elif in_shadow(a):
        stage = "paused"
    elif st.passed:
        stage = "passed"
    elif st.started_at is not None and a.phase == "rolled_back":
        stage = "rolled_back"
    else:
        stage = "pending"
    elapsed = None
    if in_shadow(a) and st.started_at is not None and a.last_now is not None:
        elapsed = max(0.0, a.last_now - st.started_at)
    return {
        "stage": stage,
        "duration": shadow.duration,
        "min_requests": shadow.min_requests,
        "started_at": st.started_at,
        "elapsed": elapsed,
        "mirrored": st.answered,
        "errors": st.errors,
        "error_rate": st.errors / st.answered if st.answered else None,
        "compared": st.compared,
        "diverged": st.diverged,
        "divergence": st.diverged / st.compared if st.compared else None,
    }
