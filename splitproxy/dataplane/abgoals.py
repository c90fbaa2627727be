"""A/B tests in the data path: who takes part, and the users and conversions per variant.

A route whose rollout is ``strategy: ab`` compiles its ``ab:`` section into a `CompiledAb`
(`routing.CompiledRoute.ab`; None on every other route, so they pay one attribute test):

- *the audience*. While the split is partial (``0 < weight < 100 %``), `routing.choose` sends
  a request that is not in the audience (a rule does not match, or the route's sticky header
  is missing) to stable, reason ``audience``; it is not counted. Audience users get the
  candidate by their sticky bucket at the split, reason ``sticky``, as any sticky user does.
- *exposure* (`AbBook.exposed`, from the recorder when the request is routed): a user's
  first request routed ``sticky`` while the split is partial adds the user, by sticky key, to
  the route's table with their variant.
- *conversion* (`AbBook.response`, from the exchange when the upstream's response head
  arrives): for a user in the table, the first response per goal that matches the goal
  (request method and path, response status, response header) counts the user as converted
  on that goal; ``value_header``'s number is added to the variant's sum for the goal. The
  proxy's own error answers (no upstream response) never convert.

*Bounded memory.* The table is a dict from sticky key to a small integer (the variant and
one bit per goal), at most ``max_users`` keys per route (default 100 000: about 100 bytes a
user with 16-character seeds, so 10 MB). Beyond the cap a new user still gets their variant
but is not counted at all (neither exposed nor converted): the assignment is random and
independent of the arrival order, so the counted users are a fair sample of both variants
and neither test is biased; ``untracked`` says how many were left out. The table starts
afresh when the proxy restarts (the aggregate counts live in the rollout's saved state),
when the test restarts (`AbBook.follow`) and when the route's A/B spec or candidate
revision changes.

*Several processes* (``--workers N``, replicas sharing Redis): each process still dedupes in
its own table, followers ship the events of it with their harvests and the leader counts
every process's users once in its global tables (`abpool`, `AbBook.share`, `AbBook.lead`).

The controller takes each route's counts once a tick (`AbBook.take`: the increments since
the previous take, an `AbCounts`) and hands them to the analyzer (`rollout.ab`). Pure: no
clock, no IO.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from splitproxy.config.abtest import AbTest, AudienceRule, Goal
from splitproxy.config.patterns import Pattern, compile_pattern
from splitproxy.dataplane.abpool import (
    GOAL_BASE,
    MAX_EVENTS,
    AbCounts,
    AbEvents,
    AbLead,
    Event,
    PooledTable,
    Tally,
    user_hash,
)

if TYPE_CHECKING:
    from splitproxy.dataplane.routing import CompiledRoute, Decision

_FULL: Final = 10_000  # routing.BUCKETS (imported lazily there: routing imports this module)
_CANDIDATE_BIT: Final = 1
_LEFT_OUT: Final = -1  # a user this process does not count (its events could not be shipped)


class Routed(Protocol):
    """What the book reads of an exchange (`exchange.Exchange`)."""

    @property
    def route(self) -> CompiledRoute | None: ...
    @property
    def decision(self) -> Decision | None: ...
    @property
    def wanted(self) -> Mapping[bytes, bytes]: ...
    @property
    def method(self) -> bytes: ...
    @property
    def path(self) -> str: ...


class _Rule:
    __slots__ = ("cookie", "header", "raw", "regex", "value")

    def __init__(self, rule: AudienceRule) -> None:
        self.header = rule.header.lower().encode("latin-1") if rule.header else None
        self.cookie = rule.cookie
        self.value = rule.value
        # a header's exact value, compared as the bytes that came in (no decoding)
        self.raw = _latin1(rule.value)
        self.regex: Pattern | None = compile_pattern(rule.regex) if rule.regex else None

    def holds(self, headers: Mapping[bytes, bytes]) -> bool:
        if self.header is not None:
            raw = headers.get(self.header)
            if raw is None or self.raw is not None:
                return raw is not None and raw == self.raw
            text: str | None = raw.decode("latin-1")
        else:
            assert self.cookie is not None
            text = _cookie(headers.get(b"cookie"), self.cookie)
        if text is None:
            return False
        if self.value is not None:
            return text == self.value
        if self.regex is not None:
            return self.regex.fullmatch(text) is not None
        return True


class _Goal:
    __slots__ = ("header", "method", "prefix", "regex", "status", "value", "value_header")

    def __init__(self, goal: Goal) -> None:
        self.method = goal.method.encode("latin-1") if goal.method else None
        self.prefix = goal.path_prefix
        self.regex: Pattern | None = compile_pattern(goal.path_regex) if goal.path_regex else None
        self.status = frozenset(goal.status) if goal.status is not None else None
        self.header = goal.header.lower().encode("latin-1") if goal.header else None
        self.value = goal.value.encode("latin-1") if goal.value is not None else None
        self.value_header = (
            goal.value_header.lower().encode("latin-1") if goal.value_header else None
        )

    def matches(self, method: bytes, path: str, status: int, heads: dict[bytes, bytes]) -> bool:
        if self.method is not None and method.upper() != self.method:
            return False
        if self.prefix is not None and not path.startswith(self.prefix):
            return False
        if self.regex is not None and self.regex.fullmatch(path) is None:
            return False
        if self.status is not None and status not in self.status:
            return False
        if self.header is not None:
            raw = heads.get(self.header)
            if raw is None or (self.value is not None and raw.strip() != self.value):
                return False
        return True


class CompiledAb:
    """A route's A/B test in hot-path form: the audience, the sticky key, the goals."""

    __slots__ = ("goals", "heads", "rules", "spec", "sticky_cookie", "sticky_header", "wanted")

    def __init__(self, spec: AbTest, sticky_cookie: str | None, sticky_header: bytes | None):
        self.spec = spec
        self.rules = tuple(_Rule(r) for r in spec.audience)
        self.goals = tuple(_Goal(g) for g in spec.goals)
        self.sticky_cookie = sticky_cookie
        self.sticky_header = sticky_header
        # response headers read: only then is a response's header list turned into a dict
        self.heads = any(g.header or g.value_header for g in self.goals)
        self.wanted = frozenset(r.header for r in self.rules if r.header is not None)

    def admits(self, headers: Mapping[bytes, bytes]) -> bool:
        """Does this request's user take part (every audience rule holds, and the route's
        sticky header, when it is the key, is there)?"""
        if self.sticky_header is not None and not headers.get(self.sticky_header):
            return False
        for rule in self.rules:  # noqa: SIM110 - a loop, not all(): no generator per request
            if not rule.holds(headers):
                return False
        return True

    def key(self, headers: Mapping[bytes, bytes], decision: Decision) -> str | None:
        """The user's sticky key: the header, the seed cookie, or the seed just given."""
        if self.sticky_header is not None:
            raw = headers.get(self.sticky_header)
            return raw.decode("latin-1") if raw else None
        if decision.seed is not None:
            return decision.seed
        assert self.sticky_cookie is not None
        return _cookie(headers.get(b"cookie"), self.sticky_cookie) or None


def compile_ab(
    spec: AbTest | None, sticky_cookie: str | None, sticky_header: bytes | None
) -> CompiledAb | None:
    """The hot-path form of a route's ``ab:`` section (None: no A/B test)."""
    if spec is None or (sticky_cookie is None and sticky_header is None):
        return None
    return CompiledAb(spec, sticky_cookie, sticky_header)


def _cookie(raw: bytes | None, name: str) -> str | None:
    from splitproxy.dataplane.routing import cookie_value  # routing imports this module

    return cookie_value(raw, name)


class AbTable(Tally):
    """One route's users (sticky key -> variant bit | a bit per converted goal; -1: left out)
    and the counts not yet taken; on a follower, the events not yet shipped (`abpool`)."""

    __slots__ = ("ab", "events", "salt", "test", "users")

    def __init__(self, ab: CompiledAb, salt: bytes, test: float | None = None) -> None:
        super().__init__(len(ab.goals))
        self.ab = ab
        self.salt = salt
        self.test = test
        self.users: dict[str, int] = {}
        self.events: list[Event] = []


class AbBook:
    """Every A/B route's table (see the module docstring). Alone, a process counts its own
    users; with workers or replicas (`share`), followers ship their events and the leader
    (`lead`) counts every process's users once in its global tables (`abpool`)."""

    __slots__ = ("epoch", "idents", "limit", "pool", "routes", "shipping", "tables", "tests")

    def __init__(self) -> None:
        self.tables: dict[str, AbTable] = {}
        self.routes: dict[str, CompiledRoute] = {}  # the A/B routes served now
        self.idents: dict[str, tuple[AbTest, bytes]] = {}  # what each route's test is
        self.tests: dict[str, float] = {}  # route -> the running test (its start)
        self.shipping = False  # record events (a process among several)
        self.limit = MAX_EVENTS  # events per route between two drains
        self.pool: dict[str, PooledTable] | None = None  # the leader's global tables
        self.epoch: int | None = None  # the leader a follower ships to

    def _table(self, route: CompiledRoute, ab: CompiledAb) -> AbTable:
        table = self.tables.get(route.name)
        if table is not None and table.ab is ab and table.salt == route.salt:
            return table  # the common case: the same compiled route as before
        if table is None or table.salt != route.salt or table.ab.spec != ab.spec:
            test = self.tests.get(route.name)
            table = self.tables[route.name] = AbTable(ab, route.salt, test)
        table.ab = ab
        return table

    def _pooled(self, name: str) -> PooledTable | None:
        """The leader's global table of route ``name`` (None: not leading, or no A/B test)."""
        pool, ident = self.pool, self.idents.get(name)
        if pool is None or ident is None:
            return None
        table = pool.get(name)
        if table is not None and (table.ident is ident or table.ident == ident):
            table.ident = ident  # compared by identity from now on (the spec is a model)
            return table
        spec = ident[0]
        table = pool[name] = PooledTable(
            len(spec.goals), spec.max_users, self.tests.get(name), ident
        )
        return table

    def exposed(self, ex: Routed) -> None:
        """A request was routed: a user routed by their sticky key while the split is
        partial is exposed to their variant (once)."""
        route, decision = ex.route, ex.decision
        if route is None or decision is None or decision.reason != "sticky":
            return
        ab = route.ab
        if ab is None or not 0 < route.weight_bp < _FULL:
            return
        key = ab.key(ex.wanted, decision)
        if key is None:
            return
        table = self._table(route, ab)
        users = table.users
        if key in users:
            return
        full = len(users) >= ab.spec.max_users
        candidate = decision.version == "candidate"
        if self.shipping:
            self._share_exposure(table, route.name, key, int(candidate), full)
            return
        if full:
            table.untracked += 1
            return
        users[key] = _CANDIDATE_BIT if candidate else 0
        table.exposed[candidate] += 1

    def _share_exposure(
        self, table: AbTable, name: str, key: str, candidate: int, full: bool
    ) -> None:
        pooled = self._pooled(name)
        if pooled is not None:  # the leader: straight into the global table
            if full:
                pooled.untracked += 1
                return
            table.users[key] = candidate
            pooled.expose(user_hash(key, table.salt), candidate)
            return
        if full or len(table.events) >= self.limit:
            table.users[key] = _LEFT_OUT  # never counted by this process (as beyond the cap)
            table.untracked += 1
            return
        table.users[key] = candidate
        table.events.append((user_hash(key, table.salt), candidate, 0.0))

    def response(self, ex: Routed, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """The upstream's response head for ``ex``: count the user's first conversion on each
        goal it matches."""
        route, decision = ex.route, ex.decision
        if route is None or decision is None or decision.reason != "sticky":
            return
        ab = route.ab
        table = self.tables.get(route.name)
        if ab is None or table is None or table.salt != route.salt:
            return
        key = ab.key(ex.wanted, decision)
        flags = table.users.get(key) if key is not None else None
        if flags is None or key is None or flags < 0:
            return
        heads = {n.lower(): v for n, v in headers} if ab.heads else {}
        variant = flags & _CANDIDATE_BIT
        pooled: PooledTable | None = None
        for i, goal in enumerate(ab.goals):
            bit = 2 << i
            if flags & bit or not goal.matches(ex.method, ex.path, status, heads):
                continue
            value = 0.0
            if goal.value_header is not None:
                value = _number(heads.get(goal.value_header))
            if self.pool is not None:  # the leader: straight into the global table
                pooled = pooled or self._pooled(route.name)
                if pooled is not None:
                    pooled.convert(user_hash(key, table.salt), i, value)
            elif self.shipping:
                if len(table.events) >= self.limit:
                    continue  # kept back: the goal stays unmarked, a later response retries
                table.events.append((user_hash(key, table.salt), GOAL_BASE + i, value))
            else:
                table.converted[i][variant] += 1
                table.values[i][variant] += value
            flags |= bit
        table.users[key] = flags

    def take(self, route: str) -> AbCounts | None:
        """The route's counts since the previous take (None: no table); the leader's are
        every process's (its global table)."""
        table = self.tables.get(route)
        if self.pool is not None:
            if table is not None:
                table.take()  # its own counts are in the global table already
            pooled = self._pooled(route)
            return None if pooled is None else pooled.take()
        return None if table is None else table.take()

    def follow(self, route: str, test: float | None) -> None:
        """The analyzer's test on ``route`` (its start time; None: none runs). A different
        test than the table's starts the table afresh: its users were counted for another."""
        if test is not None:
            self.tests[route] = test
        pooled = self.pool.get(route) if self.pool is not None else None
        if pooled is not None and test is not None:
            if pooled.test is not None and pooled.test != test:
                assert self.pool is not None
                self.pool[route] = PooledTable(
                    len(pooled.converted), pooled.max_users, test, pooled.ident
                )
            else:
                pooled.test = test
        table = self.tables.get(route)
        if table is None or test is None:
            return
        if table.test is not None and table.test != test:
            self.tables[route] = AbTable(table.ab, table.salt, test)
        else:
            table.test = test

    # -- several processes (abpool) -------------------------------------------------------------
    def share(self, limit: int = MAX_EVENTS) -> None:
        """This process is one of several: record events (see `abpool`)."""
        self.shipping = True
        self.limit = limit

    def lead(self, leading: bool) -> None:
        """Start (or stop) keeping the global tables. A new leader starts them empty, and its
        own table too, so its users are counted in them from their next request."""
        self.pool = {} if leading else None
        self.tables.clear()

    def lead_info(self, epoch: int) -> AbLead:
        """What the leader tells followers (`AbLead`)."""
        return AbLead(epoch, dict(self.tests))

    def follow_leader(self, lead: AbLead) -> None:
        """A follower hears from the leader: a new leader empties this process's tables of
        users (so they are exposed to the new global table again: an exposure sent twice counts
        once), and the tests are followed."""
        if lead.epoch != self.epoch:
            self.epoch = lead.epoch
            for table in self.tables.values():
                table.users = {}  # the events not shipped yet stay: they are still true
        for route, test in lead.tests.items():
            self.follow(route, test)

    def drain(self) -> dict[str, AbEvents]:
        """A follower's events since the previous drain, by route (to ship with a harvest)."""
        out: dict[str, AbEvents] = {}
        for name, table in self.tables.items():
            if table.events or table.untracked:
                out[name] = AbEvents(table.test, tuple(table.events), table.untracked)
                table.events = []
                table.untracked = 0
        return out

    def absorb(self, batches: Mapping[str, AbEvents]) -> None:
        """A follower's batches, in the order it sent them (the leader's side)."""
        for name, batch in batches.items():
            pooled = self._pooled(name)
            if pooled is not None:
                pooled.apply(batch)

    def holds_any(self) -> bool:
        """Does the book hold any route's test, table or identity? (None: `configure` with no
        A/B route among those served changes nothing.)"""
        return bool(self.routes or self.idents or self.tables or self.tests or self.pool)

    def configure(self, routes: Iterable[CompiledRoute]) -> None:
        """The A/B routes served now (the others' tables are dropped)."""
        self.routes = {r.name: r for r in routes if r.ab is not None}
        self.idents = {n: (r.ab.spec, r.salt) for n, r in self.routes.items() if r.ab}
        self.retain(set(self.routes))

    def retain(self, routes: set[str]) -> None:
        """Drop the tables of routes that are gone or no longer test."""
        self.tables = {n: t for n, t in self.tables.items() if n in routes}
        self.tests = {n: t for n, t in self.tests.items() if n in routes}
        if self.pool is not None:
            self.pool = {n: t for n, t in self.pool.items() if n in routes}

    def size(self, route: str) -> int:
        """The users in the route's table now (the leader's global table, when pooled)."""
        pooled = self.pool.get(route) if self.pool is not None else None
        if pooled is not None:
            return len(pooled.users)
        table = self.tables.get(route)
        return 0 if table is None else len(table.users)


def _latin1(text: str | None) -> bytes | None:
    """``text`` as header bytes; None when it has none (it can then never match as bytes)."""
    if text is None:
        return None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _number(raw: bytes | None) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw.strip())
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


__all__ = ["AbBook", "AbCounts", "AbTable", "CompiledAb", "compile_ab"]
