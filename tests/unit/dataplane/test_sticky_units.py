"""The sticky keys' units kept by `routing` (`_sticky_unit`): a key seen before is routed as
if it were parsed and hashed afresh, whatever the weight, the route or the table's turnover."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Route
from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.dataplane import routing
from splitproxy.dataplane.routing import (
    BUCKETS,
    CompiledRoute,
    Decision,
    choose,
    cookie_value,
    key_hash,
    seed_from_draw,
)


def compile_route(name: str, **fields: Any) -> CompiledRoute:
    data: dict[str, Any] = {
        "name": name,
        "stable": "http://shop-v1:8080",
        "candidate": {"url": "http://shop-v2:8080", "revision": "2"},
        **fields,
    }
    return CompiledRoute.from_model(Route.model_validate(data))


ROUTES = [
    compile_route("shop", sticky={"cookie": "splitproxy_id"}),
    compile_route("cart", sticky={"cookie": "splitproxy_id"}),  # same cookie, another salt
    compile_route("api", sticky={"cookie": "uid"}),
    compile_route("search", sticky={"header": "X-User-Id"}),
]


def reference(route: CompiledRoute, headers: dict[bytes, bytes], draw: int) -> Decision:
    """`choose`'s sticky step as it was before units were kept: parse, hash, decide."""
    weight = route.weight_bp
    key: str | None = None
    if route.sticky_header is not None:
        raw = headers.get(route.sticky_header)
        if raw:
            key = raw.decode("latin-1")
    else:
        assert route.sticky_cookie is not None
        key = cookie_value(headers.get(b"cookie"), route.sticky_cookie)
        if not key:
            seed = seed_from_draw(draw)
            unit = key_hash(seed, route.salt)
            return Decision(CANDIDATE if unit % BUCKETS < weight else STABLE, "sticky", seed, unit)
    if key is not None:
        unit = key_hash(key, route.salt)
        return Decision(CANDIDATE if unit % BUCKETS < weight else STABLE, "sticky", None, unit)
    if weight <= 0:
        return Decision(STABLE, "weight")
    if weight >= BUCKETS:
        return Decision(CANDIDATE, "weight")
    return Decision(CANDIDATE if draw % BUCKETS < weight else STABLE, "weight")


# raw header values as clients send them: the sticky cookie among others, without it, empty,
# quoted, repeated, spaced, non-ASCII bytes; a small pool so that keys come back
cookie_values = st.sampled_from(["u1", "u2", '"u1"', "", "bench-user-1", "é"])
cookies = st.one_of(
    st.builds(
        lambda name, value, other: f"{other}; {name}={value}".encode(),
        st.sampled_from(["splitproxy_id", "uid", "other"]),
        cookie_values,
        st.sampled_from(["theme=dark", "a=1", "", "t=" + "x" * 250]),  # (long: not kept)
    ),
    st.binary(max_size=12),
)
requests = st.tuples(
    st.sampled_from(ROUTES),
    st.one_of(cookies, st.none()),
    st.one_of(st.sampled_from([b"u1", b"u2", b"", b"\xe9"]), st.binary(max_size=6), st.none()),
    st.integers(0, BUCKETS),
    st.integers(0, 2**64 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=30), st.sampled_from([1, 2, 5, 4096]))
def test_a_kept_unit_decides_as_a_fresh_parse_and_hash(
    batch: list[tuple[CompiledRoute, bytes | None, bytes | None, int, int]], remembered: int
) -> None:
    routing._units.clear()
    with mock.patch.object(routing, "STICKY_REMEMBERED", remembered):
        for base, cookie, header, weight, draw in batch:
            route = dataclasses.replace(base, weight_bp=weight)  # a runtime weight change
            headers: dict[bytes, bytes] = {}
            if cookie is not None:
                headers[b"cookie"] = cookie
            if header is not None:
                headers[b"x-user-id"] = header
            assert choose(route, headers, draw) == reference(route, headers, draw)
            assert len(routing._units) <= remembered


def test_the_kept_units_stay_bounded_whatever_keys_clients_send() -> None:
    routing._units.clear()
    route = ROUTES[0]
    for i in range(3 * routing.STICKY_REMEMBERED):
        choose(route, {b"cookie": f"splitproxy_id=user-{i}".encode()}, 0)
        assert len(routing._units) <= routing.STICKY_REMEMBERED
    # a long Cookie header is routed by its key all the same, but never kept
    routing._units.clear()
    long = f"splitproxy_id=user-1; t={'x' * routing.STICKY_RAW_MAX}".encode()
    short = b"splitproxy_id=user-1"
    assert choose(route, {b"cookie": long}, 0) == choose(route, {b"cookie": short}, 0)
    assert list(routing._units) == [(route.salt, "splitproxy_id", short)]
