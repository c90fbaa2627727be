"""A rollout's candidate health: readiness before judgement, the progress deadline and the
unhealthy timeout (pure).

The analyzer (`splitproxy.rollout.analyzer`) learns the candidate's health each tick (a
`CandidateHealth` in the `Observation`; None when nothing is known, which counts as ready and
healthy) and keeps one `Readiness` per rollout beside its `Evidence`. It asks it three things:

- *May this tick's candidate traffic be judged?* (`Readiness.judging`) Only once the candidate
  has been seen ready on an earlier tick and still is: a candidate that is still starting
  refuses connections, and those refusals are not the candidate's errors. A tick whose
  candidate traffic is not judged is not judged at all (stable's history still grows), so the
  comparisons never see one side without the other.
- *Has the progress deadline passed?* (`Readiness.overdue`) The time the rollout spends
  waiting for readiness or progressing counts toward ``progress_deadline`` until the
  candidate is first ready (time paused, at a gate or at a pause step does not). Once the
  candidate has been ready the deadline is met for good: how long the steps then take is
  ``max_duration``'s business, a candidate that becomes unavailable is ``unhealthy_timeout``'s.
- *Has an unavailable candidate been so for too long?* (`Readiness.strike`) Each whole
  ``unhealthy_timeout`` of one unavailable stretch is one failed check (`HEALTH_CHECK`), which
  the analyzer counts like a failed step window.

While the candidate is unavailable the data path sends its share to stable, so the time does
not count toward the step's interval either (`Readiness.unserved`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from splitproxy.dataplane.health import CandidateHealth
from splitproxy.rollout.messages import CheckResult, Verdict

HEALTH_CHECK: Final = "candidate_health"


def is_ready(health: CandidateHealth | None) -> bool:
    """Is the candidate ready (unknown counts as ready)?"""
    return health is None or health.ready


def is_healthy(health: CandidateHealth | None) -> bool:
    """Is the candidate available (unknown counts as available)?"""
    return health is None or health.healthy


@dataclass(slots=True)
class Readiness:
    """What the analyzer keeps about its candidate's health during one rollout.

    ``ready_at``: when the candidate was first seen ready in this rollout (None: not yet);
    ``spent``: seconds counted toward the progress deadline; ``unhealthy_since`` and
    ``strikes``: the unavailable stretch last seen and the failed checks counted for it."""

    ready_at: float | None = None
    spent: float = 0.0
    unhealthy_since: float | None = None
    strikes: int = 0

    def reset(self) -> None:
        """A rollout (re)starts: not ready yet, nothing spent, no stretch counted."""
        self.ready_at = None
        self.spent = 0.0
        self.unhealthy_since = None
        self.strikes = 0

    @property
    def ready(self) -> bool:
        """Has the candidate been ready in this rollout?"""
        return self.ready_at is not None

    def elapse(self, seconds: float, *, counting: bool) -> None:
        """``seconds`` went by; ``counting``: in a phase that counts toward the deadline."""
        if counting and self.ready_at is None:
            self.spent += seconds

    def see(self, now: float, health: CandidateHealth | None) -> None:
        """Note the candidate's readiness at ``now``."""
        if self.ready_at is None and is_ready(health):
            self.ready_at = now

    def judging(self, now: float, health: CandidateHealth | None) -> bool:
        """May the candidate's traffic of the tick ending at ``now`` be judged? Only when it
        was ready before the tick began and still is."""
        return self.ready_at is not None and self.ready_at < now and is_ready(health)

    def overdue(self, deadline: float) -> bool:
        """Has the rollout waited longer than ``deadline`` for a candidate never ready?"""
        return self.ready_at is None and self.spent > deadline

    def unserved(self, now: float, seconds: float, health: CandidateHealth | None) -> float:
        """How much of the last ``seconds`` before ``now`` the candidate was unavailable."""
        if is_healthy(health):
            return 0.0
        since = self._since(now, health)
        return max(0.0, min(seconds, now - since))

    def check(
        self, now: float, health: CandidateHealth | None, timeout: float
    ) -> CheckResult | None:
        """The `HEALTH_CHECK` result while a candidate that was ready is unavailable (None
        otherwise): for how long, against ``unhealthy_timeout``, and since when."""
        if self.ready_at is None or is_healthy(health):
            return None
        since = self._since(now, health)
        seconds = max(0.0, now - since)
        verdict: Verdict = "fail" if seconds >= timeout else "pass"
        return CheckResult(
            HEALTH_CHECK,
            "health",
            seconds,
            None,
            timeout,
            0,
            verdict,
            f"candidate unavailable since t={since:.3f}",
            unit="seconds",
        )

    def strike(self, now: float, health: CandidateHealth | None, timeout: float) -> bool:
        """Has the candidate's unavailable stretch reached one more whole ``timeout``? Each
        counts once (after a long gap between ticks, the missed ones are not made up)."""
        if self.ready_at is None or is_healthy(health):
            self.unhealthy_since, self.strikes = None, 0
            return False
        since = self._since(now, health)
        if since != self.unhealthy_since:
            self.unhealthy_since, self.strikes = since, 0
        due = math.floor(max(0.0, now - since) / timeout)
        if due <= self.strikes:
            return False
        self.strikes = due
        return True

    def _since(self, now: float, health: CandidateHealth | None) -> float:
        """When the unavailable stretch began (the provider's time; else when first seen)."""
        assert health is not None
        if health.unhealthy_since is not None:
            return health.unhealthy_since
        return self.unhealthy_since if self.unhealthy_since is not None else now

    def to_dict(self) -> dict[str, Any]:
        """Plain data for saved state (see `codec`)."""
        return {
            "ready_at": self.ready_at,
            "spent": self.spent,
            "unhealthy_since": self.unhealthy_since,
            "strikes": self.strikes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Readiness:
        """Back from `to_dict`'s form."""
        ready_at, since = data.get("ready_at"), data.get("unhealthy_since")
        return cls(
            None if ready_at is None else float(ready_at),
            float(data.get("spent", 0.0)),
            None if since is None else float(since),
            int(data.get("strikes", 0)),
        )
