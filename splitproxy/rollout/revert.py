"""The revert window: after a promotion, the previous stable stays warm for ``revert_window``
and ``splitproxy revert ROUTE`` sends every request back to it at once (no IO).

A promotion puts all traffic on the candidate, and in the GitOps flow the next commit names
the candidate as the route's stable: the old version then disappears from the routing file.
Until the window closes the proxy remembers it (`WarmStable`: its backend as the file gave
it, the revision promoted over it, and when the window ends) and keeps its upstream pool open
(`state.RuntimeState.keep_warm`). A revert inside the window is one snapshot swap:

- while the file still names the promoted candidate, it is the rollout's own rollback (the
  candidate gets no traffic at all, the ledger says ``rolled_back``);
- once the file has moved on, the route's requests all go to the remembered backend
  (`state.RuntimeState.revert_to`) until the file changes that route again: the file still
  decides afterwards.

Outside the window (or without ``revert_window``), `refusal` says why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from splitproxy.config import Backend, Route
from splitproxy.dataplane.state import RuntimeState
from splitproxy.errors import Conflict


@dataclass(frozen=True, slots=True)
class WarmStable:
    """The stable a promotion replaced, kept warm until ``until`` (Unix time)."""

    route: str
    backend: Backend
    promoted: str | None  # the revision promoted over it
    promoted_at: float
    until: float

    def open(self, now: float) -> bool:
        return now <= self.until

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "backend": self.backend.model_dump(mode="json"),
            "promoted": self.promoted,
            "promoted_at": self.promoted_at,
            "until": self.until,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WarmStable:
        """Read back `to_dict` (saved state is input: the backend is validated again)."""
        promoted = data["promoted"]
        if promoted is not None and not isinstance(promoted, str):
            raise ValueError("promoted: not a revision")
        return cls(
            str(data["route"]),
            Backend.model_validate(data["backend"]),
            promoted,
            float(data["promoted_at"]),
            float(data["until"]),
        )

    def view(self, now: float) -> dict[str, Any]:
        """What status shows of it."""
        return {
            "previous_stable": list(self.backend.urls),
            "previous_revision": self.backend.revision,
            "promoted": self.promoted,
            "promoted_at": self.promoted_at,
            "until": self.until,
            "open": self.open(now),
        }


def refusal(route: str, warm: WarmStable | None, now: float) -> str | None:
    """Why ``revert`` is refused for ``route`` now (None: it is not)."""
    if warm is None:
        return (
            f"cannot revert route {route!r}: no promotion to revert (a revert needs "
            "'revert_window' in the rollout, and applies within it after a promotion)"
        )
    if not warm.open(now):
        closed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(warm.until))
        return f"cannot revert route {route!r}: its revert window closed at {closed}"
    return None


class RevertWindows:
    """The open revert windows by route, and the data path's side of them: the previous
    stable's pool kept (`RuntimeState.keep_warm`) while its window is open."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        # the latest promotion's window per route, open or closed (a closed one says when)
        self.warm: dict[str, WarmStable] = {}

    def promoted(
        self, name: str, window: float | None, route: Route | None, revision: str | None, at: float
    ) -> None:
        """``revision`` was promoted on ``route``: open its window (when it has one)."""
        if window is None or route is None:
            return
        self.keep(WarmStable(name, route.stable, revision, at, at + window), at)

    def keep(self, warm: WarmStable, now: float) -> None:
        """Honour ``warm`` (a new promotion, or one restored after a restart)."""
        self.warm[warm.route] = warm
        self.state.keep_warm(warm.route, warm.backend if warm.open(now) else None)

    def expire(self, now: float) -> list[WarmStable]:
        """The windows that ended since the last call: their pools may go."""
        snapshot = self.state.snapshot
        kept = snapshot.warm if snapshot is not None else {}
        closed = [w for w in self.warm.values() if not w.open(now) and w.route in kept]
        for w in closed:
            self.state.keep_warm(w.route, None)
        return closed

    def take(self, name: str, now: float) -> WarmStable:
        """The window to revert ``name`` through, closed by this use; `Conflict` with the
        reason when there is none open."""
        warm = self.warm.get(name)
        why = refusal(name, warm, now)
        if why is not None:
            raise Conflict("revert_refused", why)
        assert warm is not None
        del self.warm[name]
        self.state.keep_warm(name, None)  # reverted to (or rolled back onto): in use, not kept
        return warm
