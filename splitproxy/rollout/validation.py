"""Saved rollout state is input: checked field by field before the analyzer trusts it (pure).

A state file can be damaged by a disk, truncated by a crash of something else, edited by hand,
or left over from another route or another version of the spec. `check_document` refuses what
would make the proxy serve traffic it should not: a weight outside 0-100, a step outside the
plan, a phase whose weight contradicts it (a ``rolled_back`` rollout at 30 %, a
``progressing`` one at a weight its step does not have), a hold in a phase that has none,
non-finite times, unbounded lists. Each problem is one `InvalidState` naming the field.

What it does not judge is the statistics' internals: `codec.decode` rebuilds them, and any
error there is reported the same way by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from splitproxy.config import Rollout
from splitproxy.rollout.phases import ACTIVE, HOLDING, PHASES
from splitproxy.rollout.readiness import Readiness
from splitproxy.rollout.shadow import ShadowState

FORMAT: Final = 1
MAX_LIST: Final = 100_000  # entries in any saved list (ledger, history, trail, ...)
MAX_FINISHED: Final = 1_000
MAX_TEXT: Final = 10_000
_HELD: Final = frozenset(
    {"pre-rollout", "step", "confirm-promotion", "pause", "readiness", "test", "switch", "shadow"}
)
_EPS: Final = 1e-6


class InvalidState(ValueError):
    """A saved state that must not be resumed; the message names the field and why."""


def _number(doc: Mapping[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidState(f"analyzer.{key}: {value!r} is not a number")
    return float(value)


def _finite(doc: Mapping[str, Any], key: str, *, optional: bool = True) -> float | None:
    value = _number(doc, key, optional=optional)
    if value is not None and not math.isfinite(value):
        raise InvalidState(f"analyzer.{key}: {value!r} is not finite")
    return value


def _integer(doc: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidState(f"analyzer.{key}: {value!r} is not an integer")
    if not low <= value <= high:
        raise InvalidState(f"analyzer.{key}: {value} is outside {low}..{high}")
    return value


def _text(doc: Mapping[str, Any], key: str, *, optional: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidState(f"analyzer.{key}: {_short(value)} is not a text")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_document(doc: Mapping[str, Any], route: str, fmt: int = FORMAT) -> Mapping[str, Any]:
    """The saved document's ``analyzer`` part, once the envelope is checked."""
    if doc.get("format") != fmt:
        raise InvalidState(f"format: {_short(doc.get('format'))} is not {fmt}")
    if doc.get("route") != route:
        raise InvalidState(f"route: {_short(doc.get('route'))} is not {route!r}")
    ledger = doc.get("ledger", [])
    if not isinstance(ledger, list) or len(ledger) > MAX_LIST:
        raise InvalidState("ledger: not a list of at most 100000 events")
    analyzer = doc.get("analyzer")
    if not isinstance(analyzer, Mapping):
        raise InvalidState("analyzer: missing or not an object")
    return analyzer


def check_analyzer(data: Mapping[str, Any], route: str, spec: Rollout, spec_hash: str) -> None:
    """Raise `InvalidState` unless ``data`` (``codec.encode``'s output) is a state the
    analyzer may resume under ``spec`` (whose digest is ``spec_hash``)."""
    if data.get("version") != 1:
        raise InvalidState(f"analyzer.version: {_short(data.get('version'))} is not 1")
    if data.get("route") not in (route, None):
        raise InvalidState(f"analyzer.route: {_short(data.get('route'))} is not {route!r}")
    phase = data.get("phase")
    if phase not in PHASES:
        raise InvalidState(f"analyzer.phase: {_short(phase)} is not one of {', '.join(PHASES)}")
    revision = _text(data, "revision")
    if phase != "idle" and revision is None:
        raise InvalidState(f"analyzer.revision: a {phase} rollout names no revision")
    finished = data.get("finished")
    if not isinstance(finished, Mapping) or len(finished) > MAX_FINISHED:
        raise InvalidState("analyzer.finished: not an object of finished revisions")
    for key, value in finished.items():
        if not isinstance(key, str) or value not in ("promoted", "rolled_back"):
            raise InvalidState(f"analyzer.finished[{_short(key)}]: {_short(value)}")
    plan = spec.plan
    same_spec = data.get("spec_hash") == spec_hash
    step_index = _integer(data, "step_index", -1, len(plan) if same_spec else 1_000_000)
    weight = _number(data, "weight", optional=True)
    if weight is not None and not 0.0 <= weight <= 100.0:
        raise InvalidState(f"analyzer.weight: {weight:g} is outside 0..100")
    for key in ("started_at", "step_started_at", "last_now", "deadline"):
        _finite(data, key)
    active_time = _finite(data, "active_time", optional=False)
    assert active_time is not None
    if active_time < 0:
        raise InvalidState(f"analyzer.active_time: {active_time:g} is negative")
    _integer(data, "failures", 0, 1_000_000)
    _text(data, "paused_reason")
    for key in ("history", "checks", "trail", "recent", "latency_tests"):
        value = data.get(key, [])
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise InvalidState(f"analyzer.{key}: not a list of at most {MAX_LIST} entries")
    _check_hold(data, phase, len(plan))
    if "readiness" in data:
        try:
            Readiness.from_dict(data["readiness"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidState(f"analyzer.readiness: {exc!r}") from None
    if data.get("shadow") is not None:
        try:
            ShadowState.from_dict(data["shadow"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidState(f"analyzer.shadow: {exc!r}") from None
    _check_weight(phase, weight, step_index, spec, same_spec)


def _check_hold(data: Mapping[str, Any], phase: str, steps: int) -> None:
    pending = data.get("pending")
    if pending is None:
        if phase == "waiting":
            raise InvalidState("analyzer.pending: a waiting rollout waits for nothing")
        return
    if phase not in HOLDING:
        return  # earlier versions kept a stale one in other phases: `decode` drops it
    if pending not in _HELD:
        raise InvalidState(f"analyzer.pending: {_short(pending)} is not something to wait for")
    _integer(data, "pending_step", 0, steps)
    _number(data, "pending_until")  # inf: until resumed
    _finite(data, "hook_called_at", optional=False)


def _check_weight(
    phase: str, weight: float | None, step_index: int, spec: Rollout, same_spec: bool
) -> None:
    """The weight a phase may have: none when idle, 100 when promoted, 0 when rolled back;
    while active, 0 or the weight of a step reached so far (exactly the current step's while
    progressing)."""
    where = f"analyzer.weight: {'none' if weight is None else f'{weight:g}%'} in phase {phase}"
    if phase == "idle":
        if weight is not None:
            raise InvalidState(f"{where} (an idle rollout leaves the weight to the file)")
        return
    if phase == "promoted":
        if weight is None or abs(weight - 100.0) > _EPS:
            raise InvalidState(f"{where} (a promoted candidate has 100%)")
        return
    if phase == "rolled_back":
        if weight is None or weight > _EPS:
            raise InvalidState(f"{where} (a rolled-back candidate has 0%)")
        return
    assert phase in ACTIVE
    if weight is None:
        raise InvalidState(f"{where} (an active rollout sets the weight)")
    if not same_spec:
        return  # the rollout restarts from its first step on the first tick
    plan = spec.plan
    if phase == "progressing":
        step = plan[step_index] if 0 <= step_index < len(plan) else None
        if step is None or step.weight is None or abs(step.weight - weight) > _EPS:
            raise InvalidState(f"{where}, step {step_index + 1} (the step's weight differs)")
        return
    reached = {s.weight for s in plan[: max(step_index, 0) + 1] if s.weight is not None}
    if weight > _EPS and not any(abs(weight - w) <= _EPS for w in reached):
        raise InvalidState(f"{where}, step {step_index + 1} (no step so far has it)")
