"""The replica's own brake while the state store is unreachable: the rollout's guard over this
replica's candidate traffic, ticked by hand."""

from __future__ import annotations

from splitproxy.replicas.brake import Brake
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import Period, VersionCounts

BAR = 1 / 0.001  # the guard's 1/α


def second(start: float, requests: int, errors: int) -> Period:
    def counts(n: int, x: int) -> VersionCounts:
        return VersionCounts(n, x, LatencySketch())

    return Period(start, start + 1, 0.2, counts(4 * requests, 0), counts(requests, errors))


def test_a_candidate_failing_badly_trips_the_brake_within_a_few_seconds() -> None:
    brake = Brake()
    trip = None
    for s in range(30):
        trip = brake.judge("app", "1.1", 0.05, BAR, [second(s, 10, 5)])
        if trip is not None:
            break
    assert trip is not None
    assert trip.requests <= 100  # a few dozen requests at a 50 % error rate
    assert trip.errors == trip.requests // 2
    assert "50 errors" in trip.reason or f"{trip.errors} errors" in trip.reason
    assert brake.tripped == {"app": trip}
    assert brake.judge("app", "1.1", 0.05, BAR, [second(40, 10, 5)]) is None  # tripped once


def test_a_healthy_candidate_or_an_early_error_never_trips_it() -> None:
    brake = Brake()
    for s in range(600):
        errors = 1 if s in (0, 300) else 0  # two stray errors in 6,000 requests
        assert brake.judge("app", "1.1", 0.05, BAR, [second(s, 10, errors)]) is None
    assert brake.tripped == {}


def test_each_candidate_revision_is_judged_apart_and_release_starts_afresh() -> None:
    brake = Brake()
    for s in range(5):
        assert brake.judge("app", "1.1", 0.05, BAR, [second(s, 10, 1)]) is None
    # a new candidate starts with a guard of its own: 1.1's errors do not count against it
    assert brake.judge("app", "1.2", 0.05, BAR, [second(5, 10, 0)]) is None
    for s in range(6, 40):
        if brake.judge("app", "1.1", 0.05, BAR, [second(s, 10, 5)]) is not None:
            break
    assert "app" in brake.tripped
    brake.release("app")
    assert brake.tripped == {}
    assert brake.judge("app", "1.1", 0.05, BAR, [second(50, 10, 0)]) is None
