"""What holds a rollout's next move while it is ``waiting`` (pure).

A `phases.Hold` names what the analyzer waits for: the candidate's readiness, a pause step,
a gate's hook, the blue/green test job or a human's ``promote``. These are the analyzer's
seams for entering a wait, looking at it every tick, and taking a gate hook's answer; like the
strategy modules they drive the analyzer through its own moves (`Analyzer._move`,
`_proceed`, `_failure`), so each change of phase goes through the transition table and lands
in the ledger.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from splitproxy.config.vocabulary import GATES
from splitproxy.rollout import shadow
from splitproxy.rollout.messages import CallHook, GateResult
from splitproxy.rollout.phases import Held, Hold

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer

_MESSAGES: dict[str, str] = {
    "readiness": "waiting for the candidate to become ready",
    "test": "waiting for the test job to pass before the switch",
    "switch": "waiting for promote to switch (auto_promote: false)",
    "shadow": "shadow: user requests mirrored to the candidate, judged on its answers; "
    "no user reaches it",
}


def wait_for(a: Analyzer, now: float, what: Held, step: int, *, until: float = math.inf) -> None:
    """Enter ``waiting`` on ``what`` before step ``step`` (a gate's hook is called at once)."""
    a.hold = Hold(what, step, until=until, asked_at=now, since=now)
    if what == "pause":
        message = (
            "paused step: waiting for resume"
            if until == math.inf
            else f"pause step: waiting until t={until:g}"
        )
    elif what == "readiness" or what == "test" or what == "switch" or what == "shadow":
        message = _MESSAGES[what]
    else:  # a gate
        message = f"waiting for the {what} gate"
        a.queue(CallHook(what, step + 1))
    a._move(now, "wait", "waiting", message)


def waiting(a: Analyzer, now: float) -> None:
    """One tick of a wait: release it when its condition holds; meanwhile keep judging the
    step's windows (a failure still counts) and ask a gate's hook again every ``interval``."""
    hold = a.hold
    assert hold is not None
    if hold.what == "shadow":
        shadow.waiting(a, now)
        return
    if hold.what == "pause":
        if now >= hold.until:
            a._proceed(now, "the pause step ended")
        return
    if hold.what == "readiness":
        if a.readiness.ready:
            a._proceed(now, "the candidate is ready")
        return
    if hold.what == "test" and a.test_passed:
        a._proceed(now, "the test job passed")
        return
    if hold.what in ("step", "confirm-promotion", "test", "switch"):
        step = a.plan[min(a.step_index, len(a.plan) - 1)]
        if a._window_outcome(now, step) == "pass":
            a.evidence.restart_window(now)
    due = now - hold.asked_at >= a.spec.interval
    if a.phase == "waiting" and due and hold.what in GATES:  # ask the hook again
        a.hold = replace(hold, asked_at=now)
        a.queue(CallHook(hold.what, hold.step + 1))


def gate_result(a: Analyzer, now: float, result: GateResult) -> None:
    """A gate hook answered: a pass releases the wait it answers; a failure counts as a failed
    check, except ``confirm-promotion``'s "not yet", which goes to the ledger once per new
    answer."""
    hold = a.hold
    expected = hold is not None and (hold.what, hold.step + 1) == (result.gate, result.step)
    if a.phase != "waiting" or hold is None or not expected:
        return
    if result.passed:
        a._proceed(now, f"the {result.gate} gate passed" + suffix(result.detail))
        return
    changed = hold.attempts == 0 or result.detail != hold.last_detail
    hold = a.hold = replace(
        hold, attempts=hold.attempts + 1, last_at=now, last_detail=result.detail
    )
    if result.gate != "confirm-promotion":
        a._failure(now, f"the {result.gate} hook failed" + suffix(result.detail))
    elif changed:  # once per wait, and when the answer says something new
        again = f" (answer {hold.attempts})" if hold.attempts > 1 else ""
        message = "confirm-promotion: not yet" + suffix(result.detail) + again
        a._event(now, "gate_closed", message)


def suffix(text: str) -> str:
    """``": text"``, or nothing for an empty detail."""
    return f": {text}" if text else ""
