"""What the admin API's route view says: live traffic (`splitproxy.admin.traffic_view`), and
the shape of the whole view against the types the console reads it with (`splitproxy.views`)."""

from __future__ import annotations

import copy
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, NotRequired, Union, is_typeddict

import pytest

from splitproxy.admin import TRAFFIC_SPAN, covered_span, route_view, traffic_view
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.routing import CompiledRoute
from splitproxy.metrics import Recorder
from splitproxy.rollout.controller import Controller, finite
from splitproxy.rollout.hooks import HookResult
from splitproxy.views import EventView, RolloutsView, RouteView
from tests.unit.fakes import ROUTES, runtime_state

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Recorder, CompiledRoute, Clock]:
    clock = Clock()
    state = runtime_state()
    recorder = Recorder(state, clock=clock)
    state.subscribe(recorder.on_swap)
    assert state.snapshot is not None
    route = state.snapshot.route("shop")
    assert route is not None
    return recorder, route, clock


def serve(recorder: Recorder, at: float, stable: int, candidate: int) -> None:
    for i in range(stable + candidate):
        version: Version = CANDIDATE if i < candidate else STABLE
        recorder.windows.window("shop").observe(at, version, 0.01, False, 0.25)


def test_right_after_start_the_rate_is_per_second_of_traffic_seen() -> None:
    recorder, route, _ = setup()
    for second in range(5):  # 40 requests a second for five seconds, 10 of them to the candidate
        serve(recorder, NOW + second + 0.5, 30, 10)
    view = traffic_view(recorder, route, NOW + 5.0)
    assert view["window_seconds"] == 5.0
    assert view["stable"]["requests"] == 150
    assert view["stable"]["rate"] == pytest.approx(30.0)  # not 150 / 60 = 2.5
    assert view["candidate"] is not None
    assert view["candidate"]["rate"] == pytest.approx(10.0)
    # the first bucket's second counts whole; a bucket still filling counts at least a second
    assert covered_span(recorder, "shop", NOW + 0.25) == 1.0


def test_a_window_older_than_the_span_divides_by_the_span() -> None:
    recorder, route, _ = setup()
    serve(recorder, NOW + 0.5, 1, 0)  # the route's first request, long ago
    for second in range(100, 160):
        serve(recorder, NOW + second + 0.5, 30, 10)
    view = traffic_view(recorder, route, NOW + 160.0)
    assert view["window_seconds"] == TRAFFIC_SPAN
    assert view["stable"]["rate"] == pytest.approx(30.0)
    # a quiet spell does not shorten the span: the window is older than a minute
    quiet = traffic_view(recorder, route, NOW + 200.0)
    assert quiet["window_seconds"] == TRAFFIC_SPAN
    assert quiet["stable"]["rate"] == pytest.approx(30 * 20 / 60)


def test_a_route_without_traffic_has_a_rate_of_zero() -> None:
    recorder, route, _ = setup()
    view = traffic_view(recorder, route, NOW)
    assert view["window_seconds"] == TRAFFIC_SPAN
    assert view["stable"]["rate"] == 0.0


# --- the views' types are the JSON's shape ------------------------------------------------------


def conforms(value: Any, hint: Any, path: str = "view") -> list[str]:
    """Where ``value`` (decoded JSON) departs from the type ``hint``: a TypedDict's keys
    exactly (required ones present, no others), recursively through lists, dicts and unions."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return []
        typed = [o for o in options if o is not type(None)]
        found = [conforms(value, o, path) for o in typed]
        return [] if any(not f for f in found) else found[0]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        hints = typing.get_type_hints(hint, include_extras=True)
        # (not __required_keys__: under postponed annotations it misses NotRequired)
        optional = {k for k, h in hints.items() if typing.get_origin(h) is NotRequired}
        hints = {k: typing.get_args(h)[0] if k in optional else h for k, h in hints.items()}
        problems = [f"{path}.{k}: missing" for k in hints if k not in optional and k not in value]
        problems += [f"{path}.{k}: not in {hint.__name__}" for k in value if k not in hints]
        for key, sub in value.items():
            if key in hints:
                problems += conforms(sub, hints[key], f"{path}.{key}")
        return problems
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [p for i, v in enumerate(value) for p in conforms(v, item, f"{path}[{i}]")]
    if origin is dict:
        _, item = typing.get_args(hint)
        return [p for k, v in value.items() for p in conforms(v, item, f"{path}.{k}")]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number"]
    if hint in (int, str, bool):
        return [] if type(value) is hint else [f"{path}: {value!r} is not {hint.__name__}"]
    return []  # Any: a part the views leave free-form


def test_conforms_finds_a_missing_an_unknown_and_a_mistyped_key() -> None:
    recorder, route, _ = setup()
    snapshot = runtime_state().snapshot
    assert snapshot is not None
    view: Any = copy.deepcopy(route_view(snapshot, route, recorder, NOW))
    assert conforms(view, RouteView) == []
    del view["weight"]["source"]
    view["traffic"]["stable"]["p42"] = 1.0
    view["stable"]["in_flight"] = "0"
    assert sorted(conforms(view, RouteView)) == [
        "view.stable.in_flight: '0' is not int",
        "view.traffic.stable.p42: not in VersionSummary",
        "view.weight.source: missing",
    ]


class Hooks:
    """Answers every hook call with a 200, at once."""

    async def post(self, url: str, payload: Mapping[str, Any], **_: Any) -> HookResult:
        return HookResult(True, 200, 1)


async def test_the_route_view_of_a_route_in_a_rollout_is_what_the_types_say() -> None:
    config = copy.deepcopy(ROUTES)
    config["routes"][0]["rollout"] = {
        "steps": [10, {"pause": True}, 50],
        "interval": "1s",
        "min_requests": 1,
        "checks": [
            {"metric": "error_rate", "max": "5%"},
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
        ],
        "hooks": [{"on": "event", "url": "http://ci.example/hook", "name": "ci"}],
    }
    state = runtime_state(config)
    clock = Clock()
    recorder = Recorder(state, clock=clock)
    control = Controller(state, recorder, hooks=Hooks(), clock=clock)
    for follower in (recorder.on_swap, control.on_swap):
        state.subscribe(follower)
    for _ in range(4):  # the rollout starts, takes its first step, and waits at the pause
        for i in range(20):
            version: Version = CANDIDATE if i < 2 else STABLE
            recorder.windows.window("shop").observe(clock.now + 0.5, version, 0.01, False, 0.1)
        clock.now += 1
        control.tick()
    snapshot = state.snapshot
    assert snapshot is not None
    views = [route_view(snapshot, route, recorder, clock.now, control) for route in snapshot.routes]
    sent = json.loads(json.dumps(views))  # what a client decodes
    rollout = sent[0]["rollout"]
    assert rollout is not None
    assert rollout["history"]
    assert rollout["checks"]
    assert rollout["hooks"]
    assert sent[1]["rollout"] is None
    assert [p for view in sent for p in conforms(view, RouteView)] == []
    events = json.loads(json.dumps(finite(control.events("shop"))))
    assert [p for e in events for p in conforms(e, EventView)] == []
    assert conforms(control.summary(), RolloutsView) == []
