"""`Controller._sync_weight` skips the state while neither the config, the route's own
rollout weight in force nor the analyzer's weight changed: after any run of analyzer weights,
phases and outside changes to the state (a weight cleared or set by someone else, another
route's weight, a reload), the route's rollout weight in force is the one the analyzer says,
as when synced afresh each time."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import parse_routing
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.metrics import Recorder
from splitproxy.rollout.controller import Controller

T0 = 1_700_000_000.0
FILE = """
routes:
  - name: a
    match: {host: a.example}
    stable: http://a-s
    candidate: {url: http://a-c, revision: v1}
    rollout: {steps: [5, 50], interval: 30s}
  - name: b
    match: {host: b.example}
    stable: http://b-s
    candidate: {url: http://b-c, revision: v1}
    rollout: {steps: [5, 50], interval: 30s}
  - name: main
    stable: http://main
"""

OP = st.one_of(
    st.tuples(st.just("weight"), st.sampled_from([None, 0.0, 5.0, 12.345, 100.0])),
    st.tuples(st.just("phase"), st.sampled_from(["progressing", "rolled_back", "paused"])),
    st.tuples(st.just("clear"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("set"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("reload"), st.none()),
    st.tuples(st.just("sync"), st.none()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(OP, max_size=25))
def test_the_weight_in_force_is_the_analyzers(ops: list[tuple[str, Any]]) -> None:
    state = RuntimeState()
    state.load(parse_routing(FILE), content_hash(FILE), T0)
    recorder = Recorder(state, clock=lambda: T0)
    control = Controller(state, recorder, clock=lambda: T0)
    control.tick(T0)
    rt = control._routes["a"]
    a = rt.analyzer
    for op, arg in ops:
        if op == "weight":
            a.weight = arg
        elif op == "phase":
            a.phase = arg
        elif op == "clear":
            state.clear_rollout_weight(arg)
        elif op == "set":
            state.set_rollout_weight(arg, 33.0, T0, "other")
        elif op == "reload":
            state.load(parse_routing(FILE), content_hash(FILE + "#"), T0)
        control._sync_weight(rt, T0)
        snapshot = state.snapshot
        assert snapshot is not None
        have = snapshot.rollout_weights.get("a")
        if a.weight is None:
            assert have is None
        else:
            assert have is not None
            closed = a.phase == "rolled_back"
            got = (have.percent, have.candidate, have.closed, have.shadow)
            assert got == (round(a.weight, 2), a.revision, closed, False)
