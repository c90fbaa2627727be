"""The runtime state the routing file feeds: snapshots, and runtime weights over the file's."""

from __future__ import annotations

import contextlib
import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Backend, content_hash, parse_routing
from splitproxy.dataplane.routing import BUCKETS
from splitproxy.dataplane.state import RuntimeState, Snapshot, compile_snapshot, own_copy
from splitproxy.errors import (
    Conflict,
    InvalidValue,
    NotReady,
    RequestRefused,
    UnknownRoute,
)

FILE = """\
revision: "r1"
routes:
  - name: shop
    stable: http://shop-v1:8080
    candidate: {url: http://shop-v2:8080, revision: "2.4.0"}
    weight: 10
  - name: api
    stable: http://api-v1:8080
    candidate: {url: http://api-v2:8080, revision: "7"}
    weight: 5
  - name: static
    stable: http://static:8080
"""


def load(state: RuntimeState, text: str, now: float = 1000.0) -> Snapshot:
    return state.load(parse_routing(text), content_hash(text), now)


def weight_of(state: RuntimeState, name: str) -> int:
    assert state.snapshot is not None
    route = state.snapshot.route(name)
    assert route is not None
    return route.weight_bp


@pytest.fixture
def state() -> RuntimeState:
    state = RuntimeState()
    load(state, FILE)
    return state


def test_load_installs_the_file() -> None:
    state = RuntimeState()
    assert state.snapshot is None
    snapshot = load(state, FILE, now=1234.5)
    assert state.snapshot is snapshot
    assert [r.name for r in snapshot.routes] == ["shop", "api", "static"]
    assert weight_of(state, "shop") == 1000
    assert weight_of(state, "api") == 500
    assert snapshot.loaded_at == 1234.5
    assert snapshot.content_hash == content_hash(FILE)
    assert snapshot.route("nope") is None
    assert dict(snapshot.overrides) == {}


def test_revision_is_the_user_revision_plus_a_short_hash() -> None:
    digest = content_hash(FILE)
    assert len(digest) == 64
    assert load(RuntimeState(), FILE).revision == f"r1+{digest[:12]}"
    bare = FILE.replace('revision: "r1"\n', "")
    assert load(RuntimeState(), bare).revision == content_hash(bare)[:12]
    assert content_hash(FILE) == content_hash(FILE.encode())
    assert content_hash(FILE + "# comment\n") != digest


def test_listeners_see_every_swap() -> None:
    state = RuntimeState()
    seen: list[tuple[Snapshot | None, Snapshot]] = []
    state.subscribe(lambda old, new: seen.append((old, new)))
    first = load(state, FILE)
    second = state.set_weight("shop", 20, now=1001.0)
    assert seen == [(None, first), (first, second)]


def test_set_weight_overrides_the_file_weight(state: RuntimeState) -> None:
    snapshot = state.set_weight("shop", 25.5, now=2000.0, source="cli")
    assert state.snapshot is snapshot
    assert weight_of(state, "shop") == 2550
    assert weight_of(state, "api") == 500  # other routes keep their weight
    override = snapshot.overrides["shop"]
    assert (override.percent, override.set_at, override.source) == (25.5, 2000.0, "cli")
    # Both values stay visible: the file still says 10.
    route = snapshot.config.route("shop")
    assert route is not None
    assert route.weight == 10
    assert snapshot.content_hash == content_hash(FILE)
    assert snapshot.loaded_at == 1000.0


@pytest.mark.parametrize(("percent", "basis_points"), [(0, 0), (100, BUCKETS), (12.344, 1234)])
def test_set_weight_bounds_and_resolution(
    state: RuntimeState, percent: float, basis_points: int
) -> None:
    state.set_weight("shop", percent, now=2000.0)
    assert weight_of(state, "shop") == basis_points


@pytest.mark.parametrize(
    ("name", "percent", "kind", "code"),
    [
        ("nope", 10.0, UnknownRoute, "no_such_route"),
        ("static", 10.0, Conflict, "no_candidate"),
        ("shop", 100.01, InvalidValue, "invalid_weight"),
        ("shop", -0.01, InvalidValue, "invalid_weight"),
        ("shop", math.nan, InvalidValue, "invalid_weight"),
        ("shop", math.inf, InvalidValue, "invalid_weight"),
    ],
)
def test_set_weight_refusals(
    state: RuntimeState, name: str, percent: float, kind: type[RequestRefused], code: str
) -> None:
    before = state.snapshot
    with pytest.raises(kind) as info:
        state.set_weight(name, percent, now=2000.0)
    assert info.value.code == code
    assert state.snapshot is before  # nothing changed


def test_set_weight_before_any_file_is_loaded() -> None:
    with pytest.raises(NotReady) as info:
        RuntimeState().set_weight("shop", 10, now=0.0)
    assert info.value.code == "not_ready"


def test_runtime_weight_survives_a_reload_that_leaves_the_route_alone(
    state: RuntimeState,
) -> None:
    state.set_weight("shop", 50, now=2000.0)
    changed_elsewhere = FILE.replace("weight: 5\n", "weight: 7\n") + "# reviewed\n"
    snapshot = load(state, changed_elsewhere, now=3000.0)
    assert weight_of(state, "shop") == 5000
    assert weight_of(state, "api") == 700
    assert snapshot.overrides["shop"].percent == 50
    assert snapshot.loaded_at == 3000.0
    # Reloading the very same file keeps it too.
    load(state, changed_elsewhere, now=4000.0)
    assert weight_of(state, "shop") == 5000


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    weight: 10\n", "    weight: 15\n"),
        ('revision: "2.4.0"}', 'revision: "2.4.1"}'),
        ("http://shop-v1:8080", "http://shop-v1:9090"),
        ("    weight: 10\n", "    weight: 10\n    sticky: {cookie: id}\n"),
        (
            '    candidate: {url: http://shop-v2:8080, revision: "2.4.0"}\n    weight: 10\n',
            "",
        ),
    ],
    ids=["weight", "candidate-revision", "stable-url", "sticky-added", "candidate-removed"],
)
def test_runtime_weight_is_dropped_when_the_file_changes_that_route(
    state: RuntimeState, old: str, new: str
) -> None:
    state.set_weight("shop", 50, now=2000.0)
    assert old in FILE
    snapshot = load(state, FILE.replace(old, new), now=3000.0)
    route = snapshot.config.route("shop")
    assert route is not None
    assert weight_of(state, "shop") == route.weight_bp != 5000
    assert "shop" not in snapshot.overrides


def test_runtime_weight_is_dropped_when_the_route_goes_away(state: RuntimeState) -> None:
    state.set_weight("api", 50, now=2000.0)
    without_api = FILE.replace(
        "  - name: api\n    stable: http://api-v1:8080\n    candidate: {url: http://api-v2:8080, "
        'revision: "7"}\n    weight: 5\n',
        "",
    )
    assert load(state, without_api).route("api") is None
    load(state, FILE)  # and back: the file's weight, not the old override
    assert weight_of(state, "api") == 500


def test_clear_weight_restores_the_file_weight(state: RuntimeState) -> None:
    state.set_weight("shop", 80, now=2000.0)
    snapshot = state.clear_weight("shop")
    assert weight_of(state, "shop") == 1000
    assert dict(snapshot.overrides) == {}
    with pytest.raises(UnknownRoute):
        state.clear_weight("nope")


def test_a_reload_keeps_the_compiled_form_of_unchanged_routes(state: RuntimeState) -> None:
    before = state.snapshot
    assert before is not None
    edited = FILE.replace("http://api-v2:8080", "http://api-v3:8080")
    after = load(state, edited, now=2000.0)
    assert after.route("shop") is before.route("shop")
    assert after.route("static") is before.route("static")
    api = after.route("api")
    assert api is not None
    assert api is not before.route("api")
    assert api.candidate is not None
    assert [t.url for t in api.candidate.targets] == ["http://api-v3:8080"]


def test_a_weight_change_recompiles_only_the_weight(state: RuntimeState) -> None:
    before = state.snapshot
    assert before is not None
    after = state.set_weight("shop", 40, now=2000.0)
    assert after.route("api") is before.route("api")
    shop, old_shop = after.route("shop"), before.route("shop")
    assert shop is not None
    assert old_shop is not None
    assert shop.weight_bp == 4000
    assert old_shop.weight_bp == 1000
    assert shop.overrides is old_shop.overrides
    assert shop.salt == old_shop.salt
    # clearing it restores the weight the file gives
    state.clear_weight("shop")
    assert weight_of(state, "shop") == 1000


def test_a_weight_set_while_a_file_compiles_is_kept_when_it_is_swapped_in(
    state: RuntimeState,
) -> None:
    edited = FILE.replace("weight: 5\n", "weight: 6\n")
    prepared = state.prepare(parse_routing(edited), content_hash(edited))  # in the thread
    state.set_weight("shop", 70, now=2000.0)  # meanwhile, on the loop
    snapshot = state.install(prepared, now=2001.0)
    assert state.snapshot is snapshot
    assert weight_of(state, "shop") == 7000
    assert snapshot.overrides["shop"].percent == 70
    assert weight_of(state, "api") == 600
    assert snapshot.loaded_at == 2001.0


def test_a_revert_survives_a_reload_that_leaves_its_route_alone_and_ends_with_an_edit(
    state: RuntimeState,
) -> None:
    previous = Backend.model_validate({"url": ["http://shop-v0:8080"]})
    state.revert_to("shop", previous, now=2000.0)
    unrelated = FILE.replace("weight: 5\n", "weight: 6\n")
    load(state, unrelated, now=3000.0)
    shop = state.snapshot.route("shop") if state.snapshot else None
    assert shop is not None
    assert [t.url for t in shop.stable.targets] == ["http://shop-v0:8080"]
    assert shop.candidate is None
    edited = unrelated.replace("http://shop-v1:8080", "http://shop-v3:8080")
    load(state, edited, now=4000.0)  # the file changed the route: the file wins again
    shop = state.snapshot.route("shop") if state.snapshot else None
    assert shop is not None
    assert [t.url for t in shop.stable.targets] == ["http://shop-v3:8080"]
    assert shop.candidate is not None
    assert shop.weight_bp == 1000


MANY = "routes:\n" + "".join(
    f"  - {{name: r{i}, match: {{host: h{i}.test}}, stable: 'http://127.0.0.1:{10 + i}', "
    f"candidate: 'http://127.0.0.1:{20 + i}', weight: {i}}}\n"
    for i in range(6)
)
_ops = st.lists(
    st.tuples(
        st.sampled_from(["weight", "clear", "rollout", "unroll", "revert", "warm", "cool"]),
        st.integers(0, 5),
        st.sampled_from([0.0, 12.5, 50.0, 100.0]),
        st.booleans(),
    ),
    max_size=25,
)


def _served(snapshot: Snapshot) -> list[tuple[object, ...]]:
    return [
        (
            r.name,
            r.weight_bp,
            r.closed,
            r.stable.targets,
            r.candidate.targets if r.candidate else None,
        )
        for r in snapshot.routes
    ]


@settings(max_examples=80, deadline=None)
@given(_ops)
def test_a_runtime_change_serves_what_compiling_the_whole_file_would(
    ops: list[tuple[str, int, float, bool]],
) -> None:
    # weight changes recompile only the routes they name: the result must be what compiling
    # every route afresh with the same runtime weights and reverts gives, every other route
    # the same object as before, and the positions by name still right
    state = RuntimeState()
    load(state, MANY)
    for op, i, percent, closed in ops:
        name = f"r{i}"
        before = state.snapshot
        assert before is not None
        with contextlib.suppress(Conflict):
            if op == "weight":
                state.set_weight(name, percent, 1.0)
            elif op == "clear":
                state.clear_weight(name)
            elif op == "rollout":
                state.set_rollout_weight(name, percent, 1.0, "rev", closed=closed)
            elif op == "unroll":
                state.clear_rollout_weight(name)
            elif op == "revert":
                state.revert_to(name, Backend.model_validate({"url": ["http://127.0.0.1:99"]}), 1.0)
            elif op == "warm":
                state.keep_warm(name, Backend.model_validate({"url": ["http://127.0.0.1:98"]}))
            else:
                state.keep_warm(name, None)
        now = state.snapshot
        assert now is not None
        assert all(a is b for a, b in zip(before.routes, now.routes, strict=True) if a.name != name)
        assert [now.route(r.name) for r in now.routes] == list(now.routes)
        fresh = compile_snapshot(
            now.config, now.content_hash, now.loaded_at, now.overrides,
            now.rollout_weights, now.reverts, now.warm,
        )  # fmt: skip
        assert _served(now) == _served(fresh)
        assert now.find(f"h{i}.test", "/") is now.route(name)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.integers(), max_size=30))
def test_a_snapshot_mapping_copies_as_dict_of_it_did(entries: dict[str, int]) -> None:
    """`own_copy` (a read-only view's own copy, in C, where ``dict(view)`` went key by key):
    the same entries in the same order, in a new dict whose changes the view does not see."""
    for mapping in (MappingProxyType(dict(entries)), dict(entries)):
        copy = own_copy(mapping)
        assert type(copy) is dict
        assert list(copy.items()) == list(dict(mapping).items())
        copy["changed"] = -1
        assert mapping.get("changed") == entries.get("changed")
