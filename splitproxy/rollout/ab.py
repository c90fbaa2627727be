"""The A/B strategy: business goals per user, an anytime-valid winner, promoted (pure).

An A/B rollout (``strategy: ab``, `config.abtest.AbTest`) runs on the same machine as a
canary (`analyzer.Analyzer`: phases, transition table, guard, comparisons, hooks, ledger);
this module is where it differs. Its plan is one step at the ``split``. Once the candidate is
ready (and past the ``pre-rollout`` gate, if any), the step sets the weight to the split and
the test starts: the data path (`dataplane.abgoals`) assigns the audience's users stickily
and counts per variant the users exposed and the users converted on each goal; the
controller hands the increments over every tick (`Observation.ab`), and `fold` adds them to
one `abtest.ConversionTest` per goal and one `abtest.SampleRatioTest`.

Every tick `progress` runs `abtest.judge` on the primary (first) goal:

- ``srm``: the users per variant contradict the split. The assignment is broken, so no
  result can be trusted: the rollout **pauses** (reason ``srm``). ``resume`` starts the test
  afresh (new counts, the clock from zero); ``rollback`` and ``promote`` decide by hand.
- ``candidate_wins`` (after ``min_duration``): **promoted**, through ``confirm-promotion``
  when that gate is configured.
- ``stable_wins`` (after ``min_duration``): **rolled back**, "lost".
- ``no_difference`` at ``max_duration``: **rolled back** with that reason; stable is kept
  (the routing file decides what comes next).

Meanwhile the guard and the comparisons with stable (error rate, latency) judge every tick
and roll a harmful candidate back at once (`Analyzer._judge`), and threshold checks are
judged in consecutive windows of the rollout's ``interval``, as in a blue/green bake.

The functions here are the analyzer's strategy seams and drive it through its own moves
(`Analyzer._promote`, `_rollback`, `_pause`, `_wait_for`, `_event`), so every change of phase
goes through the transition table and lands in the ledger; every event that carries evidence
carries the test's result too (`result`: winner, lift and interval, users and conversions
per variant per goal). The aggregate counts are part of the saved state (`to_dict`,
`from_dict`, checked by `check_saved`): a restart loses no count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from splitproxy.config import Step
from splitproxy.config.abtest import AbTest
from splitproxy.dataplane.abgoals import AbCounts
from splitproxy.rollout.abtest import (
    AbVerdict,
    ArmCounts,
    ConversionTest,
    SampleRatioTest,
    judge,
    split_ab_alpha,
)

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer

MAX_COUNT: Final = 10**12  # saved counts above this are damage, not traffic


@dataclass(slots=True)
class AbState:
    """One running test: when it started, one conversion test per goal (the users are the
    same in each), the SRM check, the value sums per goal as ``[stable, candidate]``."""

    started: float
    goals: list[ConversionTest]
    srm: SampleRatioTest
    values: list[list[float]] = field(default_factory=list)
    untracked: int = 0
    broken: bool = False  # paused for an SRM: resume starts afresh

    @classmethod
    def fresh(cls, spec: AbTest, started: float) -> AbState:
        split = spec.split / 100.0
        return cls(
            started=started,
            goals=[ConversionTest(split) for _ in spec.goals],
            srm=SampleRatioTest(split),
            values=[[0.0, 0.0] for _ in spec.goals],
        )

    @property
    def primary(self) -> ConversionTest:
        return self.goals[0]


def _spec(a: Analyzer) -> AbTest | None:
    return a.spec.ab


def reset(a: Analyzer) -> None:
    """A rollout (re)starts or ends: no test until its step begins."""
    a.ab_state = None


def _state(a: Analyzer, now: float) -> AbState | None:
    spec = _spec(a)
    if spec is None or a.step_index < 0 or a.phase not in ("progressing", "waiting", "paused"):
        return None
    if a.ab_state is None:
        started = a.step_started_at if a.step_started_at is not None else now
        a.ab_state = AbState.fresh(spec, started)
    return a.ab_state


def fold(a: Analyzer, now: float, counts: AbCounts | None, fresh: bool) -> None:
    """Add one tick's counts (none on the tick a rollout starts: routed under the old regime)."""
    if counts is None or fresh or counts.empty:
        return
    state = _state(a, now)
    if state is None or len(counts.converted) != len(state.goals):
        return
    stable_users, candidate_users = counts.users
    state.srm.update(candidate_users, stable_users)
    for i, test in enumerate(state.goals):
        stable_x, candidate_x = counts.converted[i]
        test.update(ArmCounts(candidate_users, candidate_x), ArmCounts(stable_users, stable_x))
        sums = state.values[i]
        sums[0] += counts.values[i][0]
        sums[1] += counts.values[i][1]
    state.untracked += counts.untracked


def step_message(spec: AbTest) -> str:
    """The ledger's words for the test's start."""
    who = "the audience's users" if spec.audience else "the users"
    return f"A/B test started: {spec.split:g}% of {who} on the candidate, by their sticky key"


def test_started(a: Analyzer) -> float | None:
    """The running test's identity (its start), for the data path's table; None: none."""
    state = a.ab_state
    return None if state is None else state.started


def verdict(a: Analyzer, now: float) -> AbVerdict | None:
    """Where the test stands at ``now`` on its primary goal (None: no test)."""
    spec, state = _spec(a), a.ab_state
    if spec is None or state is None:
        return None
    return judge(
        state.primary,
        state.srm,
        started=state.started,
        now=now,
        alpha=spec.alpha,
        min_duration=spec.min_duration,
        max_duration=spec.max_duration,
    )


def progress(a: Analyzer, now: float) -> None:
    """One tick of a progressing A/B rollout: the threshold windows, then the verdict."""
    spec = _spec(a)
    assert spec is not None
    state = _state(a, now)
    if state is None:
        return
    if state.broken:  # resumed after a sample ratio mismatch: its counts mean nothing
        a.ab_state = AbState.fresh(spec, now)
        a._event(now, "ab_restarted", "the A/B test starts afresh after the sample ratio mismatch")
        return
    window = Step.model_construct(
        weight=spec.split, interval=a.spec.interval, min_requests=a.spec.min_requests, pause=None
    )
    outcome = a._window_outcome(now, window)
    if a.phase != "progressing":
        return  # a failed window rolled it back
    if outcome == "pass":
        a.evidence.restart_window(now)
    found = verdict(a, now)
    assert found is not None
    if found.outcome == "srm":
        state.broken = True
        a._pause(now, "srm", f"A/B test paused as broken: {found.reason}")
    elif found.outcome == "candidate_wins":
        if "confirm-promotion" in a.gates:
            a._wait_for(now, "confirm-promotion", len(a.plan))
        else:
            a._promote(now, f"the A/B test's winner is the candidate: {found.reason}")
    elif found.outcome == "stable_wins":
        a._rollback(now, f"lost the A/B test: {found.reason}")
    elif found.outcome == "no_difference":
        a._rollback(now, f"the A/B test ended with no difference: {found.reason}")


# --- the result, as the status and the ledger show it -----------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def result(a: Analyzer, now: float | None = None) -> dict[str, Any] | None:
    """The test's result as plain data (None: no A/B test, or none started): the verdict on
    the primary goal, and per goal the users, conversions, rates, value sums, lift and its
    anytime-valid interval (at the conversion test's share of α)."""
    spec, state = _spec(a), a.ab_state
    if spec is None or state is None:
        return None
    at = now if now is not None else (a.last_now if a.last_now is not None else state.started)
    found = verdict(a, at)
    assert found is not None
    budget = split_ab_alpha(spec.alpha)
    goals = []
    for i, (goal, test) in enumerate(zip(spec.goals, state.goals, strict=True)):
        interval = test.lift_interval(budget.conversion)
        goals.append(
            {
                "name": goal.name,
                "primary": i == 0,
                "stable": {**test.stable.to_dict(), "value": state.values[i][0]},
                "candidate": {**test.candidate.to_dict(), "value": state.values[i][1]},
                "lift": _finite(test.lift),
                "lift_interval": None
                if interval is None
                else [_finite(interval[0]), _finite(interval[1])],
                "e_value": _finite(test.e_value),
            }
        )
    out = found.to_dict()
    out.update(
        {
            "goal": spec.primary.name,
            "split": spec.split,
            "started_at": state.started,
            "min_duration": spec.min_duration,
            "max_duration": spec.max_duration,
            "users": {"stable": state.srm.stable_users, "candidate": state.srm.candidate_users},
            "untracked": state.untracked,
            "broken": state.broken,
            "goals": goals,
        }
    )
    return out


def event_result(a: Analyzer, now: float) -> dict[str, Any] | None:
    """The result a ledger event carries (A/B rollouts only)."""
    return result(a, now) if a.spec.ab is not None else None


# --- saved state ----------------------------------------------------------------------------


def to_dict(a: Analyzer) -> dict[str, Any] | None:
    """The running test's aggregate counts as plain data (the per-user table is not saved)."""
    state = a.ab_state
    if state is None:
        return None
    return {
        "started": state.started,
        "goals": [t.to_dict() for t in state.goals],
        "srm": state.srm.to_dict(),
        "values": [list(v) for v in state.values],
        "untracked": state.untracked,
        "broken": state.broken,
    }


def from_dict(a: Analyzer, data: Mapping[str, Any] | None) -> None:
    """Restore `to_dict`'s output (checked by `check_saved` first)."""
    spec = _spec(a)
    if data is None or spec is None or len(data["goals"]) != len(spec.goals):
        a.ab_state = None
        return
    a.ab_state = AbState(
        started=float(data["started"]),
        goals=[ConversionTest.from_dict(g) for g in data["goals"]],
        srm=SampleRatioTest.from_dict(data["srm"]),
        values=[[float(s), float(c)] for s, c in data["values"]],
        untracked=int(data["untracked"]),
        broken=bool(data["broken"]),
    )


def check_saved(data: Any, spec: AbTest | None) -> str | None:
    """What is wrong with a saved test (None: nothing). Counts must be whole, non-negative
    and bounded, the split the spec's, and the users the same in every goal's test."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        return "not an object"
    try:
        started = float(data["started"])
        goals, srm = data["goals"], data["srm"]
        if not math.isfinite(started) or not isinstance(goals, list) or not goals:
            return "started or goals"
        if spec is not None and len(goals) != len(spec.goals):
            return None  # another spec: the rollout restarts, the counts are dropped
        users = (_count(srm["candidate_users"]), _count(srm["stable_users"]))
        for goal in goals:
            (cu, cx), (su, sx) = goal["candidate"], goal["stable"]
            if (_count(cu), _count(su)) != users or _count(cx) < 0 or _count(sx) < 0:
                return "the users differ between the goals and the SRM check"
            if spec is not None and abs(float(goal["split"]) - spec.split / 100) > 1e-9:
                return "the split is not the file's"
        values = data["values"]
        if not isinstance(values, list) or len(values) != len(goals):
            return "values"
        for pair in values:
            if len(pair) != 2 or not all(math.isfinite(float(v)) for v in pair):
                return "values"
        _count(data["untracked"])
        if not isinstance(data["broken"], bool):
            return "broken"
    except (KeyError, TypeError, ValueError) as exc:
        return repr(exc)
    return None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{value!r} is not a count")
    return value


__all__ = [
    "AbState",
    "check_saved",
    "event_result",
    "fold",
    "from_dict",
    "progress",
    "reset",
    "result",
    "step_message",
    "test_started",
    "to_dict",
    "verdict",
]
