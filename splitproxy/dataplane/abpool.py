"""A/B tests over several processes: every user counted once, wherever their requests land.

With ``--workers N`` or replicas sharing Redis, a user's requests reach several processes, and
each process's own table (`abgoals.AbTable`) only knows the users it saw. Adding the
processes' counts would count a user once per process, so instead:

- *a follower* (a worker that does not lead, a replica that does not lead) still dedupes in
  its own table, and records the *events* of it: a user's first local exposure (the variant)
  and a user's first local conversion on each goal (the goal, the value). It ships them with
  each harvest it already publishes (`AbEvents` per route, drained by `abgoals.AbBook.drain`),
  at most `MAX_EVENTS` per route per harvest: beyond that, a new user is left out on that
  process (counted ``untracked``, as beyond ``max_users``) and a conversion is kept back
  (the goal is not marked, so the user's next matching response tries again). Users travel
  as a 64-bit keyed hash of their sticky key (`user_hash`): no cookie or user header leaves
  the process, and at 100 000 users the chance of any collision is about 3e-10.
- *the leader* keeps the global table per route (`PooledTable`: same ``max_users`` bound)
  and applies its own requests at once and the followers' batches as they arrive: an exposure
  counts once per user, a conversion once per user per goal, and only for a user exposed.
  Order per sender is enough: a follower's conversion of a user always comes after its own
  exposure event of that user (in the same batch or an earlier one), so a conversion is never
  lost for arriving before an exposure from another process; the leader applies each sender's
  batches in the order sent. `abgoals.AbBook.take` then returns the global increments.
- *a new leader* (a restarted leader worker, a replica that takes the lease) starts its global
  table empty, and announces itself (`AbLead`: an epoch and each route's test); a follower
  that sees a new epoch empties its own table, so its users are exposed to the new leader
  again on their next request (an exposure sent twice counts once: the global table dedupes).
  A follower also follows the leader's tests (`AbBook.follow`), so a test that restarts
  starts afresh everywhere; a batch recorded under another test than the leader's is dropped.

Pure: no clock, no IO.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

EXPOSED_STABLE: Final = 0  # an event's kind: the user was exposed to stable,
EXPOSED_CANDIDATE: Final = 1  # ... to the candidate,
GOAL_BASE: Final = 2  # ... converted on goal ``kind - GOAL_BASE``
MAX_EVENTS: Final = 4096  # events of one route in one follower's harvest (4 harvests a second)

Event = tuple[int, int, float]  # (user hash, kind, value): see the constants above


def user_hash(key: str, salt: bytes) -> int:
    """The 64-bit hash a user travels as (keyed with the route's salt, like the assignment)."""
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogateescape"), digest_size=8, key=salt[:64]
    ).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class AbCounts:
    """One route's A/B counts over an interval (increments): per variant, as
    ``(stable, candidate)`` pairs, the users newly exposed and, per goal in the file's order,
    the users newly converted and the sum of their ``value_header`` values. ``untracked``:
    users left out because the table was full."""

    users: tuple[int, int] = (0, 0)
    converted: tuple[tuple[int, int], ...] = ()
    values: tuple[tuple[float, float], ...] = ()
    untracked: int = 0

    @property
    def empty(self) -> bool:
        return not (any(self.users) or self.untracked or any(map(any, self.converted)))


@dataclass(frozen=True, slots=True)
class AbEvents:
    """One route's events from one follower since its previous harvest, oldest first, under
    the test it knew (None: none yet), and the users it left out meanwhile."""

    test: float | None
    events: tuple[Event, ...] = ()
    untracked: int = 0


@dataclass(frozen=True, slots=True)
class AbLead:
    """The leader's word to followers: who leads (a new epoch: a new, empty global table) and
    each A/B route's running test (its start)."""

    epoch: int
    tests: dict[str, float] = field(default_factory=dict)


class Tally:
    """Counts not yet taken: users exposed and converted per variant, values, left out."""

    __slots__ = ("converted", "exposed", "untracked", "values")

    def __init__(self, goals: int) -> None:
        self.exposed = [0, 0]
        self.converted = [[0, 0] for _ in range(goals)]
        self.values = [[0.0, 0.0] for _ in range(goals)]
        self.untracked = 0

    def take(self) -> AbCounts:
        """The counts since the previous take (and start again from zero)."""
        counts = AbCounts(
            (self.exposed[0], self.exposed[1]),
            tuple((s, c) for s, c in self.converted),
            tuple((s, c) for s, c in self.values),
            self.untracked,
        )
        Tally.__init__(self, len(self.converted))
        return counts


class PooledTable(Tally):
    """The leader's table of every process's users of one route (hash -> variant bit | a bit
    per converted goal), at most ``max_users``; ``ident`` says which spec it counts for."""

    __slots__ = ("ident", "max_users", "test", "users")

    def __init__(
        self, goals: int, max_users: int, test: float | None = None, ident: object = None
    ) -> None:
        super().__init__(goals)
        self.max_users = max_users
        self.test = test
        self.ident = ident
        self.users: dict[int, int] = {}

    def expose(self, user: int, candidate: int) -> None:
        """A process's first exposure of ``user``: counted if no process exposed them yet."""
        users = self.users
        if user in users:
            return
        if len(users) >= self.max_users:
            self.untracked += 1
            return
        users[user] = candidate
        self.exposed[candidate] += 1

    def convert(self, user: int, goal: int, value: float) -> None:
        """A process's first conversion of ``user`` on ``goal``: counted once per user per
        goal, and only for a user exposed."""
        flags = self.users.get(user)
        bit = 2 << goal
        if flags is None or flags & bit or goal >= len(self.converted):
            return
        self.users[user] = flags | bit
        variant = flags & 1
        self.converted[goal][variant] += 1
        self.values[goal][variant] += value

    def apply(self, batch: AbEvents) -> None:
        """A follower's batch, in its order (one recorded under another test is dropped)."""
        if batch.test is not None and self.test is not None and batch.test != self.test:
            return
        for user, kind, value in batch.events:
            if kind < GOAL_BASE:
                self.expose(user, kind)
            else:
                self.convert(user, kind - GOAL_BASE, value)
        self.untracked += batch.untracked


__all__ = [
    "EXPOSED_CANDIDATE",
    "EXPOSED_STABLE",
    "GOAL_BASE",
    "MAX_EVENTS",
    "AbCounts",
    "AbEvents",
    "AbLead",
    "Event",
    "PooledTable",
    "Tally",
    "user_hash",
]
