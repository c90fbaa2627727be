"""Runtime state: the config snapshot every request reads, and the runtime weight overrides.

A `Snapshot` is immutable. Each change (a new routing file, a weight set through the admin
API) builds a new one and swaps a single reference, so a request that started on one
snapshot finishes on it, and no request ever sees half a change.

Precedence of weights: the routing file is the desired state; a weight set at runtime (admin
API or CLI) wins over the file's ``weight`` until the file changes that route, at which point
the file wins again and the override is dropped. Both values and the winner show in status.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from splitproxy.errors import AdminError
from splitproxy.model import RoutingConfig
from splitproxy.routing import CompiledRoute

logger = logging.getLogger("splitproxy.state")

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
class Snapshot:
    """One consistent view of the routing config plus runtime overrides."""

    config: RoutingConfig
    routes: tuple[CompiledRoute, ...]
    content_hash: str
    loaded_at: float
    overrides: Mapping[str, WeightOverride] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def revision(self) -> str:
        """What identifies this config in status, metrics and logs: the user's revision (if
        the file names one) plus a short content hash."""
        short = self.content_hash[:12]
        return f"{self.config.revision}+{short}" if self.config.revision else short

    def route(self, name: str) -> CompiledRoute | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None


def content_hash(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def upstream_keys(snapshot: Snapshot) -> set[tuple[str, int]]:
    """Every upstream address (host, port) a snapshot's routes name: the pools it needs."""
    keys: set[tuple[str, int]] = set()
    for route in snapshot.routes:
        for plan in (route.stable, route.candidate):
            if plan is not None:
                keys.update(target.key for target in plan.targets)
    return keys


def compile_snapshot(
    config: RoutingConfig, digest: str, loaded_at: float, overrides: Mapping[str, WeightOverride]
) -> Snapshot:
    """Build the immutable snapshot for ``config`` with runtime weight ``overrides`` applied."""
    routes = []
    for route in config.routes:
        override = overrides.get(route.name)
        weight_bp = round(override.percent * 100) if override else None
        routes.append(CompiledRoute.from_model(route, weight_bp))
    return Snapshot(config, tuple(routes), digest, loaded_at, MappingProxyType(dict(overrides)))


Listener = Callable[[Snapshot | None, Snapshot], None]


class RuntimeState:
    """Holds the current snapshot; the only place that swaps it."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._listeners: list[Listener] = []

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` after every swap (pools, metrics and logs follow it)."""
        self._listeners.append(listener)

    def _swap(self, new: Snapshot) -> Snapshot:
        old, self._snapshot = self._snapshot, new
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:  # the swap has happened; one follower's bug must not stop the rest
                logger.exception("a snapshot listener failed: %r", listener)
        return new

    def load(self, config: RoutingConfig, digest: str, now: float) -> Snapshot:
        """Install a new routing file. Runtime overrides survive only for unchanged routes."""
        old = self._snapshot
        kept: dict[str, WeightOverride] = {}
        if old is not None:
            for name, override in old.overrides.items():
                before, after = old.config.route(name), config.route(name)
                if before is not None and after is not None and before == after and after.candidate:
                    kept[name] = override
        return self._swap(compile_snapshot(config, digest, now, kept))

    def set_weight(self, name: str, percent: float, now: float, source: str = "admin") -> Snapshot:
        """Override a route's candidate weight at runtime."""
        current = self._require(name)
        route = current.config.route(name)
        assert route is not None
        if route.candidate is None:
            raise AdminError(409, "no_candidate", f"route {name!r} has no candidate")
        if not 0.0 <= percent <= 100.0:
            raise AdminError(400, "invalid_weight", "weight must be between 0 and 100")
        overrides = dict(current.overrides)
        overrides[name] = WeightOverride(round(percent, 2), now, source)
        return self._swap(
            compile_snapshot(current.config, current.content_hash, current.loaded_at, overrides)
        )

    def clear_weight(self, name: str) -> Snapshot:
        """Drop a runtime override: the file's weight applies again."""
        current = self._require(name)
        overrides = dict(current.overrides)
        overrides.pop(name, None)
        return self._swap(
            compile_snapshot(current.config, current.content_hash, current.loaded_at, overrides)
        )

    def _require(self, name: str) -> Snapshot:
        current = self._snapshot
        if current is None:
            raise AdminError(503, "not_ready", "no routing config is loaded yet")
        if current.config.route(name) is None:
            raise AdminError(404, "no_such_route", f"no route named {name!r}")
        return current
