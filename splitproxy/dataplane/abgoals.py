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

The controller takes each route's counts once a tick (`AbBook.take`: the increments since
the previous take, an `AbCounts`) and hands them to the analyzer (`rollout.ab`). Pure: no
clock, no IO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from splitproxy.config.abtest import AbTest, AudienceRule, Goal
from splitproxy.config.patterns import Pattern, compile_pattern

if TYPE_CHECKING:
    from splitproxy.dataplane.routing import CompiledRoute, Decision

_FULL: Final = 10_000  # routing.BUCKETS (imported lazily there: routing imports this module)
_CANDIDATE_BIT: Final = 1


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


class AbTable:
    """One route's users (sticky key -> variant bit | a bit per converted goal) and the
    counts not yet taken."""

    __slots__ = ("ab", "converted", "exposed", "salt", "test", "untracked", "users", "values")

    def __init__(self, ab: CompiledAb, salt: bytes, test: float | None = None) -> None:
        self.ab = ab
        self.salt = salt
        self.test = test
        self.users: dict[str, int] = {}
        n = len(ab.goals)
        self.exposed = [0, 0]
        self.converted = [[0, 0] for _ in range(n)]
        self.values = [[0.0, 0.0] for _ in range(n)]
        self.untracked = 0

    def take(self) -> AbCounts:
        counts = AbCounts(
            (self.exposed[0], self.exposed[1]),
            tuple((s, c) for s, c in self.converted),
            tuple((s, c) for s, c in self.values),
            self.untracked,
        )
        n = len(self.ab.goals)
        self.exposed = [0, 0]
        self.converted = [[0, 0] for _ in range(n)]
        self.values = [[0.0, 0.0] for _ in range(n)]
        self.untracked = 0
        return counts


class AbBook:
    """Every A/B route's table (see the module docstring)."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[str, AbTable] = {}

    def _table(self, route: CompiledRoute, ab: CompiledAb) -> AbTable:
        table = self.tables.get(route.name)
        if table is not None and table.ab is ab and table.salt == route.salt:
            return table  # the common case: the same compiled route as before
        if table is None or table.salt != route.salt or table.ab.spec != ab.spec:
            table = self.tables[route.name] = AbTable(ab, route.salt)
        table.ab = ab
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
        if len(users) >= ab.spec.max_users:
            table.untracked += 1
            return
        candidate = decision.version == "candidate"
        users[key] = _CANDIDATE_BIT if candidate else 0
        table.exposed[candidate] += 1

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
        if flags is None or key is None:
            return
        heads = {n.lower(): v for n, v in headers} if ab.heads else {}
        variant = flags & _CANDIDATE_BIT
        for i, goal in enumerate(ab.goals):
            bit = 2 << i
            if flags & bit or not goal.matches(ex.method, ex.path, status, heads):
                continue
            flags |= bit
            table.converted[i][variant] += 1
            if goal.value_header is not None:
                table.values[i][variant] += _number(heads.get(goal.value_header))
        table.users[key] = flags

    def take(self, route: str) -> AbCounts | None:
        """The route's counts since the previous take (None: no table)."""
        table = self.tables.get(route)
        return None if table is None else table.take()

    def follow(self, route: str, test: float | None) -> None:
        """The analyzer's test on ``route`` (its start time; None: none runs). A different
        test than the table's starts the table afresh: its users were counted for another."""
        table = self.tables.get(route)
        if table is None or test is None:
            return
        if table.test is not None and table.test != test:
            self.tables[route] = AbTable(table.ab, table.salt, test)
        else:
            table.test = test

    def retain(self, routes: set[str]) -> None:
        """Drop the tables of routes that are gone or no longer test."""
        self.tables = {n: t for n, t in self.tables.items() if n in routes}

    def size(self, route: str) -> int:
        """The users in the route's table now."""
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
