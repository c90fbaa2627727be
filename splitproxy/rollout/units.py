"""Sticky users as the unit of the error comparison (pure).

On a sticky route every request of a user goes where the user's key hashes: the user, not the
request, is what was routed at random. Counting requests then breaks the attribution test's
null in two ways: the candidate's real share of requests swings with the few heavy users that
landed in its buckets, and a user who fails whatever the version (a bot, a broken client)
sends a long run of errors that all carry the same version. Both rolled back A/A rollouts.

Counted per user, the null is exact again: under "the version makes no difference", a user's
*first* error of the rollout comes from the candidate with probability ``p`` (the share of
keys on the candidate when it was routed), independently of every other user's; a user
contributes one event, however heavy, however broken. `UnitTable` remembers which users have
had their first error, so later ones are not counted again.

*Bounded.* The table holds at most `UNIT_TABLE_CAP` users per route and rollout (64-bit key
hashes in a set: about 5 MB at the cap). Once it is full, the errors of users it does not hold
are left out of the comparison (a rule that depends on the past only, so the test stays
valid) and `UnitTable.skipped` counts them; the thresholds and the guard still see them. The
table is not saved: after a restart of the proxy a user's error before it may count once more.

*The guard* asks another question ("is the candidate failing far above the cap?"), on
requests, not users; but one broken client with many requests would answer it alone, and at
low traffic a single bot can be most of the candidate's requests. So for the guard, too, a
sticky user's errors count once per rollout (`RecentUnits` with `GUARD_UNIT_WINDOW` = the
whole rollout; at most `UNIT_TABLE_CAP` users, a user it cannot hold is counted every time).
A crash fails many users at once, so the guard still sees it at high traffic; at low traffic
the error comparison (first errors of the candidate's users against stable's) catches it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

UNIT_TABLE_CAP: Final = 65_536
GUARD_UNIT_WINDOW: Final = math.inf  # seconds: once per rollout


class UnitTable:
    """The users whose first error the comparison has counted (one rollout, one route)."""

    __slots__ = ("_seen", "cap", "skipped")

    def __init__(self, cap: int = UNIT_TABLE_CAP) -> None:
        self.cap = cap
        self._seen: set[int] = set()
        self.skipped = 0  # errors of users the full table could not take

    def first(self, unit: int) -> bool:
        """Is this the user's first error (and is it counted)? Records it."""
        seen = self._seen
        if unit in seen:
            return False
        if len(seen) >= self.cap:
            self.skipped += 1
            return False
        seen.add(unit)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class RecentUnits:
    """The sticky users whose error the guard counted in the last ``window`` seconds."""

    __slots__ = ("_last", "cap", "window")

    def __init__(self, window: float = GUARD_UNIT_WINDOW, cap: int = UNIT_TABLE_CAP) -> None:
        self.window = window
        self.cap = cap
        self._last: OrderedDict[int, float] = OrderedDict()  # oldest count first

    def count(self, now: float, unit: int) -> bool:
        """Does this user's error count for the guard now? Records it when it does."""
        last = self._last
        while last:
            oldest, at = next(iter(last.items()))
            if at > now - self.window:
                break
            del last[oldest]
        if unit in last:
            return False
        if len(last) < self.cap:
            last[unit] = now
        return True


__all__ = ["GUARD_UNIT_WINDOW", "UNIT_TABLE_CAP", "RecentUnits", "UnitTable"]
