"""The live windows: bounded memory, exact counts, eviction and the status summary."""

from __future__ import annotations

import math
from itertools import groupby

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE, VERSIONS, Version
from splitproxy.rollout.sketch import MAX_BINS, RELATIVE_ACCURACY
from splitproxy.rollout.windows import (
    Window,
    Windows,
)
from tests.unit.rollout.test_sketch import exact, latencies

T0 = 1_700_000_000.0  # any Unix time

# -- windows ------------------------------------------------------------------------------------

# (seconds since T0, candidate?, error?, candidate probability)
events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),  # gap since the previous event
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, 0.0, 0.05, 0.25, 1.0]),
    ),
    max_size=200,
)


Seen = tuple[float, Version, bool, float | None]


def feed(window: Window, evs: list[tuple[float, bool, bool, float | None]]) -> list[Seen]:
    """Observe events at increasing times; returns (time, version, error, p) as observed."""
    now = T0
    seen: list[Seen] = []
    for gap, cand, err, p in evs:
        now += gap
        version: Version = CANDIDATE if cand else STABLE
        window.observe(now, version, 0.01, err, p)
        seen.append((now, version, err, p))
    return seen


@given(events, st.integers(min_value=1, max_value=20))
def test_a_window_keeps_exactly_its_newest_buckets(
    evs: list[tuple[float, bool, bool, float | None]], capacity: int
) -> None:
    window = Window(capacity=capacity)
    seen = feed(window, evs)
    # the model: a bucket per run of events in the same second at the same probability
    runs = [list(g) for _, g in groupby(seen, key=lambda e: (math.floor(e[0]), e[3]))]
    kept = runs[-capacity:]
    got = window.observations(0.0)
    assert len(got) == len(kept) <= capacity
    for obs, run in zip(got, kept, strict=True):
        assert obs.start == math.floor(run[0][0])
        assert obs.end == obs.start + 1
        assert obs.probability == run[0][3]
        for version, counts in ((STABLE, obs.stable), (CANDIDATE, obs.candidate)):
            mine = [e for e in run if e[1] == version]
            assert counts.requests == len(mine) == counts.latency.count
            assert counts.errors == sum(1 for e in mine if e[2])


@given(events, st.lists(st.floats(min_value=0.0, max_value=3.0), max_size=30))
def test_reading_complete_buckets_counts_every_request_once(
    evs: list[tuple[float, bool, bool, float | None]], read_gaps: list[float]
) -> None:
    window = Window(capacity=10_000)  # no eviction here: only the reading protocol
    now = T0
    last = 0.0
    consumed = 0
    reads = iter(read_gaps)
    for gap, cand, err, p in evs:
        now += gap
        window.observe(now, CANDIDATE if cand else STABLE, 0.01, err, p)
        read_gap = next(reads, None)
        if read_gap is not None:  # the analyzer's tick, a little after the request
            now += read_gap  # (later requests come later still)
            got = window.observations(last, until=now)
            consumed += sum(o.stable.requests + o.candidate.requests for o in got)
            last = max([o.end for o in got], default=last)
    rest = window.observations(last)  # at the end, the incomplete buckets too
    consumed += sum(o.stable.requests + o.candidate.requests for o in rest)
    assert consumed == len(evs)


def test_each_request_carries_the_probability_it_was_routed_at() -> None:
    window = Window()
    window.observe(T0 + 0.1, CANDIDATE, 0.01, False, 0.05)
    window.observe(T0 + 0.2, STABLE, 0.01, True, 0.05)
    window.observe(T0 + 0.3, CANDIDATE, 0.01, True, 0.10)  # the weight moved to 10 %
    window.observe(T0 + 0.4, CANDIDATE, 0.01, False, 0.10)
    first, second = window.observations(T0)
    assert (first.start, first.probability) == (T0, 0.05)
    assert (first.candidate.requests, first.stable.errors) == (1, 1)
    assert (second.start, second.probability) == (T0, 0.10)
    assert (second.candidate.requests, second.candidate.errors) == (2, 1)
    assert second.version("stable").requests == 0


def test_a_clock_that_steps_back_keeps_buckets_in_order() -> None:
    window = Window()
    window.observe(T0 + 10.5, STABLE, 0.01, False, 0.0)
    window.observe(T0 + 3.0, STABLE, 0.01, False, 0.0)  # NTP stepped the clock back
    window.observe(T0 + 4.0, STABLE, 0.01, False, 0.5)
    got = window.observations(0.0)
    assert [(o.start, o.stable.requests) for o in got] == [(T0 + 10, 2), (T0 + 10, 1)]


def test_memory_is_bounded_however_long_it_runs() -> None:
    window = Window(capacity=60)
    for i in range(50_000):  # ~14 hours at 1 request/s, latencies all over the range
        window.observe(T0 + i, VERSIONS[i % 2], 10 ** (-6 + (i % 997) / 100), i % 7 == 0, 0.25)
    got = window.observations(0.0)
    assert len(got) == 60
    assert got[0].start == T0 + 50_000 - 60
    assert all(len(o.stable.latency.bins) <= MAX_BINS for o in got)


def test_reads_are_copies() -> None:
    window = Window()
    window.observe(T0, CANDIDATE, 0.01, False, 0.25)
    (before,) = window.observations(T0)
    window.observe(T0 + 0.5, CANDIDATE, 0.02, False, 0.25)
    assert before.candidate.requests == 1
    assert before.candidate.latency.count == 1


def test_a_window_needs_a_positive_size() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Window(capacity=0)
    assert Window(capacity=7).capacity == 7


# -- the summary status shows ------------------------------------------------------------------


def test_summary_of_the_last_minute_per_version() -> None:
    windows = Windows()
    now = T0 + 100.5
    windows.window("shop").observe(T0, STABLE, 5.0, True, 0.1)  # 100 s ago: not in the last minute
    for i in range(600):  # 10/s for the last minute; 1 in 20 fails; latencies 1..600 ms
        t = now - 59.9 + i * 0.1
        windows.window("shop").observe(t, VERSIONS[i % 2], (i + 1) / 1000, i % 20 == 0, 0.1)
    summary = windows.summary("shop", now)
    stable, cand = summary["stable"], summary["candidate"]
    assert stable.requests == cand.requests == 300
    assert stable.rate == pytest.approx(5.0)
    assert stable.errors == 30
    assert stable.error_rate == pytest.approx(0.1)
    assert cand.errors == 0
    assert cand.error_rate == 0.0
    odd = [(i + 1) / 1000 for i in range(1, 600, 2)]  # the candidate's latencies
    assert cand.p99 is not None
    assert cand.p99 == pytest.approx(exact(odd, 0.99), rel=RELATIVE_ACCURACY)
    assert cand.p50 == pytest.approx(exact(odd, 0.5), rel=RELATIVE_ACCURACY)
    view = cand.as_dict()
    assert view["latency_ms"]["p99"] == pytest.approx(cand.p99 * 1000, abs=0.001)
    assert view["requests"] == 300


def test_a_route_without_traffic_has_an_empty_summary() -> None:
    summary = Windows().summary("nowhere", T0)
    assert summary["stable"].requests == 0
    assert summary["stable"].error_rate is None
    assert summary["candidate"].p99 is None


def test_routes_removed_from_the_config_are_forgotten() -> None:
    windows = Windows()
    windows.window("a").observe(T0, STABLE, 0.01, False, 0.0)
    windows.window("b").observe(T0, STABLE, 0.01, False, 0.0)
    windows.retain(["b"])
    assert "a" not in windows
    assert windows.observations("a", 0.0) == []
    assert len(windows.observations("b", 0.0)) == 1


@settings(max_examples=50)
@given(st.lists(latencies, min_size=1, max_size=50))
def test_observations_without_latency_count_requests_only(values: list[float]) -> None:
    window = Window()
    for v in values:
        window.observe(T0, STABLE, v, False, 0.0)
    window.observe(T0, STABLE, None, False, 0.0)  # a WebSocket session
    (obs,) = window.observations(T0)
    assert obs.stable.requests == len(values) + 1
    assert obs.stable.latency.count == len(values)
