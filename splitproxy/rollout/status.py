"""A route's rollout as the admin API and the console show it (pure; plain JSON-able data)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from splitproxy.rollout.evidence import step_needs
from splitproxy.rollout.shadow import status as shadow_status

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer
    from splitproxy.rollout.phases import Hold


def status_view(a: Analyzer, *, with_ci: bool = True) -> dict[str, Any]:
    """The analyzer's state as the admin API shows it.

    ``interval`` and ``min_requests`` are what the current step's window needs before it is
    judged (None outside a weight step); ``window`` holds its start, its ``elapsed`` time as of
    the latest tick and its candidate ``requests`` so far. ``waiting_for``: what holds the
    next move (``readiness``, a gate, ``pause``); ``gate``: the gate waited for, with the
    answers it gave so far (None when not waiting for one). ``progress_deadline``: the seconds
    counted toward it (``spent``) and its ``limit``, and when the candidate became ready
    (``ready_at``; from then on the deadline is met). ``checks`` carry their confidence
    intervals unless ``with_ci`` is false; ``shadow``: the shadow phase's progress (None
    without one; see `shadow.status`)."""
    evidence = a.evidence
    checks = evidence.with_ci(a.checks) if with_ci else a.checks
    needs = _step_needs(a)
    window = evidence.window
    elapsed = None
    if a.active and a.last_now is not None:
        elapsed = max(0.0, a.last_now - window.start)
    waiting = a.hold if a.phase == "waiting" else None
    return {
        "route": a.route,
        "strategy": a.spec.strategy,
        "phase": a.phase,
        "revision": a.revision,
        "step": a.step_index + 1,
        "steps": len(a.plan),
        "weights": [s.weight for s in a.plan],
        "weight": a.weight,
        "failures": a.failures,
        "failure_limit": a.spec.failure_limit,
        "paused_reason": a.paused_reason,
        "waiting_for": waiting.what if waiting is not None else None,
        "gate": _gate_status(waiting),
        "started_at": a.started_at,
        "step_started_at": a.step_started_at,
        "active_time": a.active_time,
        "progress_deadline": {
            "spent": a.readiness.spent,
            "limit": a.spec.progress_deadline,
            "ready_at": a.readiness.ready_at,
        },
        "interval": needs[0] if needs else None,
        "min_requests": needs[1] if needs else None,
        "window": {"start": window.start, "elapsed": elapsed, "requests": window.requests},
        "alpha": asdict(evidence.alpha),
        "checks": [c.to_dict() for c in checks],
        "bluegreen": _bluegreen_status(a),
        "shadow": shadow_status(a),
    }


def _bluegreen_status(a: Analyzer) -> dict[str, Any] | None:
    """Blue/green only: where the rollout stands relative to the switch, the test job's
    attempts, and the baseline the bake compares with."""
    spec = a.spec
    if not spec.bluegreen:
        return None
    switch = spec.switch_index
    if a.phase == "promoted":
        stage = "promoted"
    elif a.phase == "rolled_back":
        stage = "reverted" if a.step_index == switch else "rolled_back"
    elif a.step_index >= switch:
        stage = "baking"
    else:
        stage = "testing" if a.active else "idle"
    base = a.evidence.baseline
    return {
        "stage": stage,
        "iterations": switch,
        "iteration": min(a.step_index + 1, switch) if a.active else None,
        "bake": a.plan[switch].interval,
        "auto_promote": spec.auto_promote,
        "test": {"attempts": a.test_attempt, "passed": a.test_passed}
        if spec.test is not None
        else None,
        "baseline": None
        if base is None
        else {
            "at": base.at,
            "stable_requests": base.requests,
            "stable_error_rate": base.error_rate,
            "latency_thresholds": {f"p{q * 100:g}": c for q, c in base.thresholds.items()},
        },
    }


def _step_needs(a: Analyzer) -> tuple[float, int] | None:
    """The current step's ``interval`` and ``min_requests`` (None: no weight step)."""
    if not 0 <= a.step_index < len(a.plan) or not a.active:
        return None
    step = a.plan[a.step_index]
    if step.weight is None:
        return None
    return step_needs(a.spec, step)


def _gate_status(hold: Hold | None) -> dict[str, Any] | None:
    """The gate waited for and its answers so far (None: not waiting for a gate)."""
    if hold is None or hold.what in ("pause", "readiness", "test", "switch", "shadow"):
        return None
    return {
        "name": hold.what,
        "step": hold.step + 1,
        "since": hold.since,
        "attempts": hold.attempts,
        "last_at": hold.last_at,
        "last_detail": hold.last_detail,
    }
