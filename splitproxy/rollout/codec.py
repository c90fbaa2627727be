"""An analyzer's whole state as plain data, and back (pure).

`encode` turns an `Analyzer` (its phase, its `Hold`, its evidence with the e-processes, its
recent events and checks) into JSON-able data (floats may be inf); `decode` rebuilds it. The
controller writes the result atomically after every transition, so the proxy carries on where
it stopped after a restart.

The document's shape is version 1 and stays readable: a state saved by an earlier version
still loads (a saved gate wait without its answers counted, events without their ``trigger``,
check results without their metric and unit, or with the two-sided intervals of old; a
rollout saved before readiness was known counts as ready since it started).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout import ab
from splitproxy.rollout.analyzer import PATH_CLASS_SLOTS, Analyzer
from splitproxy.rollout.baseline import Baseline
from splitproxy.rollout.evidence import Evidence, StepWindow
from splitproxy.rollout.messages import CheckResult, Event
from splitproxy.rollout.phases import ACTIVE, HOLDING, Held, Hold, Phase, Trigger
from splitproxy.rollout.readiness import Readiness
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import PathClassTests, RateGuard
from splitproxy.rollout.shadow import ShadowState
from splitproxy.rollout.sketch import bound_of, ordinal_of
from splitproxy.rollout.trailing import trail_restore

VERSION: Final = 1
_NO_GATE: Final = {"since": None, "attempts": 0, "last_at": None, "last_detail": None}


def encode(a: Analyzer) -> dict[str, Any]:
    """The analyzer's whole state as plain data (JSON-able; floats may be inf)."""
    hold = a.hold
    return {
        "version": VERSION,
        "route": a.route,
        "spec_hash": a.spec_hash,
        "phase": a.phase,
        "revision": a.revision,
        "finished": dict(a.finished),
        "step_index": a.step_index,
        "weight": a.weight,
        "started_at": a.started_at,
        "step_started_at": a.step_started_at,
        "last_now": a.last_now,
        "active_time": a.active_time,
        "deadline": a.deadline,
        "failures": a.failures,
        "pending": hold.what if hold else None,
        "pending_step": hold.step if hold else 0,
        "pending_until": hold.until if hold else math.inf,
        "hook_called_at": hold.asked_at if hold else 0.0,
        "gate": _encode_gate(hold),
        "paused_reason": a.paused_reason,
        "test_attempt": a.test_attempt,
        "test_passed": a.test_passed,
        "readiness": a.readiness.to_dict(),
        "shadow": a.shadow.to_dict(),
        **_encode_evidence(a.evidence),
        **({"ab": ab.to_dict(a)} if a.spec.ab is not None else {}),  # an A/B test's counts
        "history": [e.to_dict() for e in a.history],
        "checks": [c.to_dict() for c in a.checks],
    }


def decode(
    route: str,
    spec: Rollout,
    data: Mapping[str, Any],
    *,
    gates: Iterable[Gate] = (),
    path_class_slots: int = PATH_CLASS_SLOTS,
) -> Analyzer:
    """Rebuild an analyzer from `encode`'s output (or an earlier version's). With a different
    spec, a rollout that was running restarts from its first step on the next tick."""
    a = Analyzer(route, spec, gates=gates, path_class_slots=path_class_slots)
    a.phase = cast(Phase, data["phase"])
    a.revision = data["revision"]
    a.finished = {str(k): cast(Phase, v) for k, v in data["finished"].items()}
    a.step_index = int(data["step_index"])
    a.weight = data["weight"]
    a.started_at = data["started_at"]
    a.step_started_at = data["step_started_at"]
    a.last_now = data["last_now"]
    a.active_time = float(data["active_time"])
    a.deadline = data["deadline"]
    a.failures = int(data["failures"])
    if a.phase in HOLDING:  # earlier versions kept a stale ``pending`` in other phases
        a.hold = _decode_hold(data)
    a.paused_reason = data["paused_reason"]
    a.test_attempt = int(data.get("test_attempt", 0))
    a.test_passed = bool(data.get("test_passed", False))
    if "readiness" in data:
        a.readiness = Readiness.from_dict(data["readiness"])
    elif a.phase in ACTIVE:  # saved before readiness was known: it was taken as ready
        a.readiness = Readiness(ready_at=a.started_at)
    if data.get("shadow") is not None:  # (saved before shadow phases: none)
        a.shadow = ShadowState.from_dict(data["shadow"])
    _decode_evidence(a.evidence, data)
    ab.from_dict(a, data.get("ab"))
    a.history = [event_from_dict(e) for e in data["history"]]
    a.checks = tuple(check_from_dict(c) for c in data["checks"])
    if data["spec_hash"] != a.spec_hash and a.phase in ACTIVE:
        a.spec_changed = True
    elif a.phase in ACTIVE and a.evidence.errors_test is None and a.evidence.error_compare:
        a.evidence.fresh_tests()  # pragma: no cover - only when a spec gained a check unnoticed
    a.check_hold()
    return a


def _encode_gate(hold: Hold | None) -> dict[str, Any]:
    if hold is None:
        return dict(_NO_GATE)
    return {
        "since": hold.since,
        "attempts": hold.attempts,
        "last_at": hold.last_at,
        "last_detail": hold.last_detail,
    }


def _decode_hold(data: Mapping[str, Any]) -> Hold | None:
    what = data["pending"]
    if what is None:
        return None
    asked_at = float(data["hook_called_at"])
    # saved before answers were counted: the wait goes on, counted from its start
    gate: Mapping[str, Any] = data["gate"] or {} if "gate" in data else {"since": asked_at}
    since, last_at = gate.get("since"), gate.get("last_at")
    return Hold(
        cast(Held, what),
        int(data["pending_step"]),
        until=float(data["pending_until"]),
        asked_at=asked_at,
        since=None if since is None else float(since),
        attempts=int(gate.get("attempts", 0)),
        last_at=None if last_at is None else float(last_at),
        last_detail=gate.get("last_detail"),
    )


def _encode_evidence(e: Evidence) -> dict[str, Any]:
    w = e.window
    return {
        "window": {
            "start": w.start,
            "requests": w.requests,
            "errors": w.errors,
            "latency": [[b, c] for b, c in sorted(w.latency.items())],
            "mirrored": w.mirrored,
            "diverged": w.diverged,
        },
        "external": {k: list(v) for k, v in e.external.items()},
        "errors_test": e.errors_test.to_dict() if e.errors_test else None,
        "latency_tests": [[q, t.to_dict()] for q, t in sorted(e.latency_tests.items())],
        "guard": e.guard.to_dict() if e.guard else None,
        # (the slots are keyed by ordinals, which sort as their bounds: the same document)
        "trail": [[s, n, [[bound_of(o), c] for o, c in sorted(h.items())]] for s, n, h in e.trail],
        "recent": [list(r) for r in e.recent],
        "baseline": e.baseline.to_dict() if e.baseline is not None else None,
    }


def _decode_evidence(e: Evidence, data: Mapping[str, Any]) -> None:
    w = data["window"]
    e.window = StepWindow(
        float(w["start"]),
        int(w["requests"]),
        int(w["errors"]),
        {float(b): int(c) for b, c in w["latency"]},
        int(w.get("mirrored", 0)),
        int(w.get("diverged", 0)),
    )
    e.external = {str(k): (v[0], float(v[1])) for k, v in data["external"].items()}
    if data["errors_test"] is not None:
        test = data["errors_test"]
        e.errors_test = PathClassTests.from_dict(test, RecoveringTest.from_dict, RecoveringTest)
    e.latency_tests = {float(q): RecoveringTest.from_dict(t) for q, t in data["latency_tests"]}
    if data["guard"] is not None:
        e.guard = RateGuard.from_dict(data["guard"])
    for slot, n, hist in data["trail"]:
        e.trail.append([float(slot), int(n), {_ordinal(b): int(c) for b, c in hist}])
    # the sum of the closed slots, the last read as open (saved mid-slot or not, the same
    # document as before the sum held closed slots only: an older state reads the same)
    trail_restore(e)
    e.recent = [[float(v) for v in r] for r in data["recent"]]
    if data.get("baseline") is not None:
        e.baseline = Baseline.from_dict(data["baseline"])


def _ordinal(bound: Any) -> int:
    """A saved bucket bound as the trailing sum keys it (`histograms.ordinal`): any number
    but NaN, which orders with none (its bucket could never be found again)."""
    value = float(bound)
    if math.isnan(value):
        raise ValueError("a latency bucket bound is NaN")
    return ordinal_of(value)


def _float(value: Any, none: float) -> float:
    """A number of saved state; ``none`` for a null (a non-finite end written as JSON)."""
    return none if value is None else float(value)


def check_from_dict(d: Mapping[str, Any]) -> CheckResult:
    """A `CheckResult` from its `CheckResult.to_dict` form."""
    ci = d.get("ci")
    return CheckResult(
        name=d["name"],
        kind=d["kind"],
        value=d["value"],
        min=d["min"],
        max=d["max"],
        sample=int(d["sample"]),
        verdict=d["verdict"],
        detail=d.get("detail", ""),
        ci=(_float(ci[0], 0.0), _float(ci[1], math.inf)) if ci else None,
        metric=d.get("metric"),
        unit=d.get("unit"),
    )


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """An `Event` from its `Event.to_dict` form (``trigger`` None when saved without one)."""
    return Event(
        at=float(d["at"]),
        route=d["route"],
        kind=d["kind"],
        phase=d["phase"],
        previous=d["previous"],
        step=int(d["step"]),
        weight=d["weight"],
        revision=d["revision"],
        message=d["message"],
        source=d.get("source", "analyzer"),
        checks=tuple(check_from_dict(c) for c in d.get("checks", ())),
        trigger=cast("Trigger | None", d.get("trigger")),
        ab=d.get("ab"),
    )
