"""The upstream addresses a snapshot names, reused across swaps that leave every backend
alone, are always the addresses a fresh walk finds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.dataplane.state import RuntimeState, Snapshot, upstream_keys
from splitproxy.dataplane.swapdiff import UpstreamKeys, changed_routes

PORTS = [9, 10, 11]
files = st.dictionaries(
    st.sampled_from(["r0", "r1", "r2"]),  # drawn in any order: routes move too
    st.tuples(st.sampled_from(PORTS), st.none() | st.sampled_from(PORTS)),
    min_size=1,
)
weights = st.lists(st.sampled_from(["r0", "r1", "r2"]), max_size=3)


def named_alike(old: Snapshot, new: Snapshot) -> bool:
    """`changed_routes` against the plain definition: every route of ``new`` whose backends
    are not the very objects of ``old``'s route of that name, and every route gone."""
    diff = changed_routes(old, new)
    changed = []
    for route in new.routes:
        was = old.route(route.name)
        if was is None or was.stable is not route.stable or was.candidate is not route.candidate:
            changed.append(route.name)
    gone = [r.name for r in old.routes if new.route(r.name) is None]
    moved = [r.name for r in old.routes] != [r.name for r in new.routes]
    return (list(diff.changed), list(diff.removed), diff.renamed or not moved) == (
        changed,
        gone,
        True,
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(files, weights), min_size=1, max_size=5))
def test_the_kept_addresses_are_those_a_fresh_walk_finds(
    steps: list[tuple[dict[str, tuple[int, int | None]], list[str]]],
) -> None:
    state = RuntimeState()
    keys = UpstreamKeys()
    seen: list[bool] = []
    state.subscribe(lambda old, new: seen.append(keys.follow(old, new) == upstream_keys(new)))
    state.subscribe(lambda old, new: seen.append(old is None or named_alike(old, new)))
    for routes, weighted in steps:
        lines = ["routes:"]
        for name, (stable, candidate) in routes.items():
            lines += [f"  - name: {name}", f"    match: {{path_prefix: /{name}}}",
                      f"    stable: http://127.0.0.1:{stable}"]  # fmt: skip
            if candidate is not None:
                lines.append(f"    candidate: {{url: 'http://127.0.0.1:{candidate}'}}")
        text = "\n".join(lines) + "\n"
        state.load(parse_routing(text), content_hash(text), 1000.0)
        for name in weighted:  # swaps that change a weight only
            if routes.get(name, (0, None))[1] is not None:
                state.set_weight(name, 30.0, 1000.0)
    assert all(seen)
