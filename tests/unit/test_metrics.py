"""The recorder: exact counters per route, version and code, histograms, and what /metrics says."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitproxy.dataplane.routing import retry_decision
from splitproxy.dataplane.state import RuntimeState
from splitproxy.metrics import LATENCY_BUCKETS, Recorder
from splitproxy.rollout.sketch import RELATIVE_ACCURACY
from splitproxy.rollout.windows import Windows
from tests.unit.fakes import ROUTES, exchange, runtime_state

NOW = 1_700_000_000.0
Labels = frozenset[tuple[str, str]]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(recorder: Recorder) -> dict[tuple[str, Labels], float]:
    """Every sample /metrics exposes: (name, labels) -> value."""
    text = generate_latest(recorder.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def user(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    """`value` of a user-traffic sample (``traffic="user"``)."""
    return value(samples, name, traffic="user", **labels)


def serve(recorder: Recorder, *args: object, **kwargs: object) -> None:
    ex = exchange(recorder.state, *args, **kwargs)  # type: ignore[arg-type]
    if ex.decision is not None:
        recorder.exchange_started(ex)
    recorder.exchange_finished(ex)


def following(state: RuntimeState, **options: Any) -> Recorder:
    """A recorder that follows ``state``'s snapshots, as the server wires it."""
    recorder = Recorder(state, **options)
    state.subscribe(recorder.on_swap)
    return recorder


@pytest.fixture
def recorder() -> Recorder:
    return following(runtime_state(), clock=Clock())


def test_requests_are_counted_exactly_by_route_version_and_code(recorder: Recorder) -> None:
    for _ in range(7):
        serve(recorder, "shop", "stable")
    for _ in range(3):
        serve(recorder, "shop", "candidate", status=500)
    serve(recorder, "shop", "candidate", status=502, error_kind="connect", ttfb=0)
    serve(recorder, "shop", "candidate", status=504, error_kind="timeout", ttfb=0)
    serve(recorder, "shop", "stable", status=503, error_kind="upstream_busy", ttfb=0)
    serve(recorder, "shop", "stable", status=499, error_kind="client_closed", ttfb=0)
    serve(recorder, None, status=404, ttfb=0)  # no route matched
    serve(recorder, "static", status=413, routed=False, ttfb=0)  # refused before routing
    s = scrape(recorder)
    expected = {
        ("shop", "stable", "200"): 7,
        ("shop", "candidate", "500"): 3,
        ("shop", "candidate", "502"): 1,
        ("shop", "candidate", "504"): 1,
        ("shop", "stable", "503"): 1,
        ("shop", "stable", "499"): 1,
        ("", "", "404"): 1,
        ("static", "", "413"): 1,
    }
    got = {
        (dict(labels)["route"], dict(labels)["version"], dict(labels)["code"]): n
        for (name, labels), n in s.items()
        if name == "splitproxy_requests_total"
    }
    assert got == expected
    assert recorder.requests("shop", "candidate", 500) == 3


def test_durations_fall_in_buckets_from_5_ms_to_30_s(recorder: Recorder) -> None:
    for duration in (0.004, 0.005, 0.03, 0.2, 29.0, 45.0):
        serve(recorder, "shop", "stable", duration=duration, ttfb=0.001)
    s = scrape(recorder)
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in s
        if name == "splitproxy_request_duration_seconds_bucket"
        and dict(labels)["version"] == "stable"
        and dict(labels)["route"] == "shop"
    )
    assert les == [*LATENCY_BUCKETS, float("inf")]
    assert les[0] == 0.005
    assert les[-2] == 30.0

    def bucket(le: str) -> float | None:
        return user(
            s, "splitproxy_request_duration_seconds_bucket", route="shop", version="stable", le=le
        )

    assert bucket("0.005") == 2  # le is inclusive: 5 ms counts in the 5 ms bucket
    assert bucket("0.05") == 3
    assert bucket("0.2") == 4
    assert bucket("30.0") == 5
    assert bucket("+Inf") == 6
    count = user(s, "splitproxy_request_duration_seconds_count", route="shop", version="stable")
    total = user(s, "splitproxy_request_duration_seconds_sum", route="shop", version="stable")
    assert count == 6
    assert total == pytest.approx(74.239)
    ttfb = "splitproxy_upstream_response_header_duration_seconds_count"
    assert value(s, ttfb, route="shop", version="stable") == 6


def test_series_exist_at_zero_before_the_first_request(recorder: Recorder) -> None:
    s = scrape(recorder)
    # rate() and histogram_quantile() need a zero to start from
    assert value(s, "splitproxy_requests_in_flight", route="shop", version="candidate") == 0
    assert (
        user(
            s,
            "splitproxy_request_duration_seconds_bucket",
            route="shop",
            version="candidate",
            le="+Inf",
        )
        == 0
    )
    count = "splitproxy_request_duration_seconds_count"
    assert user(s, count, route="static", version="stable") == 0
    assert user(s, count, route="static", version="candidate") is None  # no candidate


def test_upstream_errors_by_kind(recorder: Recorder) -> None:
    serve(recorder, "shop", "stable", status=502, error_kind="connect", ttfb=0)
    serve(recorder, "shop", "stable", status=502, error_kind="reset", ttfb=0)
    serve(recorder, "shop", "stable", status=502, error_kind="protocol", ttfb=0)
    serve(recorder, "shop", "candidate", status=504, error_kind="timeout", ttfb=0)
    serve(recorder, "shop", "stable", status=200, error_kind="reset")  # cut mid-body
    serve(recorder, "shop", "stable", status=499, error_kind="client_closed", ttfb=0)
    ex = exchange(recorder.state, "shop", "stable", status=503, error_kind="upstream_busy")
    recorder.exchange_started(ex)
    recorder.attempt_failed(ex, "stable", "pool")  # the connection limit was reached
    recorder.exchange_finished(ex)
    s = scrape(recorder)
    got = {
        (dict(labels)["version"], dict(labels)["kind"]): n
        for (name, labels), n in s.items()
        if name == "splitproxy_upstream_errors_total"
    }
    assert got == {
        ("stable", "connect"): 1,
        ("stable", "reset"): 2,
        ("stable", "protocol"): 1,
        ("stable", "pool"): 1,
        ("candidate", "timeout"): 1,
    }


def test_a_candidate_failure_replayed_on_stable_counts_against_the_candidate(
    recorder: Recorder,
) -> None:
    ex = exchange(recorder.state, "shop", "candidate", "weight", duration=0.05)
    recorder.exchange_started(ex)
    assert recorder.in_flight("shop", "candidate") == 1
    ex.retried = True  # the data path: candidate refused the connection, replay on stable
    recorder.attempt_failed(ex, "candidate", "connect")
    ex.decision = retry_decision()
    ex.version = "stable"
    recorder.exchange_finished(ex)

    s = scrape(recorder)
    assert user(s, "splitproxy_requests_total", route="shop", version="stable", code="200") == 1
    assert (
        user(s, "splitproxy_requests_total", route="shop", version="candidate", code="200") is None
    )
    errors = "splitproxy_upstream_errors_total"
    assert value(s, errors, route="shop", version="candidate", kind="connect") == 1
    decisions = "splitproxy_routing_decisions_total"
    assert value(s, decisions, route="shop", version="candidate", reason="weight") == 1
    assert value(s, decisions, route="shop", version="stable", reason="retry") == 1
    assert recorder.in_flight("shop", "candidate") == 0
    assert recorder.in_flight("shop", "stable") == 0
    # the analyzer sees a candidate error, routed at the weight in force (25 %)
    (obs,) = recorder.observations("shop", NOW - 1)
    assert (obs.candidate.requests, obs.candidate.errors, obs.stable.requests) == (1, 1, 0)
    assert obs.probability == 0.25


def test_in_flight_and_decisions(recorder: Recorder) -> None:
    a = exchange(recorder.state, "shop", "candidate", "sticky")
    b = exchange(recorder.state, "shop", "stable", "override")
    c = exchange(recorder.state, "static", "stable", "fallback")
    for ex in (a, b, c):
        recorder.exchange_started(ex)
    recorder.exchange_finished(b)
    s = scrape(recorder)
    flight = "splitproxy_requests_in_flight"
    assert value(s, flight, route="shop", version="candidate") == 1
    assert value(s, flight, route="shop", version="stable") == 0
    assert value(s, flight, route="static", version="stable") == 1
    decisions = {
        (dict(labels)["route"], dict(labels)["version"], dict(labels)["reason"]): n
        for (name, labels), n in s.items()
        if name == "splitproxy_routing_decisions_total"
    }
    assert decisions == {
        ("shop", "candidate", "sticky"): 1,
        ("shop", "stable", "override"): 1,
        ("static", "stable", "fallback"): 1,
    }


def test_weights_and_upstreams_follow_the_config(recorder: Recorder) -> None:
    s = scrape(recorder)
    weight = "splitproxy_route_weight"
    assert value(s, weight, route="shop", version="candidate") == 25
    assert value(s, weight, route="shop", version="stable") == 75
    assert value(s, weight, route="static", version="stable") == 100
    assert value(s, weight, route="static", version="candidate") == 0
    info = "splitproxy_upstream_info"
    assert (
        value(
            s,
            info,
            route="shop",
            version="candidate",
            upstream="http://shop-v2:8080",
            revision="2.0",
        )
        == 1
    )
    assert (
        value(s, info, route="static", version="stable", upstream="http://static:80", revision="")
        == 1
    )

    recorder.state.set_weight("shop", 40, NOW)
    s = scrape(recorder)
    assert value(s, weight, route="shop", version="candidate") == 40
    assert value(s, weight, route="shop", version="stable") == 60


def test_config_reloads(recorder: Recorder) -> None:
    recorder.config_reloaded(True, NOW)
    recorder.config_reloaded(False, NOW + 5)
    s = scrape(recorder)
    assert value(s, "splitproxy_config_reloads_total", result="success") == 1
    assert value(s, "splitproxy_config_reloads_total", result="failure") == 1
    assert value(s, "splitproxy_config_last_reload_successful") == 0
    assert value(s, "splitproxy_config_last_reload_success_timestamp_seconds") == NOW
    recorder.config_reloaded(True, NOW + 9)
    s = scrape(recorder)
    assert value(s, "splitproxy_config_last_reload_successful") == 1
    assert value(s, "splitproxy_config_last_reload_success_timestamp_seconds") == NOW + 9


def test_each_recorder_has_its_own_registry_with_process_metrics() -> None:
    a, b = following(runtime_state()), following(runtime_state())
    serve(a, "shop", "stable")
    assert user(scrape(a), "splitproxy_requests_total", route="shop", version="stable", code="200")
    assert (
        user(scrape(b), "splitproxy_requests_total", route="shop", version="stable", code="200")
        is None
    )
    names = {name for name, _ in scrape(a)}
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names
    assert "python_info" in names


def test_no_label_carries_a_path_a_client_or_a_request_id(recorder: Recorder) -> None:
    serve(recorder, "shop", "stable", target=b"/users/12345?token=secret", request_id=b"rid-9")
    serve(recorder, None, status=404, target=b"/nope/98765")
    allowed = {
        "route": {"", "shop", "static"},
        "version": {"", "stable", "candidate"},
        "upstream": {"http://shop-v1:8080", "http://shop-v2:8080", "http://static:80"},
        "revision": {"", "1.0", "2.0"},
        "traffic": {"user", "preview"},
    }
    for (name, labels), _ in scrape(recorder).items():
        if not name.startswith("splitproxy_"):
            continue
        for label, v in labels:
            if label in allowed:
                assert v in allowed[label], (name, label, v)
            else:
                assert label in {"code", "le", "kind", "reason", "result"}, (name, label)
                assert "/" not in v
                assert "203.0.113.7" not in v


def test_a_websocket_session_is_counted_but_is_not_a_latency(recorder: Recorder) -> None:
    serve(recorder, "shop", "stable", status=101, duration=300.0, ttfb=0.002)
    s = scrape(recorder)
    assert user(s, "splitproxy_requests_total", route="shop", version="stable", code="101") == 1
    count = "splitproxy_request_duration_seconds_count"
    assert user(s, count, route="shop", version="stable") == 0
    (obs,) = recorder.observations("shop", NOW - 1)
    assert (obs.stable.requests, obs.stable.latency.count) == (1, 0)


def test_live_windows_carry_errors_latency_and_the_routing_probability() -> None:
    clock = Clock()
    recorder = following(runtime_state(), clock=clock)
    serve(recorder, "shop", "candidate", "weight", duration=0.120)
    serve(recorder, "shop", "candidate", "weight", status=503, error_kind="upstream_busy")
    serve(recorder, "shop", "stable", "sticky", status=200, error_kind="reset")  # truncated
    serve(recorder, "shop", "stable", "sticky", status=499, error_kind="client_closed")
    serve(recorder, "shop", "stable", "weight", status=404)  # the app's 404 is no error
    clock.now += 0.5
    serve(recorder, "shop", "candidate", "override")  # forced: not routed at random
    serve(recorder, "static", "stable", "fallback")  # no candidate: not at random either
    first, second = recorder.observations("shop", NOW)
    assert first.probability == 0.25
    assert (first.candidate.requests, first.candidate.errors) == (2, 1)
    assert (first.stable.requests, first.stable.errors) == (3, 1)
    assert first.candidate.latency.quantile(0.0) == pytest.approx(0.010, rel=RELATIVE_ACCURACY)
    assert first.candidate.latency.quantile(1.0) == pytest.approx(0.120, rel=RELATIVE_ACCURACY)
    assert (second.probability, second.candidate.requests) == (None, 1)
    (fallback,) = recorder.observations("static", NOW)
    assert (fallback.probability, fallback.stable.requests) == (None, 1)

    summary = recorder.summary("shop", NOW + 30)
    assert summary["candidate"].requests == 3
    assert summary["candidate"].error_rate == pytest.approx(1 / 3)
    assert summary["stable"].rate == pytest.approx(3 / 60)
    assert recorder.summary("shop", NOW + 120)["candidate"].requests == 0


def test_windows_of_removed_routes_are_dropped_on_reload() -> None:
    windows = Windows()
    state = runtime_state()
    recorder = following(state, clock=Clock(), windows=windows)
    serve(recorder, "static", "stable", "fallback")
    assert "static" in windows
    without = runtime_state({"routes": [ROUTES["routes"][0]]}).snapshot  # "static" is gone
    assert without is not None
    state.load(without.config, without.content_hash, NOW + 1)
    assert "static" not in windows
    assert recorder.observations("static", 0.0) == []
    # the route comes back: it starts from an empty window, and it fills
    again = runtime_state().snapshot
    assert again is not None
    state.load(again.config, again.content_hash, NOW + 2)
    serve(recorder, "static", "stable", "fallback")
    assert [o.stable.requests for o in recorder.observations("static", 0.0)] == [1]


def test_preview_requests_are_labelled_apart_and_never_reach_the_windows() -> None:
    clock = Clock()
    recorder = following(runtime_state(), clock=clock)
    serve(recorder, "shop", "candidate", "weight", duration=0.120)
    for status in (200, 200, 503):
        serve(recorder, "shop", "candidate", "preview", status=status, preview=True)
    serve(recorder, None, status=404, preview=True)  # no route, on the preview listener
    s = scrape(recorder)
    requests = "splitproxy_requests_total"
    assert user(s, requests, route="shop", version="candidate", code="200") == 1
    assert user(s, requests, route="shop", version="candidate", code="503") is None
    preview = {"traffic": "preview"}
    assert value(s, requests, route="shop", version="candidate", code="200", **preview) == 2
    assert value(s, requests, route="shop", version="candidate", code="503", **preview) == 1
    assert value(s, requests, route="", version="", code="404", **preview) == 1
    assert user(s, requests, route="", version="", code="404") is None
    count = "splitproxy_request_duration_seconds_count"
    assert user(s, count, route="shop", version="candidate") == 1
    assert value(s, count, route="shop", version="candidate", **preview) == 3
    # a route without preview traffic has no preview histogram, only the user one at zero
    assert value(s, count, route="shop", version="stable", **preview) is None
    ttfb = "splitproxy_upstream_response_header_duration_seconds_count"
    assert value(s, ttfb, route="shop", version="candidate") == 1
    decisions = "splitproxy_routing_decisions_total"
    assert value(s, decisions, route="shop", version="candidate", reason="preview") == 3
    assert recorder.in_flight("shop", "candidate") == 0
    # the analyzer's windows saw the one user request, none of the preview ones
    (period,) = recorder.observations("shop", NOW)
    assert (period.candidate.requests, period.candidate.errors) == (1, 0)
    assert recorder.summary("shop", NOW + 1)["candidate"].requests == 1
