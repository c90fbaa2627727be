"""The indexed route lookup picks the route the routing file's rule picks: the first in file
order whose host and path prefix match, whatever the table."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import parse_routing
from splitproxy.dataplane.lookup import SCAN_MAX, RouteTable
from splitproxy.dataplane.routing import CompiledRoute, find_route, scan_routes
from splitproxy.dataplane.state import RuntimeState

TEMPLATE = CompiledRoute.from_model(
    parse_routing("routes: [{name: t, stable: 'http://127.0.0.1:1'}]").routes[0]
)
# few labels and prefix pieces, so that hosts, wildcards and prefixes overlap often
LABELS = ["a", "b", "ab", "x"]
hosts = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
prefixes = st.lists(st.sampled_from(["a", "b", "/", "ab", "/a"]), max_size=4).map(
    lambda parts: "/" + "".join(parts)
)
paths = st.one_of(prefixes, st.text("ab/", max_size=8).map(lambda t: "/" + t))


@st.composite
def route_tables(draw: st.DrawFn) -> tuple[CompiledRoute, ...]:
    routes = []
    for i in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["exact", "wildcard", "any"]))
        host = draw(hosts)
        routes.append(
            dataclasses.replace(
                TEMPLATE,
                name=f"r{i}",
                host=host if kind == "exact" else None,
                host_suffix="." + host if kind == "wildcard" else None,
                path_prefix=draw(prefixes),
            )
        )
    return tuple(routes)


@settings(max_examples=400, deadline=None)
@given(route_tables(), st.lists(st.tuples(hosts, paths), min_size=1, max_size=20))
def test_the_table_picks_the_route_a_scan_picks(
    routes: tuple[CompiledRoute, ...], requests: list[tuple[str, str]]
) -> None:
    table = RouteTable(routes)
    table.scan = False  # the indexes even for the small tables a scan would serve
    for host, path in requests:
        assert table.find(host, path) is scan_routes(routes, host, path)
        assert find_route(routes, host, path) is scan_routes(routes, host, path)


def test_the_first_route_in_file_order_wins_over_a_longer_prefix() -> None:
    def route(name: str, prefix: str, host: str | None = None) -> CompiledRoute:
        return dataclasses.replace(TEMPLATE, name=name, host=host, path_prefix=prefix)

    wildcard = dataclasses.replace(TEMPLATE, name="wild", host_suffix=".shop.test")
    routes = (
        route("api", "/api"),
        route("api-v2", "/api/v2"),  # shadowed by "api", which comes first
        route("shop", "/", "shop.test"),
        wildcard,
        route("rest", "/"),
        *(route(f"filler{i}", f"/f{i}") for i in range(SCAN_MAX)),
    )
    table = RouteTable(routes)
    assert not table.scan
    assert table.find("any.test", "/api/v2/x") is routes[0]
    assert table.find("shop.test", "/cart") is routes[2]
    assert table.find("eu.shop.test", "/cart") is wildcard
    assert table.find("eu.shop.test", "/api") is routes[0]
    assert table.find("other.test", "/f1") is routes[4]  # "rest" comes before the fillers
    assert RouteTable(routes[:2]).find("any.test", "/nothing") is None


def test_a_weight_change_serves_the_new_weight_from_the_same_indexes() -> None:
    lines = ["routes:"]
    for i in range(SCAN_MAX + 20):
        lines.append(
            f"  - {{name: r{i}, match: {{host: h{i}.test}}, stable: 'http://127.0.0.1:1', "
            "candidate: 'http://127.0.0.1:2'}"
        )
    state = RuntimeState()
    before = state.load(parse_routing("\n".join(lines)), "d1", 0.0)
    after = state.set_weight("r7", 40.0, 1.0)
    found = after.find("h7.test", "/x")
    # the route as compiled with the new weight, not the one of the snapshot before
    assert found is after.route("r7")
    assert found is not before.route("r7")
    assert found is not None
    assert found.weight_bp == 4000
    assert before.find("h7.test", "/x") is before.route("r7")
    # found through the indexes built for the file, not built again for a weight
    assert before.table is not None
    assert after.table is not None
    assert after.table._exact is before.table._exact
    # a reload of another file builds its own
    reloaded = state.load(
        parse_routing("\n".join([*lines, lines[1].replace("r0", "z")])), "d2", 2.0
    )
    assert reloaded.table is not None
    assert reloaded.table._exact is not before.table._exact
    assert reloaded.find("h0.test", "/") is reloaded.route("r0")
