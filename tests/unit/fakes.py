"""Finished exchanges without sockets, for the recorder's and the access log's unit tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import yaml

from splitproxy.config import parse_routing
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.routing import Decision
from splitproxy.dataplane.state import RuntimeState, content_hash

ROUTES: dict[str, Any] = {
    "revision": "r7",
    "routes": [
        {
            "name": "shop",
            "stable": {"url": "http://shop-v1:8080", "revision": "1.0"},
            "candidate": {"url": "http://shop-v2:8080", "revision": "2.0"},
            "weight": 25,
        },
        {"name": "static", "stable": "http://static:80"},
    ],
}


def runtime_state(
    routes: dict[str, Any] | None = None, now: float = 1_700_000_000.0
) -> RuntimeState:
    text = yaml.safe_dump(routes or ROUTES, sort_keys=False)
    state = RuntimeState()
    state.load(parse_routing(text), content_hash(text), now)
    return state


def exchange(
    state: RuntimeState,
    route: str | None = "shop",
    version: str = "stable",
    reason: str = "weight",
    *,
    status: int = 200,
    duration: float = 0.010,
    ttfb: float = 0.008,
    error_kind: str = "",
    routed: bool = True,
    **attrs: Any,
) -> Exchange:
    """A finished `Exchange` of ``route`` as the data path leaves it (``route=None``: no route
    matched; ``routed=False``: rejected before the routing decision)."""
    conn = cast(ClientConnection, SimpleNamespace(ctx=None, peer_ip="203.0.113.7", preview=False))
    ex = Exchange(conn)
    snapshot = state.snapshot
    assert snapshot is not None
    ex.snapshot = snapshot
    ex.method = b"GET"
    ex.target = b"/cart?id=1"
    ex.request_id = b"abc-1"
    ex.started = 1.0
    ex.status = status
    ex.duration = duration
    ex.error_kind = error_kind
    if route is not None:
        ex.route = snapshot.route(route)
        assert ex.route is not None
        if routed:
            ex.decision = Decision(version, reason)  # type: ignore[arg-type]
            ex.version = version
            ex.upstream_url = f"http://{route}-{version}:8080"
            if ttfb:
                ex.ttfb = ttfb
                ex.upstream_status = status
                ex.upstream_duration = duration - 0.001
                ex.bytes_out = 512
    for name, value in attrs.items():
        setattr(ex, name, value)
    return ex
