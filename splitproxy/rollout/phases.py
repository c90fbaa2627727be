"""The rollout's phases and the only moves between them, as data (pure).

``TRANSITIONS[phase][trigger] -> next phase`` is the whole state machine of
`splitproxy.rollout.analyzer`: the analyzer only picks the trigger, and a move that is not in
the table is a bug it raises on. What holds the next move while ``waiting`` (or ``paused``
while waiting) is a `Hold`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from splitproxy.config.vocabulary import Gate

# --- the transition table ---------------------------------------------------------------------

Phase = Literal["idle", "progressing", "waiting", "paused", "promoted", "rolled_back"]
Trigger = Literal[
    "start",  # a new candidate revision
    "restart",  # a new revision or a new spec mid-rollout: from the first step again
    "restore_promoted",  # a revision promoted earlier shows up again
    "restore_rolled_back",  # a revision rolled back earlier shows up again: it stays so
    "advance",  # the next weight step
    "wait",  # readiness, a gating hook or a pause step holds the next move
    "proceed",  # the candidate is ready, the hook passed, the pause ended
    "promote",
    "rollback",
    "pause",
    "resume",
    "retry",  # a rolled-back revision, from the first step again
    "abandon",  # the file names no candidate any more
    "suspend",  # the saved state could not be trusted: on stable, paused for a human
]

PHASES: Final[tuple[Phase, ...]] = (
    "idle",
    "progressing",
    "waiting",
    "paused",
    "promoted",
    "rolled_back",
)

TRANSITIONS: Final[Mapping[Phase, Mapping[Trigger, Phase]]] = MappingProxyType(
    {
        "idle": {
            "start": "progressing",
            "restore_promoted": "promoted",
            "restore_rolled_back": "rolled_back",
            "suspend": "paused",
            "abandon": "idle",
        },
        "progressing": {
            "advance": "progressing",
            "wait": "waiting",
            "promote": "promoted",
            "rollback": "rolled_back",
            "pause": "paused",
            "restart": "progressing",
            "abandon": "idle",
        },
        "waiting": {
            "proceed": "progressing",
            "promote": "promoted",
            "rollback": "rolled_back",
            "pause": "paused",
            "restart": "progressing",
            "abandon": "idle",
        },
        "paused": {
            "resume": "progressing",
            "promote": "promoted",
            "rollback": "rolled_back",
            "restart": "progressing",
            "abandon": "idle",
        },
        "promoted": {"start": "progressing", "rollback": "rolled_back", "abandon": "idle"},
        "rolled_back": {"start": "progressing", "retry": "progressing", "abandon": "idle"},
    }
)
ACTIVE: Final[frozenset[Phase]] = frozenset({"progressing", "waiting", "paused"})
HOLDING: Final[frozenset[Phase]] = frozenset({"waiting", "paused"})  # the phases with a `Hold`

Held = Gate | Literal["pause", "readiness", "test", "switch", "shadow"]
"""What a `Hold` waits for: a gating hook, a pause step, the candidate's readiness, (blue/green,
before the switch) the test job's pass and a human's ``promote`` (``auto_promote: false``), or
the shadow phase's verdict on mirrored copies (`splitproxy.rollout.shadow`)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """What holds the next move: a gate (its hook is asked until it answers), a pause step,
    or the candidate's readiness (a rollout's first step waits for it).

    ``step`` is the plan index the hold stands before (``len(plan)``: promotion); ``until``
    when a pause step ends (inf: when resumed by hand); ``asked_at`` when the gate's hook was
    last called. ``since``, ``attempts``, ``last_at`` and ``last_detail`` count the answers
    that did not open the gate since the wait began: a closed ``confirm-promotion`` is one
    ledger event per wait (and one more when its detail changes), the rest is counted here.
    """

    what: Held
    step: int
    until: float = math.inf
    asked_at: float = 0.0
    since: float | None = None
    attempts: int = 0
    last_at: float | None = None
    last_detail: str | None = None
