"""The recorder follows a swap by redoing only the changed routes and ends where the full pass
ends: the same series, each with the window the full pass gives it, the same windows kept,
the same mirror counts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.dataplane.state import RuntimeState
from splitproxy.metrics import Recorder

URLS = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
NAMES = ["r0", "r1", "r2", "r3"]

route_defs = st.fixed_dictionaries(
    {"candidate": st.none() | st.sampled_from(URLS), "mirror": st.booleans(), "ab": st.booleans()}
)
files = st.dictionaries(st.sampled_from(NAMES), route_defs, min_size=1)
# between reloads: a request on an older snapshot counted for a route (maybe gone by now),
# or a runtime weight (a swap that changes no definition)
late = st.lists(st.tuples(st.sampled_from(["request", "weight"]), st.sampled_from(NAMES)))


def text_of(routes: dict[str, dict[str, Any]]) -> str:
    lines = ["routes:"]
    for name, spec in routes.items():
        lines += [f"  - name: {name}", f"    match: {{path_prefix: /{name}}}"]
        lines.append(f"    stable: {URLS[0]}")
        if spec["candidate"] is not None:
            lines.append(f"    candidate: {{url: '{spec['candidate']}', revision: '1'}}")
            if spec["mirror"]:
                lines.append("    mirror: {percent: 10}")
            elif spec["ab"]:  # an A/B test (the book follows its compiled route)
                lines += ["    sticky: {cookie: sp}", "    rollout:", "      strategy: ab"]
                lines.append("      ab: {goals: [{name: signup, path_prefix: /signup}]}")
    return "\n".join(lines) + "\n"


def picture(rec: Recorder, state: RuntimeState) -> Any:
    windows = {name: rec.windows.window(name) for name in NAMES if name in rec.windows}
    series = {
        key: (s.version, None if s.window is None else s.window is windows.get(key[0]))
        for key, s in rec._series.items()
    }
    # the A/B routes as compiled now, by identity (a leader's global tables find theirs so)
    snapshot = state.snapshot
    ab = {n: snapshot is not None and r is snapshot.route(n) for n, r in rec.ab.routes.items()}
    book = (ab, dict(rec.ab.idents), sorted(rec.ab.tables), sorted(rec.ab.tests))
    return series, sorted(windows), list(rec._mirrors), book


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(files, late), min_size=1, max_size=5))
def test_following_the_changes_equals_the_full_pass(
    steps: list[tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]],
) -> None:
    state = RuntimeState()
    incremental, full = Recorder(state), Recorder(state)
    state.subscribe(incremental.on_swap)
    state.subscribe(lambda old, new: full.on_swap(None, new))  # the full pass, each time
    for routes, events in steps:
        text = text_of(routes)
        state.load(parse_routing(text), content_hash(text), 1000.0)
        assert picture(incremental, state) == picture(full, state)
        for kind, name in events:
            snapshot = state.snapshot
            route = snapshot.config.route(name) if snapshot is not None else None
            if kind == "request":
                for rec in (incremental, full):
                    rec._get(name, "candidate")  # what counting a finished request does
            elif route is not None and route.candidate is not None:
                state.set_weight(name, 20.0, 1000.0)
        assert picture(incremental, state) == picture(full, state)


def test_a_reload_that_edits_one_route_keeps_every_other_window() -> None:
    state = RuntimeState()
    rec = Recorder(state)
    state.subscribe(rec.on_swap)
    first = {n: {"candidate": URLS[1], "mirror": False, "ab": False} for n in NAMES}
    text = text_of(first)
    state.load(parse_routing(text), content_hash(text), 1000.0)
    window = rec._series[("r0", "candidate")].window
    text = text_of({**first, "r1": {"candidate": None, "mirror": False, "ab": False}})
    state.load(parse_routing(text), content_hash(text), 1000.0)
    assert rec._series[("r0", "candidate")].window is window
    assert window is not None
