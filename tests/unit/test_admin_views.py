"""What the admin API's route view says about live traffic: `splitproxy.admin.traffic_view`."""

from __future__ import annotations

import pytest

from splitproxy.admin import TRAFFIC_SPAN, covered_span, traffic_view
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.routing import CompiledRoute
from splitproxy.metrics import Recorder
from tests.unit.fakes import runtime_state

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
