"""The controller's bucket → sample path changes nothing: `samples.window_samples` reads the
live buckets directly, and gives the very samples (same values, same order) and the same
``last`` that the `Period` path (`Window.observations`, then `samples_for`) gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.samples import samples_for, window_samples
from splitproxy.rollout.windows import Windows
from splitproxy.workers.pooling import PooledWindows
from tests.unit.rollout.bucket_requests import REQUEST, observe_requests


@settings(max_examples=200, deadline=None)
@given(
    st.lists(REQUEST, max_size=80),
    st.lists(st.floats(0.0, 7.0), min_size=1, max_size=4),
    st.lists(st.sampled_from([0.05, 0.25, 0.5, None]), min_size=14, max_size=14),
    st.booleans(),
    st.integers(0, 3),
)
def test_the_direct_path_gives_the_period_paths_samples(
    requests: list[tuple[float, str, float | None, bool, int, str | None, bool, int | None]],
    reads: list[float],
    probabilities: list[float | None],
    judge: bool,
    limit: int,
) -> None:
    windows = Windows(capacity=5, path_classes=limit)  # a small ring: old buckets fall out
    window = windows.window("r")
    t0 = 1_700_000_000.0
    observe_requests(window, t0, requests, probabilities)
    last = t0 - 1.0
    for read in sorted(reads):  # the controller's reads: each bucket once, complete ones
        now = t0 + read
        periods = windows.observations("r", last, until=now)
        got, end = window_samples(windows, "r", last, now, judge_synthetic=judge)
        assert got == samples_for(periods, judge_synthetic=judge)
        assert all(type(s) is Sample and len(s) == len(Sample._fields) for s in got)
        assert end == (max(p.end for p in periods) if periods else None)
        if end is not None:
            last = max(last, end)


def test_a_route_without_a_window_has_no_samples() -> None:
    windows = Windows()
    assert window_samples(windows, "nowhere", 0.0, 10.0) == ([], None)
    assert "nowhere" not in windows  # reading creates nothing


def test_pooled_windows_are_read_from_the_pool_not_the_local_buckets() -> None:
    """Workers and replicas: the analyzer judges every member's traffic (the pool), never only
    the leader's own requests (its local buckets)."""
    windows = PooledWindows()
    t0 = 1_700_000_000.0
    windows.window("r").observe(t0 + 0.5, CANDIDATE, 0.01, True, 0.5, "/a")  # local only
    other = Windows()
    for _ in range(3):
        other.window("r").observe(t0 + 0.5, STABLE, 0.02, False, 0.5, "/a")
    windows.add("r", other.observations("r", 0.0))  # released by the pool
    got, end = window_samples(windows, "r", 0.0, t0 + 2)
    assert got == samples_for(windows.observations("r", 0.0, t0 + 2))
    assert [(s.version, s.requests, s.errors) for s in got if s.requests] == [(STABLE, 3, 0)]
    assert end == t0 + 1
