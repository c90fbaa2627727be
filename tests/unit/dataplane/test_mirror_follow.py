"""The mirror follows a swap by looking again only at the changed routes, and ends with the
lanes that looking at every route gives: the same routes, settings and targets, and a lane
kept (its queue and workers) exactly where the full pass keeps it."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.dataplane.mirror import Mirror
from splitproxy.dataplane.state import RuntimeState

URLS = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
NAMES = ["r0", "r1", "r2"]


class Quiet:
    """Observes nothing: no copy is ever sent here."""

    now = 0.0

    def mirror_result(self, route: str, result: Any) -> None: ...
    def mirror_compared(self, route: str, outcome: Any) -> None: ...


route_defs = st.fixed_dictionaries(
    {
        "candidate": st.none() | st.sampled_from(URLS),
        "mirror": st.sampled_from([None, 10, 50]),
    }
)
files = st.dictionaries(st.sampled_from(NAMES), route_defs, min_size=1)
# between reloads: a route's rollout enters (True) or leaves (False) its shadow phase
shadows = st.lists(st.tuples(st.sampled_from(NAMES), st.booleans()), max_size=3)


def text_of(routes: dict[str, dict[str, Any]]) -> str:
    lines = ["routes:"]
    for name, spec in routes.items():
        lines += [f"  - name: {name}", f"    match: {{path_prefix: /{name}}}"]
        lines.append(f"    stable: {URLS[0]}")
        if spec["candidate"] is not None:
            lines.append(f"    candidate: {{url: '{spec['candidate']}', revision: '1'}}")
            lines.append("    rollout: {steps: [10, 50]}")
            if spec["mirror"] is not None:
                lines.append(f"    mirror: {{percent: {spec['mirror']}}}")
    return "\n".join(lines) + "\n"


def lanes(mirror: Mirror) -> dict[str, Any]:
    return {name: (lane.settings, lane.targets) for name, lane in mirror.lanes.items()}


async def follow(steps: list[tuple[dict[str, dict[str, Any]], list[tuple[str, bool]]]]) -> None:
    state = RuntimeState()
    clock = Quiet()
    incremental, full = Mirror(Quiet(), clock), Mirror(Quiet(), clock)
    state.subscribe(incremental.on_swap)
    state.subscribe(lambda old, new: full.on_swap(None, new))  # every route, each time
    try:
        for routes, shadow in steps:
            text = text_of(routes)
            state.load(parse_routing(text), content_hash(text), 1000.0)
            for name, on in shadow:
                snapshot = state.snapshot
                route = snapshot.config.route(name) if snapshot is not None else None
                if route is not None and route.candidate is not None:
                    state.set_rollout_weight(name, 5.0, 1000.0, "1", shadow=on)
                assert lanes(incremental) == lanes(full)
            assert lanes(incremental) == lanes(full)
    finally:
        await incremental.stop()
        await full.stop()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(files, shadows), min_size=1, max_size=5))
def test_following_the_changes_gives_the_lanes_of_a_full_pass(
    steps: list[tuple[dict[str, dict[str, Any]], list[tuple[str, bool]]]],
) -> None:
    asyncio.run(follow(steps))


async def test_a_reload_that_leaves_a_mirrored_route_alone_keeps_its_lane() -> None:
    state = RuntimeState()
    mirror = Mirror(Quiet(), Quiet())
    state.subscribe(mirror.on_swap)
    first: dict[str, dict[str, Any]] = {
        "r0": {"candidate": URLS[1], "mirror": 10},
        "r1": {"candidate": None, "mirror": None},
    }
    try:
        text = text_of(first)
        state.load(parse_routing(text), content_hash(text), 1000.0)
        lane = mirror.lanes["r0"]
        text = text_of({**first, "r1": {"candidate": URLS[1], "mirror": 50}})
        state.load(parse_routing(text), content_hash(text), 1000.0)
        assert mirror.lanes["r0"] is lane  # its queue and workers carry on
        assert mirror.lanes["r1"].percent == 50
    finally:
        await mirror.stop()
