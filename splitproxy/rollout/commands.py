"""A human's commands to the rollout machine: whether one applies now, and what it does (pure).

``promote``, ``rollback``, ``pause``, ``resume`` and ``retry`` come from the admin API or the
CLI as `ManualCommand` values in an `Observation`; the analyzer hands them here. Whether a
command applies is the transition table's answer (`phases.TRANSITIONS`): a command it does not
allow in the current phase is refused, and the refusal goes to the ledger. ``resume`` while
``waiting`` proceeds past the hold; ``promote`` at a blue/green switch's hold switches (the
bake still follows), anywhere else it promotes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitproxy.rollout import bluegreen
from splitproxy.rollout.messages import Command, ManualCommand
from splitproxy.rollout.phases import TRANSITIONS, Trigger

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer


def trigger_for(a: Analyzer, command: Command) -> Trigger | None:
    """The move ``command`` would make now, or None when it does not apply."""
    if command == "retry" and a.revision is None:
        return None
    trigger: Trigger = command
    if command == "resume" and a.phase == "waiting":
        trigger = "proceed"
    return trigger if trigger in TRANSITIONS[a.phase] else None


def carry_out(a: Analyzer, now: float, cmd: ManualCommand) -> None:
    """Apply ``cmd`` to ``a`` (or record its refusal)."""
    source = f"manual:{cmd.source}"
    why = f": {cmd.reason}" if cmd.reason else ""
    if trigger_for(a, cmd.command) is None:
        a._event(now, "refused", f"{cmd.command} refused in phase {a.phase}", source)
        return
    if cmd.command == "promote" and bluegreen.before_switch(a):
        bluegreen.switch_by_hand(a, now, "switched by hand" + why, source)
    elif cmd.command == "promote":
        a._promote(now, "promoted by hand" + why, source)
    elif cmd.command == "rollback":
        a._rollback(now, "rolled back by hand" + why, source)
    elif cmd.command == "pause":
        a._pause(now, "manual", "paused by hand" + why, source)
    elif cmd.command == "resume" and a.phase == "waiting":
        assert a.hold is not None
        a._proceed(now, f"resumed by hand past {a.hold.what}" + why, source)
    elif cmd.command == "resume":
        a.paused_reason = None
        if a.deadline is not None and a.active_time >= a.deadline:
            a.deadline = a.active_time + (a.spec.max_duration or 0.0)
        a._move(now, "resume", "resumed", "resumed by hand" + why, source=source)
    elif cmd.command == "retry":
        assert a.revision is not None
        a.finished.pop(a.revision, None)
        a._start(now, a.revision, "retry", "retried by hand" + why)
