"""A replica's own emergency brake while the state store is unreachable (pure).

Without Redis no replica leads, so nothing is promoted or rolled back: a decision taken on
one replica's share of the traffic, unseen by the others, would split the fleet. One thing
must not wait, though: a candidate failing badly. While a replica cannot reach the store, its
`Brake` runs the rollout's own guard (`sequential.RateGuard` at the rollout's ``error_rate``
cap and guard α) over the candidate requests *this replica* sent since the store went away;
when the guard trips, the replica sends that route's candidate 0 % of its traffic, and only
on itself. Once the store answers again the replica asks the leader for a rollback with the
evidence (`Trip.reason`); until the leader's state shows the rollout no longer running that
candidate, the replica keeps the brake on.

Nothing here reads a clock or does IO.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from splitproxy.rollout.sequential import RateGuard
from splitproxy.rollout.windows import Period


@dataclass(frozen=True, slots=True)
class Trip:
    """A tripped brake: which candidate, and the evidence."""

    route: str
    revision: str
    requests: int
    errors: int
    e_value: float
    cap: float

    @property
    def reason(self) -> str:
        return (
            f"the guard of replica-local traffic tripped while the state store was unreachable: "
            f"{self.errors} errors in {self.requests} candidate requests, far above "
            f"{self.cap:.2%} (e-value {self.e_value:.3g})"
        )


class Brake:
    """The guards of one replica's routes while the store is unreachable (see the module doc)."""

    def __init__(self) -> None:
        self._guards: dict[tuple[str, str], RateGuard] = {}
        self._counts: dict[tuple[str, str], list[int]] = {}  # [requests, errors] judged
        self.tripped: dict[str, Trip] = {}  # route -> its trip, until `release`

    def judge(
        self, route: str, revision: str, cap: float, bar: float, periods: Iterable[Period]
    ) -> Trip | None:
        """Add this replica's closed buckets of ``route`` (candidate ``revision``) to its
        guard; the `Trip` when the guard's e-value reaches ``bar`` (1/α) now."""
        if route in self.tripped:
            return None
        key = (route, revision)
        guard = self._guards.get(key)
        if guard is None:
            guard = self._guards[key] = RateGuard(cap)
            self._counts[key] = [0, 0]
        seen = self._counts[key]
        for period in periods:
            counts = period.candidate
            if counts.requests:
                errors = min(counts.errors, counts.requests)
                guard.update(counts.requests, errors)
                seen[0] += counts.requests
                seen[1] += errors
        e_value = guard.e_value
        if e_value < bar:
            return None
        trip = Trip(route, revision, seen[0], seen[1], e_value, cap)
        self.tripped[route] = trip
        return trip

    def reset(self) -> None:
        """The store answers again: the guards start afresh next time (the trips stay)."""
        self._guards.clear()
        self._counts.clear()

    def release(self, route: str) -> None:
        """The leader's state no longer runs the tripped candidate: the brake comes off."""
        self.tripped.pop(route, None)
        for key in [k for k in self._guards if k[0] == route]:
            del self._guards[key]
            del self._counts[key]


__all__ = ["Brake", "Trip"]
