"""The adapter from the live windows to the analyzer: `splitproxy.rollout.samples`."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import CANDIDATE, STABLE, VERSIONS, Version
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.messages import Observation, Sample, SetWeight
from splitproxy.rollout.samples import path_class_slots, samples_for
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import (
    OTHER_CLASS,
    Period,
    VersionCounts,
    Window,
    Windows,
)

T0 = 1_700_000_000.0

# (second, version, error, path, synthetic, probability)
Request = tuple[int, Version, bool, str, bool, float | None]
requests_st = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        st.sampled_from([STABLE, CANDIDATE]),
        st.booleans(),
        st.sampled_from(["/", "/a", "/b/1", "/c", "/d", "/123", "/e/x"]),
        st.booleans(),
        st.sampled_from([0.1, 0.25, None]),
    ),
    max_size=200,
).map(lambda rs: sorted(rs, key=lambda r: r[0]))


def fill(requests: list[Request]) -> Window:
    window = Window(path_classes=3)
    for second, version, error, path, synthetic, p in requests:
        window.observe(
            T0 + second + 0.5, version, 0.01 * (1 + second), error, p, path, "/", synthetic
        )
    return window


@settings(max_examples=150)
@given(requests_st, st.booleans())
def test_samples_count_every_request_once(requests: list[Request], judge: bool) -> None:
    window = fill(requests)
    observations = window.observations(T0)
    samples = samples_for(observations, judge_synthetic=judge)

    user: Counter[tuple[Version, bool]] = Counter()
    synthetic: Counter[tuple[Version, bool]] = Counter()
    for _, version, error, _, is_synthetic, _ in requests:
        (synthetic if is_synthetic else user)[version, error] += 1

    def total(which: list[Sample], version: str) -> tuple[int, int]:
        mine = [s for s in which if s.version == version]
        return sum(s.requests for s in mine), sum(s.errors for s in mine)

    judged = [s for s in samples if s.p is None and s.path_class is None and s.requests]
    for version in VERSIONS:
        n = user[version, True] + user[version, False]
        # user traffic is split by class, but pooled it is exact (user requests routed at
        # p=None also carry a class; the synthetic sample is the only class-less one)
        classed = [s for s in samples if s.path_class is not None]
        assert total(classed, version) == (n, user[version, True])
        s_n = synthetic[version, True] + synthetic[version, False]
        expected = (s_n, synthetic[version, True]) if judge else (0, 0)
        assert total(judged, version) == expected
    assert all(s.latency == () for s in samples if s.path_class is not None)
    named = {s.path_class for s in samples} - {None, OTHER_CLASS}
    assert len(named) <= 3  # the window's limit
    assert named <= {"/", "/a", "/b", "/c", "/d", "/e"}
    # one latency histogram per version and bucket, with all of its requests
    for obs in observations:
        for version in VERSIONS:
            counts = obs.version(version)
            hists = [
                s
                for s in samples
                if s.version == version and s.latency and s.requests == 0 and s.p == obs.probability
            ]
            if counts.latency.count:
                assert any(sum(n for _, n in s.latency) == counts.latency.count for s in hists)


def test_a_bucket_becomes_class_samples_a_latency_sample_and_judged_synthetic_ones() -> None:
    window = Window()
    window.observe(T0, CANDIDATE, 0.010, False, 0.2, "/api/x")
    window.observe(T0, CANDIDATE, 0.020, True, 0.2, "/api/y")
    window.observe(T0, STABLE, 0.030, False, 0.2, "/web")
    window.observe(T0, CANDIDATE, 0.040, True, None, "/web", "/", True)
    (obs,) = window.observations(T0)
    samples = samples_for([obs])
    by_class = {(s.version, s.path_class): (s.requests, s.errors, s.p) for s in samples}
    assert by_class[("candidate", "/api")] == (2, 1, 0.2)
    assert by_class[("stable", "/web")] == (1, 0, 0.2)
    latency = [s for s in samples if s.latency]
    assert [(s.version, s.requests, s.path_class) for s in latency] == [
        ("stable", 0, None),
        ("candidate", 0, None),
    ]
    assert not [s for s in samples if s.p is None]  # not judged: synthetic left out
    judged = samples_for([obs], judge_synthetic=True)
    (syn,) = [s for s in judged if s.p is None]
    assert (syn.version, syn.requests, syn.errors, syn.path_class) == ("candidate", 1, 1, None)
    assert sum(n for _, n in syn.latency) == 1


def test_an_observation_without_classes_is_one_pooled_sample() -> None:
    sketch = LatencySketch()
    sketch.add(0.1)
    obs = Period(T0, T0 + 1, 0.5, VersionCounts(0, 0, LatencySketch()), VersionCounts(3, 1, sketch))
    samples = samples_for([obs])
    assert [(s.version, s.requests, s.errors, s.path_class) for s in samples] == [
        ("candidate", 3, 1, None),
        ("candidate", 0, 0, None),
    ]


def test_the_slots_are_the_windows_named_classes() -> None:
    assert path_class_slots(Windows(path_classes=5)) == 5


# --- through the analyzer: a broken endpoint ------------------------------------------------

ENDPOINTS = ["/home", "/search", "/cart", "/product", "/api", "/login", "/static", "/checkout"]
SHARE = [0.3, 0.15, 0.1, 0.2, 0.15, 0.05, 0.04, 0.01]  # /checkout: 1 % of the traffic


def time_to_rollback(slots: int | None, seed: int) -> float | None:
    """Seconds until a candidate that fails 25 % of /checkout (1 % of the traffic; base error
    rate 0.5 %) is rolled back at 10 % weight, 1000 rps, or None within 10 minutes."""
    rng = random.Random(seed)
    windows = Windows(path_classes=8)
    window = windows.window("shop")
    rollout = Rollout.model_validate(
        {
            "steps": [10],
            "interval": "1h",
            "min_requests": 10**9,
            "checks": [{"metric": "error_rate", "compare": "stable"}],
            "guard": False,
        }
    )
    kw: dict[str, Any] = {"path_class_slots": path_class_slots(windows) if slots is None else slots}
    analyzer = Analyzer("shop", rollout, **kw)
    weight = 0.0
    last = T0
    for second in range(600):
        now = T0 + second
        p = weight / 100
        for _ in range(1000):
            path = rng.choices(ENDPOINTS, SHARE)[0]
            version: Version = CANDIDATE if rng.random() < p else STABLE
            rate = 0.25 if version == CANDIDATE and path == "/checkout" else 0.005
            window.observe(now + 0.5, version, 0.01, rng.random() < rate, p, path + "/x")
        samples = samples_for(window.observations(last, until=now + 1))
        last = now + 1
        for action in analyzer.tick(now + 1, Observation("v2", samples)):
            if isinstance(action, SetWeight) and action.percent is not None:
                weight = action.percent
        if analyzer.phase == "rolled_back":
            return float(second)
    return None


def test_per_class_samples_catch_a_broken_endpoint_the_pooled_test_misses() -> None:
    per_class = time_to_rollback(None, seed=1)
    pooled_only = time_to_rollback(0, seed=1)
    assert per_class is not None
    assert pooled_only is None or pooled_only > 2 * per_class
