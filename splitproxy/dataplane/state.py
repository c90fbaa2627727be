"""Runtime state: the config snapshot every request reads, and the runtime weight overrides.

A `Snapshot` is immutable. Each change (a new routing file, a weight set through the admin
API) builds a new one and swaps a single reference, so a request that started on one
snapshot finishes on it, and no request ever sees half a change.

Precedence of weights, highest first:

1. ``rollout``: while a rollout drives a route (``rollout/controller.py`` applies its weight),
   its weight wins. It belongs to one candidate (its revision, or a digest of its URLs): when
   a reload names another candidate, all traffic goes to stable (weight 0) until the analyzer
   restarts the rollout on its next tick; when the route loses its candidate or its
   ``rollout:`` section, the rollout weight is dropped. A runtime weight (below) cannot be set
   while a rollout weight is in force: that is a 409 pointing to pause, promote and rollback.
2. ``runtime``: a weight set through the admin API or the CLI wins over the file's ``weight``
   until the file changes that route, at which point the file wins again and the override is
   dropped.
3. ``file``: the routing file is the desired state.

Every value and the winner show in status.

A **revert** (``rollout/revert.py``) overrides a route's backends: after a promotion whose
revert window is open, all of the route's requests go to the stable the promotion replaced,
even when the file no longer names it, until the file changes that route. While a window is
open, that previous stable is **warm**: its upstream pool is kept (`upstream_keys`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from splitproxy.config import Backend, Route, RoutingConfig

# defined with the routing file it hashes; re-exported for the callers that import it from here
from splitproxy.config import content_hash as content_hash
from splitproxy.dataplane.lookup import RouteTable
from splitproxy.dataplane.routing import BackendPlan, CompiledRoute
from splitproxy.errors import Conflict, InvalidValue, NotReady, UnknownRoute

logger = logging.getLogger("splitproxy.dataplane.state")

_K = TypeVar("_K")
_V = TypeVar("_V")


def own_copy(mapping: Mapping[_K, _V]) -> dict[_K, _V]:
    """A new dict of ``mapping``. A snapshot's mappings are read-only views of dicts, which
    ``dict(view)`` copies through the view, key by key (85 µs for 1,000 routes, on each of a
    tick's weight changes); the view's ``copy`` is the dict's own, in C (4 µs)."""
    if isinstance(mapping, MappingProxyType | dict):
        return mapping.copy()
    return dict(mapping)


# Headers the data path always reads, whatever the routes say.
BASE_WANTED_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"cookie",
        b"expect",
        b"upgrade",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"content-length",
        b"transfer-encoding",
    }
)


@dataclass(frozen=True, slots=True)
class WeightOverride:
    """A candidate weight set at runtime, in force until the file changes its route."""

    percent: float
    set_at: float  # wall-clock seconds
    source: str = "admin"


@dataclass(frozen=True, slots=True)
class RolloutWeight:
    """The candidate weight a rollout set, for the candidate it was set for."""

    percent: float
    set_at: float  # wall-clock seconds
    candidate: str  # `candidate_identity` of the candidate it applies to
    closed: bool = False  # rolled back: the candidate gets no traffic, overrides included
    shadow: bool = False  # the rollout's shadow phase: user requests are mirrored to it


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the routing config plus runtime overrides."""

    config: RoutingConfig
    routes: tuple[CompiledRoute, ...]
    content_hash: str
    loaded_at: float
    overrides: Mapping[str, WeightOverride] = field(default_factory=lambda: MappingProxyType({}))
    rollout_weights: Mapping[str, RolloutWeight] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # route -> the previous stable it is reverted to (all its traffic goes there)
    reverts: Mapping[str, Backend] = field(default_factory=lambda: MappingProxyType({}))
    # route -> a previous stable kept warm while its revert window is open
    warm: Mapping[str, Backend] = field(default_factory=lambda: MappingProxyType({}))
    # which route serves a request (`lookup.RouteTable`); built where the config is compiled
    # (a reload: in the worker thread), reused with new weights (`RouteTable.rebind`)
    table: RouteTable | None = field(default=None, repr=False, compare=False)
    # route name -> position in `routes`: lookups by name are a dict access, not a scan
    _positions: Mapping[str, int] = field(init=False, repr=False, compare=False)
    # ``positions``: the positions, when known (not kept as a field: `_positions` is). A
    # snapshot of the same config with new weights (`RuntimeState._recompile`) has the same
    # names in the same places; making them again on each of a tick's weight changes cost
    # O(routes) each.
    positions: InitVar[Mapping[str, int] | None] = None

    def __post_init__(self, positions: Mapping[str, int] | None) -> None:
        if positions is None:
            positions = {route.name: i for i, route in enumerate(self.routes)}
        object.__setattr__(self, "_positions", positions)
        if self.table is None or self.table.routes is not self.routes:
            table = self.table.rebind(self.routes) if self.table else RouteTable(self.routes)
            object.__setattr__(self, "table", table)

    def find(self, host: str, path: str) -> CompiledRoute | None:
        """The route that serves ``host`` and ``path`` (`routing.find_route`'s rule)."""
        table = self.table
        assert table is not None  # set in __post_init__
        return table.find(host, path)

    @property
    def revision(self) -> str:
        """What identifies this config in status, metrics and logs: the user's revision (if
        the file names one) plus a short content hash."""
        short = self.content_hash[:12]
        return f"{self.config.revision}+{short}" if self.config.revision else short

    def route(self, name: str) -> CompiledRoute | None:
        position = self._positions.get(name)
        return self.routes[position] if position is not None else None


@dataclass(frozen=True, slots=True)
class SharedState:
    """What another process needs to serve exactly as a snapshot does (`RuntimeState.adopt`):
    the config and every runtime weight, revert and warm backend, without the compiled routes."""

    config: RoutingConfig
    content_hash: str
    loaded_at: float
    overrides: Mapping[str, WeightOverride]
    rollout_weights: Mapping[str, RolloutWeight]
    reverts: Mapping[str, Backend]
    warm: Mapping[str, Backend]

    @classmethod
    def of(cls, snapshot: Snapshot) -> SharedState:
        return cls(
            snapshot.config, snapshot.content_hash, snapshot.loaded_at,
            own_copy(snapshot.overrides), own_copy(snapshot.rollout_weights),
            own_copy(snapshot.reverts), own_copy(snapshot.warm),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Prepared:
    """A routing file compiled off the event loop (`RuntimeState.prepare`), with the file's
    weights; `RuntimeState.install` applies the weights that carry over and swaps it in."""

    snapshot: Snapshot


def weight_source(snapshot: Snapshot, name: str) -> str:
    """Who sets the route's weight now: ``revert``, ``rollout``, ``runtime`` or ``file``."""
    if name in snapshot.reverts:
        return "revert"
    if name in snapshot.rollout_weights:
        return "rollout"
    if name in snapshot.overrides:
        return "runtime"
    return "file"


def candidate_identity(route: Route) -> str | None:
    """What identifies the route's candidate for a rollout: its revision, or (without one) a
    digest of its URLs; None without a candidate. A new identity is a new rollout."""
    candidate = route.candidate
    if candidate is None:
        return None
    if candidate.revision is not None:
        return candidate.revision
    digest = hashlib.sha256("\n".join(candidate.urls).encode()).hexdigest()[:12]
    return f"urls:{digest}"


def upstream_keys(snapshot: Snapshot) -> set[tuple[str, int]]:
    """Every upstream address (host, port) a snapshot's routes name: the pools it needs."""
    keys: set[tuple[str, int]] = set()
    for route in snapshot.routes:
        for plan in (route.stable, route.candidate):
            if plan is not None:
                keys.update(target.key for target in plan.targets)
    for backend in (*snapshot.warm.values(), *snapshot.reverts.values()):
        keys.update(target.key for target in BackendPlan.from_model(backend).targets)
    return keys


def compile_snapshot(
    config: RoutingConfig,
    digest: str,
    loaded_at: float,
    overrides: Mapping[str, WeightOverride],
    rollout_weights: Mapping[str, RolloutWeight] | None = None,
    reverts: Mapping[str, Backend] | None = None,
    warm: Mapping[str, Backend] | None = None,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Build the immutable snapshot for ``config`` with the rollout weights and the runtime
    weight ``overrides`` applied (a rollout's weight wins). A route whose definition equals
    its definition in ``previous`` keeps its compiled form (with the weight set anew), so a
    weight change or a reload that edits a few routes compiles only those."""
    driven = dict(rollout_weights or {})
    reverted = dict(reverts or {})
    routes = []
    for route in config.routes:
        name = route.name
        reusable = _reusable(previous, route) if previous is not None else None
        routes.append(
            _compile_route(
                route, reusable, overrides.get(name), driven.get(name), reverted.get(name)
            )
        )
    same = previous is not None and previous.config is config
    return Snapshot(
        config,
        tuple(routes),
        digest,
        loaded_at,
        MappingProxyType(dict(overrides)),
        MappingProxyType(driven),
        MappingProxyType(reverted),
        MappingProxyType(dict(warm or {})),
        previous.table if same and previous is not None else None,
    )


def _reusable(previous: Snapshot, route: Route) -> CompiledRoute | None:
    """``route``'s compiled form in ``previous`` when its definition did not change (and it
    was not compiled as a revert, which replaces its backends)."""
    before = previous.config.route(route.name)
    if before is None or (before is not route and before != route):
        return None
    if route.name in previous.reverts:
        return None
    return previous.route(route.name)


def _compile_route(
    route: Route,
    reusable: CompiledRoute | None,
    override: WeightOverride | None,
    rollout: RolloutWeight | None,
    revert: Backend | None,
) -> CompiledRoute:
    """``route`` compiled with what applies to it at runtime; from ``reusable`` (its compiled
    form for the same definition) when there is one, changing only the weight."""
    if revert is not None:  # all of it to the previous stable
        reverted = route.model_copy(update={"stable": revert, "candidate": None})
        return CompiledRoute.from_model(reverted)
    chosen = rollout or override
    weight_bp = round(chosen.percent * 100) if chosen else route.weight_bp
    closed = rollout is not None and rollout.closed
    if reusable is None:
        return CompiledRoute.from_model(route, weight_bp, closed=closed)
    closed = closed and reusable.candidate is not None  # as `CompiledRoute.from_model` has it
    if (reusable.weight_bp, reusable.closed) != (weight_bp, closed):
        return replace(reusable, weight_bp=weight_bp, closed=closed)
    return reusable


Listener = Callable[[Snapshot | None, Snapshot], None]


class RuntimeState:
    """Holds the current snapshot; the only place that swaps it."""

    def __init__(self) -> None:
        # The current snapshot, or None before the first load. Read by every request: a plain
        # attribute (a property is a Python call per read); `_swap` is the only writer.
        self.snapshot: Snapshot | None = None
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` after every swap, in the order of subscription; when a
        snapshot is already loaded, at once with ``old=None`` (a late follower catches up).

        The composition root (``server.py``) subscribes every follower, in one place."""
        self._listeners.append(listener)
        if self.snapshot is not None:
            listener(None, self.snapshot)

    def _swap(self, new: Snapshot) -> Snapshot:
        old, self.snapshot = self.snapshot, new
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:  # the swap has happened; one follower's bug must not stop the rest
                logger.exception("a snapshot listener failed: %r", listener)
        return new

    def load(self, config: RoutingConfig, digest: str, now: float) -> Snapshot:
        """Install a new routing file. Runtime overrides survive only for unchanged routes;
        rollout weights follow the rules in the module docstring."""
        return self.install(self.prepare(config, digest), now)

    def prepare(self, config: RoutingConfig, digest: str) -> Prepared:
        """Compile ``config`` (the slow part of a reload of a large file) without swapping
        anything: safe in a worker thread, because snapshots are immutable. Routes whose
        definition equals the serving one keep their compiled form."""
        base = self.snapshot  # one read: the loop may swap meanwhile, install sorts that out
        return Prepared(compile_snapshot(config, digest, 0.0, {}, {}, previous=base))

    def install(self, prepared: Prepared, now: float) -> Snapshot:
        """Swap in a prepared routing file (on the event loop): the weights that carry over
        from the serving snapshot, whatever it is now, are applied to the few routes they
        name; everything else was compiled by `prepare`."""
        config = prepared.snapshot.config
        old = self.snapshot
        kept: dict[str, WeightOverride] = {}
        driven: dict[str, RolloutWeight] = {}
        if old is not None:
            for name, override in old.overrides.items():
                before, after = old.config.route(name), config.route(name)
                if before is not None and after is not None and before == after and after.candidate:
                    kept[name] = override
            for name, weight in old.rollout_weights.items():
                route = config.route(name)
                identity = candidate_identity(route) if route is not None else None
                if route is None or route.rollout is None or identity is None:
                    continue  # no rollout drives it any more: the file's weight applies
                if identity != weight.candidate:  # a new candidate: all on stable until it starts
                    weight = RolloutWeight(0.0, now, identity)
                driven[name] = weight
        reverts: dict[str, Backend] = {}
        warm: dict[str, Backend] = own_copy(old.warm) if old is not None else {}
        if old is not None:  # a revert holds until the file changes its route
            for name, backend in old.reverts.items():
                before, after = old.config.route(name), config.route(name)
                if before is not None and before == after:
                    reverts[name] = backend
        base = prepared.snapshot  # every route compiled as the file has it
        routes = list(base.routes)
        for name in kept.keys() | driven.keys() | reverts.keys():  # a few routes, at most
            i = base._positions[name]
            routes[i] = _compile_route(
                config.routes[i], routes[i], kept.get(name), driven.get(name), reverts.get(name)
            )
        new = Snapshot(
            config,
            tuple(routes),
            base.content_hash,
            now,
            MappingProxyType(kept),
            MappingProxyType(driven),
            MappingProxyType(reverts),
            MappingProxyType(warm),
            base.table,  # built by `prepare` (off the loop): only rebound here
        )
        return self._swap(new)

    def adopt(self, shared: SharedState) -> Snapshot:
        """Install another process's state as it is: a worker follows its leader's config and
        weights (``splitproxy/workers``). A config with the same content hash as the serving
        one keeps the serving config object, so followers see a weight change, not a reload."""
        current = self.snapshot
        config = shared.config
        if current is not None and current.content_hash == shared.content_hash:
            config = current.config
        new = compile_snapshot(
            config, shared.content_hash, shared.loaded_at, shared.overrides,
            shared.rollout_weights, shared.reverts, shared.warm, previous=current,
        )  # fmt: skip
        return self._swap(new)

    def set_weight(self, name: str, percent: float, now: float, source: str = "admin") -> Snapshot:
        """Override a route's candidate weight at runtime (refused while a rollout drives it)."""
        current = self._require(name)
        route = current.config.route(name)
        assert route is not None
        if route.candidate is None:
            raise Conflict("no_candidate", f"route {name!r} has no candidate")
        if name in current.rollout_weights:
            raise Conflict(
                "rollout_active",
                f"a rollout drives the weight of route {name!r}; use pause, resume, promote, "
                "rollback or retry, or remove 'rollout' from the routing file",
            )
        if not 0.0 <= percent <= 100.0:
            raise InvalidValue("invalid_weight", "weight must be between 0 and 100")
        overrides = own_copy(current.overrides)
        overrides[name] = WeightOverride(round(percent, 2), now, source)
        return self._swap(self._recompile(current, name, overrides=overrides))

    def clear_weight(self, name: str) -> Snapshot:
        """Drop a runtime override: the file's weight applies again (unless a rollout's does)."""
        current = self._require(name)
        overrides = own_copy(current.overrides)
        overrides.pop(name, None)
        return self._swap(self._recompile(current, name, overrides=overrides))

    def set_rollout_weight(
        self,
        name: str,
        percent: float,
        now: float,
        candidate: str,
        *,
        closed: bool = False,
        shadow: bool = False,
    ) -> Snapshot:
        """A rollout drives the route: its weight wins (a runtime override is dropped);
        ``closed``: the candidate was rolled back and gets no traffic at all; ``shadow``: the
        rollout's shadow phase, in which the mirror copies user requests to the candidate."""
        current = self._require(name)
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"a rollout weight of {percent} is not between 0 and 100")
        driven = own_copy(current.rollout_weights)
        driven[name] = RolloutWeight(round(percent, 2), now, candidate, closed, shadow)
        overrides = own_copy(current.overrides)
        overrides.pop(name, None)
        return self._swap(
            self._recompile(current, name, overrides=overrides, rollout_weights=driven)
        )

    def clear_rollout_weight(self, name: str) -> Snapshot | None:
        """The rollout hands the route back to the file; None when it had no rollout weight."""
        current = self.snapshot
        if current is None or name not in current.rollout_weights:
            return None
        driven = own_copy(current.rollout_weights)
        del driven[name]
        return self._swap(self._recompile(current, name, rollout_weights=driven))

    def revert_to(self, name: str, backend: Backend, now: float) -> Snapshot:
        """Send all of ``name``'s traffic to ``backend`` (a previous stable) until the file
        changes the route."""
        current = self._require(name)
        reverts = own_copy(current.reverts)
        reverts[name] = backend
        return self._swap(self._recompile(current, name, reverts=reverts))

    def keep_warm(self, name: str, backend: Backend | None) -> Snapshot | None:
        """Keep ``backend``'s upstream pool for ``name`` (None: no longer)."""
        current = self.snapshot
        if current is None or current.warm.get(name) == backend:
            return current
        warm = own_copy(current.warm)
        if backend is None:
            warm.pop(name, None)
        else:
            warm[name] = backend
        return self._swap(self._recompile(current, name, warm=warm))

    @staticmethod
    def _recompile(
        current: Snapshot,
        name: str,
        *,
        overrides: dict[str, WeightOverride] | None = None,
        rollout_weights: dict[str, RolloutWeight] | None = None,
        reverts: dict[str, Backend] | None = None,
        warm: dict[str, Backend] | None = None,
    ) -> Snapshot:
        """``current`` with route ``name``'s runtime weight, revert or warm backend changed
        (the new mappings, made by the caller and handed over: not copied again; the others
        are ``current``'s). Only that route is compiled again, and only when its entry
        changed; the other routes, their positions and the route index are reused (rebound,
        not rebuilt). Nothing here walks all the routes: a rollout's tick may change the
        weights of hundreds of routes of a file of thousands, one call each."""
        o = current.overrides if overrides is None else MappingProxyType(overrides)
        r = (
            current.rollout_weights
            if rollout_weights is None
            else MappingProxyType(rollout_weights)
        )
        v = current.reverts if reverts is None else MappingProxyType(reverts)
        w = current.warm if warm is None else MappingProxyType(warm)
        routes = current.routes
        config = current.config
        i = current._positions.get(name)
        if i is not None and (
            current.overrides.get(name) != o.get(name)
            or current.rollout_weights.get(name) != r.get(name)
            or current.reverts.get(name) != v.get(name)
        ):
            route = config.routes[i]
            compiled = _compile_route(
                route, _reusable(current, route), o.get(name), r.get(name), v.get(name)
            )
            routes = (*routes[:i], compiled, *routes[i + 1 :])
        return Snapshot(
            config,
            routes,
            current.content_hash,
            current.loaded_at,
            o,
            r,
            v,
            w,
            current.table,
            positions=current._positions,
        )

    def _require(self, name: str) -> Snapshot:
        current = self.snapshot
        if current is None:
            raise NotReady("not_ready", "no routing config is loaded yet")
        if current.config.route(name) is None:
            raise UnknownRoute(name)
        return current
