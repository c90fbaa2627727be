"""What `ledger.RouteRollout` keeps for the tick is what asking afresh gives: over any run of
routing files (routes added, dropped, changed, the same routes in a copied config) and of
specs, its route is ``config.route(name)`` (with its candidate's identity and whether it
judges test traffic) and its external checks those of its spec."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import PrometheusCheck, Rollout, RoutingConfig, WebCheck
from splitproxy.dataplane.state import candidate_identity
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.ledger import RouteRollout
from splitproxy.rollout.samples import judges_synthetic
from tests.unit.rollout.drive import spec

CHECKS: list[dict[str, Any]] = [
    {"metric": "error_rate", "max": "1%"},
    {"name": "web", "web": "http://checks/ok"},
    {"name": "prom", "prometheus": "http://prom:9090", "query": "up", "max": 1},
    {"metric": "latency", "compare": "stable"},
]


def config(names: list[str], revision: str) -> RoutingConfig:
    routes = [
        {
            "name": n,
            "stable": f"http://{n}-s",
            "candidate": {"url": "http://c", "revision": revision},
        }
        for n in names
    ]
    routes.append({"name": "main", "stable": "http://main"})  # a file names a route at least
    return RoutingConfig.model_validate({"routes": routes})


OP = st.one_of(
    st.tuples(
        st.just("file"),
        st.lists(st.sampled_from(["a", "b", "c"]), unique=True),
        st.sampled_from(["v1", "v2"]),
    ),
    st.tuples(st.just("copy"), st.none(), st.none()),  # another config, the same routes tuple
    st.tuples(
        st.just("spec"), st.lists(st.sampled_from(range(len(CHECKS))), unique=True), st.none()
    ),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(OP, max_size=12))
def test_the_kept_route_and_checks_are_the_fresh_ones(ops: list[tuple[str, Any, Any]]) -> None:
    rollout: Rollout = spec()
    rt = RouteRollout("a", rollout, Analyzer("a", rollout, path_class_slots=2), deque())
    current = config(["a"], "v1")
    for kind, arg, revision in ops:
        if kind == "file":
            current = config(arg, revision)
        elif kind == "copy":
            current = current.model_copy()
        else:
            rt.configure(spec(checks=[CHECKS[i] for i in arg]))
        for _ in range(2):  # the second answer is the kept one
            route = current.route("a")
            assert rt.route_in(current) is route
            identity = candidate_identity(route) if route is not None else None
            assert rt.follow(current) == (route, identity, judges_synthetic(route))
            fresh = tuple(c for c in rt.rollout.checks if isinstance(c, PrometheusCheck | WebCheck))
            assert rt.external_checks() == fresh
