"""Which version serves a request: a pure function of the route, the request and a random draw.

Theory of operation
-------------------
A route is compiled once per config snapshot into a `CompiledRoute` (lower-cased header names,
compiled regexes, the weight in basis points). Per request, `choose` walks the design's order:

1. no candidate, a candidate whose rollout rolled it back (``closed``: no user traffic at all),
   or a candidate with no address up (``candidate_up=False``, from the health book): stable,
   reason ``fallback``, whatever the overrides and sticky buckets say;
2. overrides, in file order (header or cookie; ``always``/``never``, exact value, regex):
   the first that gives a verdict wins, reason ``override``;
   then, on a route running an A/B test (``strategy: ab``) while its split is partial, a
   request outside the test's audience goes to stable, reason ``audience`` (`abgoals`);
3. a sticky key (the seed cookie the proxy sets, or a configured header) is hashed into
   10 000 buckets with a keyed blake2b: candidate iff ``bucket < weight_bp``, reason ``sticky``.
   Because the set ``{bucket < w}`` only grows with ``w``, a client on the candidate at weight
   ``w`` stays there at every higher weight, moves back only when the weight drops below its
   bucket, and every process and replica agrees (the hash is keyed by the route, not by
   anything process-local such as Python's ``hash()``);
4. no sticky key: a per-request draw at the weight, reason ``weight``. With a seed cookie
   configured, the draw also becomes the new client's seed (returned in `Decision.seed`,
   for the proxy to set as a cookie), so the client's next requests follow the same bucket.

Randomness is injected: the caller passes ``draw``, a uniformly random 64-bit integer.

The proxy's own synthetic requests (``traffic.py``) skip all of this: they carry a marker the
data path recognises, and `synthetic_decision` sends them where the rollout's ``traffic``
section says, reason ``synthetic``. Requests that come in on the preview listener skip it too:
`preview_decision` sends them to the route's candidate whatever the weight, reason ``preview``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from splitproxy.config import Backend, Override, Route
from splitproxy.config.patterns import Pattern, compile_pattern
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.abgoals import CompiledAb, compile_ab
from splitproxy.dataplane.lookup import RouteTable

BUCKETS: Final = 10_000  # 0.01 % resolution; never change it, buckets must stay comparable.


Reason = Literal[
    "override", "sticky", "weight", "fallback", "retry", "synthetic", "preview", "audience"
]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why; ``seed`` is a new sticky seed for the proxy to set;
    ``unit``, for a sticky decision, the 64-bit hash of the key (the user, for the analyzer)."""

    version: Version
    reason: Reason
    seed: str | None = None
    unit: int | None = None


# Decisions without a seed are shared instances: the hot path allocates nothing for them.
_FALLBACK = Decision(STABLE, "fallback")
_DECISIONS: Final[dict[tuple[str, str], Decision]] = {
    (v, r): Decision(v, r) for v in (STABLE, CANDIDATE) for r in get_args(Reason)
}


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream address of a backend."""

    host: str
    port: int
    url: str
    # (host, port): the pool's key, made once (each request looks its pool up by it)
    key: tuple[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.host, self.port))


@dataclass(frozen=True, slots=True)
class BackendPlan:
    """A version's upstreams (served round-robin by the data path) and its revision."""

    targets: tuple[Target, ...]
    revision: str | None

    @classmethod
    def from_model(cls, backend: Backend) -> BackendPlan:
        targets = []
        for url in backend.urls:
            parts = urlsplit(url)
            assert parts.hostname is not None  # the model validated it
            targets.append(Target(parts.hostname, parts.port or 80, url))
        return cls(tuple(targets), backend.revision)


@dataclass(frozen=True, slots=True)
class CompiledOverride:
    """An override rule ready for the hot path."""

    header: bytes | None  # lower-cased
    cookie: str | None
    value: str | None
    regex: Pattern | None

    @classmethod
    def from_model(cls, o: Override) -> CompiledOverride:
        return cls(
            header=o.header.lower().encode("latin-1") if o.header else None,
            cookie=o.cookie,
            value=o.value,
            regex=compile_pattern(o.regex) if o.regex is not None else None,
        )

    def verdict(self, raw: str) -> Version | None:
        """The version this value forces, or None to fall through to the next rule."""
        if self.value is not None:
            return CANDIDATE if raw == self.value else None
        if self.regex is not None:
            return CANDIDATE if self.regex.fullmatch(raw) else None
        lowered = raw.strip().lower()
        if lowered == "always":
            return CANDIDATE
        if lowered == "never":
            return STABLE
        return None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route as the data path uses it: matchers, backends, the split, in hot-path form."""

    name: str
    host: str | None  # exact host, lower-cased; None matches any
    host_suffix: str | None  # for "*.example.com": ".example.com"
    path_prefix: str
    stable: BackendPlan
    candidate: BackendPlan | None
    weight_bp: int
    overrides: tuple[CompiledOverride, ...]
    sticky_cookie: str | None
    sticky_header: bytes | None  # lower-cased
    sticky_max_age: int
    salt: bytes
    # header names (lower-cased bytes) this route reads, so the proxy keeps only those
    wanted_headers: frozenset[bytes] = field(default=frozenset())
    # the rollout rolled the candidate back: no user or synthetic request reaches it, not even
    # by an override (only the preview listener, an operator's address, still does)
    closed: bool = False
    ab: CompiledAb | None = None  # an A/B test's audience and goals (abgoals.py)

    @classmethod
    def from_model(
        cls, route: Route, weight_bp: int | None = None, *, closed: bool = False
    ) -> CompiledRoute:
        overrides = tuple(CompiledOverride.from_model(o) for o in route.overrides)
        sticky = route.sticky
        wanted = {o.header for o in overrides if o.header}
        if sticky and sticky.header:
            wanted.add(sticky.header.lower().encode("latin-1"))
        candidate = BackendPlan.from_model(route.candidate) if route.candidate else None
        host = route.match.host
        sticky_header = (
            sticky.header.lower().encode("latin-1") if sticky and sticky.header else None
        )
        spec = route.rollout.ab if route.rollout is not None else None
        ab = compile_ab(spec, sticky.cookie if sticky else None, sticky_header)
        if ab is not None:
            wanted |= ab.wanted
        return cls(
            name=route.name,
            host=None if host is None or host.startswith("*.") else host,
            host_suffix=host[1:] if host and host.startswith("*.") else None,
            path_prefix=route.match.path_prefix,
            stable=BackendPlan.from_model(route.stable),
            candidate=candidate,
            weight_bp=route.weight_bp if weight_bp is None else weight_bp,
            overrides=overrides,
            sticky_cookie=sticky.cookie if sticky else None,
            sticky_header=sticky_header,
            sticky_max_age=sticky.max_age if sticky else 0,
            salt=salt_for(route.name, candidate.revision if candidate else None),
            wanted_headers=frozenset(wanted),
            closed=closed and candidate is not None,
            ab=ab,
        )

    def matches(self, host: str, path: str) -> bool:
        """Does this route serve ``host`` (lower-cased, port stripped) and ``path``?"""
        if self.host is not None and host != self.host:
            return False
        if self.host_suffix is not None and not host.endswith(self.host_suffix):
            return False
        return path.startswith(self.path_prefix)

    def __repr__(self) -> str:
        cand = f" candidate={self.weight_bp / 100:g}%" if self.candidate else ""
        return f"<CompiledRoute {self.name}{cand}>"


def salt_for(route_name: str, revision: str | None) -> bytes:
    """The hash key of a route's buckets: fixed for one rollout, new for the next revision,
    so each rollout exposes a different slice of users first."""
    material = f"{route_name}\x00{revision or ''}".encode()
    return hashlib.blake2b(material, digest_size=32).digest()


def bucket(key: str, salt: bytes) -> int:
    """A stable bucket in [0, BUCKETS) for a sticky key; the same in every process."""
    return key_hash(key, salt) % BUCKETS


def key_hash(key: str, salt: bytes) -> int:
    """A sticky key's 64-bit keyed hash: its bucket, and its identity as a unit."""
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogateescape"), digest_size=8, key=salt
    ).digest()
    return int.from_bytes(digest, "big")


# A user's requests carry the same sticky key, and finding it in the Cookie header, hashing it
# (keyed BLAKE2b) and making its `Decision` cost ~20 k instructions, nearly a tenth of a
# proxied request: the units of keys seen lately are kept (`_units`), by the route's
# salt, the cookie's (str) or header's (bytes) name and the raw header value, and a known key's
# decision costs a dictionary look-up. Bounded, since keys come from clients: the table starts
# over when full, and only headers up to `STICKY_RAW_MAX` bytes are kept (at most ~3 MB: an
# entry is its key, its raw header and two decisions); longer ones are parsed every time. A
# key not in the table costs ~6 k instructions more than without it (its entry, the turnover):
# users who come back only after 4,096 other keys pay that (benchmarks/README.md).
STICKY_REMEMBERED: Final = 4096
STICKY_RAW_MAX: Final = 256


# An entry: [bucket, unit, stable's decision, candidate's decision], the decisions made when
# first needed. A list, not an object: a user's first request pays for its entry, and a
# list costs a fraction of an instance's ``__init__``.
_BUCKET, _UNIT, _STABLE, _CANDIDATE = range(4)
_units: dict[tuple[bytes, str | bytes, bytes], list[Any]] = {}


def cookie_value(raw: bytes | None, name: str) -> str | None:
    """The value of cookie ``name`` in a raw ``Cookie`` header, or None."""
    if not raw:
        return None
    text = raw.decode("latin-1")
    for part in text.split(";"):
        k, sep, v = part.partition("=")
        if sep and k.strip() == name:
            return v.strip().strip('"')
    return None


def find_route(routes: tuple[CompiledRoute, ...], host: str, path: str) -> CompiledRoute | None:
    """The first route (in file order) whose match fits, or None.

    The data path asks its snapshot (`state.Snapshot.find`), whose `lookup.RouteTable` is
    built once per config, off the loop; this builds a table for one answer."""
    return RouteTable(routes).find(host, path)


def scan_routes(routes: tuple[CompiledRoute, ...], host: str, path: str) -> CompiledRoute | None:
    """`find_route` by a linear scan: the rule itself, which the table must agree with."""
    for route in routes:
        if route.matches(host, path):
            return route
    return None


def seed_from_draw(draw: int) -> str:
    """A new client's sticky seed: the draw as 16 hex digits."""
    return f"{draw:016x}"


def choose(
    route: CompiledRoute, headers: Mapping[bytes, bytes], draw: int, candidate_up: bool = True
) -> Decision:
    """Pick the version for one request.

    ``headers`` maps lower-cased header names to raw values (``b"cookie"`` included when the
    route reads cookies); ``draw`` is a uniformly random integer in [0, 2**64);
    ``candidate_up`` is False while none of the candidate's addresses may take traffic.
    """
    if route.candidate is None or route.closed or not candidate_up:
        return _FALLBACK
    if route.overrides:
        cookies = headers.get(b"cookie")
        for rule in route.overrides:
            if rule.header is not None:
                raw = headers.get(rule.header)
                value = raw.decode("latin-1") if raw is not None else None
            else:
                assert rule.cookie is not None
                value = cookie_value(cookies, rule.cookie)
            if value is not None:
                verdict = rule.verdict(value)
                if verdict is not None:
                    return _DECISIONS[verdict, "override"]
    weight = route.weight_bp
    if route.ab is not None and 0 < weight < BUCKETS and not route.ab.admits(headers):
        return _DECISIONS[STABLE, "audience"]  # an A/B test's outsider: stable, not counted
    header = route.sticky_header
    name: str | bytes | None
    if header is not None:
        name, raw = header, headers.get(header)
    else:
        name = route.sticky_cookie
        raw = headers.get(b"cookie") if name is not None else None
    if name is not None:
        # a key seen lately costs a look-up, not a parse, a hash and a Decision (`_units`)
        known: list[Any] | None = None
        if raw:
            remember = len(raw) <= STICKY_RAW_MAX
            if remember:
                known = _units.get((route.salt, name, raw))
            if known is None:
                key = cookie_value(raw, name) if isinstance(name, str) else raw.decode("latin-1")
                if key:
                    unit = key_hash(key, route.salt)
                    known = [unit % BUCKETS, unit, None, None]
                    if remember:
                        if len(_units) >= STICKY_REMEMBERED:
                            _units.clear()
                        _units[route.salt, name, raw] = known
        if known is not None:
            side = _CANDIDATE if known[_BUCKET] < weight else _STABLE
            decision: Decision | None = known[side]
            if decision is None:
                version: Version = CANDIDATE if side == _CANDIDATE else STABLE
                decision = known[side] = Decision(version, "sticky", None, known[_UNIT])
            return decision
        if route.sticky_header is None:  # no seed yet (or an empty one): give the client one
            seed = seed_from_draw(draw)
            unit = key_hash(seed, route.salt)
            return Decision(CANDIDATE if unit % BUCKETS < weight else STABLE, "sticky", seed, unit)
    if weight <= 0:
        return _DECISIONS[STABLE, "weight"]
    if weight >= BUCKETS:
        return _DECISIONS[CANDIDATE, "weight"]
    return _DECISIONS[CANDIDATE if draw % BUCKETS < weight else STABLE, "weight"]


def synthetic_decision(route: CompiledRoute, target: Version) -> Decision:
    """Where a synthetic request goes: its ``target``, or stable when the route has no
    candidate to send it to."""
    if target == CANDIDATE and (route.candidate is None or route.closed):
        target = STABLE
    return _DECISIONS[target, "synthetic"]


def preview_decision(route: CompiledRoute) -> Decision:
    """Where a request to the preview listener goes: the route's candidate, whatever the
    weight, overrides or sticky key (and no seed), or stable when the route has none."""
    return _DECISIONS[STABLE if route.candidate is None else CANDIDATE, "preview"]


def retry_decision() -> Decision:
    """The decision recorded when a failed candidate request is replayed on stable."""
    return _DECISIONS[STABLE, "retry"]
