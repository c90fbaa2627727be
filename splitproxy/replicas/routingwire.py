"""The routing state a leader writes for its followers, read back as hostile input (pure).

A snapshot's runtime weights, rollout weights, reverts and warm backends, without its config
(`encode_routing`); a replica adopts it onto its own routing file (`decode_routing`, then
`RoutingState.apply_to` and `RuntimeState.adopt`). Checked like every document in Redis
(`wire.py`): types, bounds, and a `WireError` naming the field on anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from pydantic import ValidationError

from splitproxy.config import Backend, RoutingConfig
from splitproxy.dataplane.state import RolloutWeight, SharedState, WeightOverride
from splitproxy.replicas.wire import (
    FORMAT,
    WireError,
    _flag,
    _format,
    _kind,
    _number,
    _object,
    _routes,
    _text,
)


@dataclass(frozen=True, slots=True)
class RoutingState:
    """A snapshot's runtime weights, rollout weights, reverts and warm backends (by route),
    without its config: what a follower adopts from the leader."""

    overrides: Mapping[str, WeightOverride] = field(default_factory=dict)
    rollout_weights: Mapping[str, RolloutWeight] = field(default_factory=dict)
    reverts: Mapping[str, Backend] = field(default_factory=dict)
    warm: Mapping[str, Backend] = field(default_factory=dict)

    def apply_to(self, config: RoutingConfig, content_hash: str, loaded_at: float) -> SharedState:
        """This state on a replica's own routing file, for `RuntimeState.adopt`. Entries for
        routes the file does not name are left out (the leader's file may be a reload ahead
        or behind; what applies to a route the replica does not serve means nothing there)."""
        names = {route.name for route in config.routes}

        def mine(values: Mapping[str, Any]) -> dict[str, Any]:
            return {name: v for name, v in values.items() if name in names}

        return SharedState(
            config, content_hash, loaded_at,
            mine(self.overrides), mine(self.rollout_weights), mine(self.reverts), mine(self.warm),
        )  # fmt: skip


def _backend(backend: Backend) -> dict[str, Any]:
    return backend.model_dump(mode="json")


def encode_routing(shared: SharedState) -> dict[str, Any]:
    """The routing state of ``shared`` (its config left out), routes in name order (equal
    states give equal documents)."""
    return {
        "v": FORMAT,
        "overrides": {
            name: {"percent": float(o.percent), "set_at": float(o.set_at), "source": o.source}
            for name, o in sorted(shared.overrides.items())
        },
        "rollout_weights": {
            name: {
                "percent": float(w.percent),
                "set_at": float(w.set_at),
                "candidate": w.candidate,
                "closed": w.closed,
                "shadow": w.shadow,
            }
            for name, w in sorted(shared.rollout_weights.items())
        },
        "reverts": {name: _backend(b) for name, b in sorted(shared.reverts.items())},
        "warm": {name: _backend(b) for name, b in sorted(shared.warm.items())},
    }


_ROUTING: Final = frozenset({"v", "overrides", "rollout_weights", "reverts", "warm"})
_OVERRIDE: Final = frozenset({"percent", "set_at", "source"})
_ROLLOUT: Final = frozenset({"percent", "set_at", "candidate", "closed", "shadow"})


def _decode_backend(data: object, where: str) -> Backend:
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected a backend, got {_kind(data)}")
    try:
        return Backend.model_validate(data)
    except (ValidationError, ValueError, TypeError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise WireError(f"{where}: not a backend: {first}") from None


def decode_routing(data: object) -> RoutingState:
    """The routing state ``data`` (a decoded JSON value) holds."""
    _format(data, "routing")
    doc = _object(data, "routing", _ROUTING)
    overrides = {}
    for name, item in _routes(doc["overrides"], "overrides").items():
        at = f"overrides.{name}"
        o = _object(item, at, _OVERRIDE)
        overrides[name] = WeightOverride(
            _number(o["percent"], f"{at}.percent", 0.0, 100.0),
            _number(o["set_at"], f"{at}.set_at"),
            _text(o["source"], f"{at}.source"),
        )
    weights = {}
    for name, item in _routes(doc["rollout_weights"], "rollout_weights").items():
        at = f"rollout_weights.{name}"
        w = _object(item, at, _ROLLOUT)
        weights[name] = RolloutWeight(
            _number(w["percent"], f"{at}.percent", 0.0, 100.0),
            _number(w["set_at"], f"{at}.set_at"),
            _text(w["candidate"], f"{at}.candidate"),
            _flag(w["closed"], f"{at}.closed"),
            _flag(w["shadow"], f"{at}.shadow"),
        )
    reverts = {
        name: _decode_backend(item, f"reverts.{name}")
        for name, item in _routes(doc["reverts"], "reverts").items()
    }
    warm = {
        name: _decode_backend(item, f"warm.{name}")
        for name, item in _routes(doc["warm"], "warm").items()
    }
    return RoutingState(
        MappingProxyType(overrides),
        MappingProxyType(weights),
        MappingProxyType(reverts),
        MappingProxyType(warm),
    )


__all__ = ["RoutingState", "decode_routing", "encode_routing"]
