"""The rollout controller's tuning (`ControlOptions`) and the manual commands it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from splitproxy.rollout.messages import Command
from splitproxy.rollout.pacing import SLICE_BUDGET

COMMANDS: Final[tuple[Command, ...]] = ("promote", "rollback", "pause", "resume", "retry")


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """Tuning of the controller (the defaults suit production; tests shorten them)."""

    tick: float = 1.0  # seconds between ticks
    slice_budget: float = SLICE_BUDGET  # seconds a pass steps routes between two loop turns
    checkpoint: float = 10.0  # save an active rollout's state at least this often
    ledger_size: int = 200  # events kept (and persisted) per route
    # seconds between two reads of an external check; None: half the rollout's interval,
    # between 0.25 s and 30 s (so each step window sees a fresh value)
    external_interval: float | None = None
    notify_drain: float = 2.0  # at shutdown, how long queued notifications may still go out


__all__ = ["COMMANDS", "ControlOptions"]
