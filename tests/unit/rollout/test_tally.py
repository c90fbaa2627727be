"""The live buckets folded as they are (`tally.tally_buckets`, the controller's path) sum up
exactly what their samples do (`tally.tally_samples` of `samples.bucket_samples`): the same
numbers, the dictionaries' keys in the same order (the order the tests are updated in), the
same step window and the sticky users' tables asked in the same order; and an `Evidence`
folded from the buckets ends in the very state of one folded from the samples."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.rollout.codec import _encode_evidence
from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.samples import BucketFeed, window_feed, window_samples
from splitproxy.rollout.tally import Tally, tally, tally_buckets, tally_samples
from splitproxy.rollout.units import RecentUnits, UnitTable
from splitproxy.rollout.windows import Windows
from tests.unit.rollout.bucket_requests import PATHS, REQUEST, observe_requests
from tests.unit.rollout.drive import spec
from tests.unit.rollout.test_trailing import settled

T0 = 1_700_000_000.0
CHECKS = [
    {"metric": "error_rate", "max": "1%"},
    {"metric": "latency_p99", "max": "500ms"},
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable"},
]


def _evidence(cap: int) -> Evidence:
    e = Evidence(spec(checks=CHECKS, guard={"error_rate": 0.05}), path_class_slots=2)
    e.units = UnitTable(cap=cap)  # a small table: full, errors left out (``skipped``)
    e.guard_units = RecentUnits(window=2.5, cap=cap)  # counted again after 2.5 s
    return e


def _plain(t: Tally) -> list[Any]:
    """The tally with its dictionaries' order made visible."""
    return [list(v.items()) if isinstance(v, dict) else v for v in t]


def _side_effects(e: Evidence) -> list[Any]:
    """What the tally leaves: the step window, the unit tables asked, and stable's trailing
    history, its latency added as it was read (the buckets' sketches read in their bins' own
    order: the sums are compared as such, each slot's histogram sorted by its bounds)."""
    w = e.window
    units = e.units
    return [
        w.requests,
        w.errors,
        sorted(w.latency.items()),  # (its bounds are sorted by every reader)
        sorted(units._seen),
        units.skipped,
        list(e.guard_units._last.items()),
        sorted(e.trail_total.items()),
        [[s, n, sorted(h.items())] for s, n, h in settled(e)],
        e.trail_requests,
        e.trail_open,
        e.recent,
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(REQUEST, max_size=80),
    st.lists(st.floats(0.0, 7.0), min_size=1, max_size=4),
    st.lists(st.sampled_from([0.05, 0.25, 0.5, 0.0, 1.0, None]), min_size=14, max_size=14),
    st.booleans(),
    st.integers(0, 3),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.lists(st.sampled_from([0.002, 0.01, 0.05, 0.3, 2.0]), max_size=3),
    st.integers(1, 8),
    st.lists(st.integers(0, 2), min_size=2, max_size=2),
)
def test_the_buckets_tally_up_as_their_samples_do(
    requests: list[tuple[float, str, float | None, bool, int, str | None, bool, int | None]],
    reads: list[float],
    probabilities: list[float | None],
    judge: bool,
    limit: int,
    tests: list[bool],
    limits: list[float],
    cap: int,
    outside: list[int],
) -> None:
    windows = Windows(capacity=5, path_classes=limit)  # a small ring: old buckets fall out
    window = windows.window("r")
    observe_requests(window, T0, requests, probabilities)
    first = window.buckets(T0 - 1.0)[:1]
    for b in first:  # requests and errors no class holds: the samples' remainder (by hand)
        b.requests = [n + extra for n, extra in zip(b.requests, outside, strict=True)]
        b.errors = [x + extra // 2 for x, extra in zip(b.errors, outside, strict=True)]
    quantiles = (0.95, 0.99, 0.5)
    bounds = tuple(zip(quantiles, limits, strict=False))
    direct, made = _evidence(cap), _evidence(cap)
    last = T0 - 1.0
    for k, read in enumerate(sorted(reads)):
        now = T0 + read
        feed, end = window_feed(windows, "r", last, now, judge_synthetic=judge)
        samples, end_too = window_samples(windows, "r", last, now, judge_synthetic=judge)
        assert end == end_too
        assert list(feed) == samples  # read as a sequence, the feed is its samples
        if isinstance(feed, BucketFeed):
            feed = BucketFeed(feed.buckets, judge)  # (not made yet, as on the tick)
            got = tally_buckets(direct, now, feed, tests[k], bounds)
            assert feed._samples is None  # no sample made on the way
        else:
            got = tally(direct, now, feed, tests[k], bounds)
        want = tally_samples(made, now, samples, tests[k], bounds)
        assert _plain(got) == _plain(want)
        assert _side_effects(direct) == _side_effects(made)
        if end is not None:
            last = max(last, end)


def _feed(windows: Windows, rng: random.Random, second: int, weight: float) -> None:
    """One second of a route's traffic: stable and candidate at ``weight``, sticky users for a
    third of the seconds (a user keeps its version), a few errors and slow requests."""
    window = windows.window("r")
    sticky = second % 3 == 0
    for _ in range(rng.randrange(10, 40)):
        user = rng.randrange(50)
        cand = (user % 100 < weight * 100) if sticky else rng.random() < weight
        window.observe(
            T0 + second + rng.random() * 0.999,
            CANDIDATE if cand else STABLE,
            rng.lognormvariate(-3.0, 0.6) * (1.3 if cand and second > 150 else 1.0),
            rng.random() < (0.02 if cand else 0.01),
            weight,
            rng.choice(PATHS),
            "/",
            synthetic=rng.random() < 0.03,
            unit=user if sticky else None,
        )


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.booleans(), st.sampled_from([0.0, 0.1]))
def test_an_evidence_folded_from_the_buckets_ends_where_one_fed_samples_does(
    seed: int, judge: bool, tolerance: float
) -> None:
    """Two minutes and more (stable's thresholds set in, the comparisons' fresh starts, the
    guard), weights changing; the same saved state after every tick, and the same results."""
    checks = [*CHECKS[:3], {"metric": "latency", "compare": "stable", "tolerance": tolerance}]
    rollout = spec(checks=checks, guard={"error_rate": 0.05})
    direct = Evidence(rollout, path_class_slots=3)
    made = Evidence(rollout, path_class_slots=3)
    for e in (direct, made):
        e.start()
    rng = random.Random(seed)
    windows = Windows(path_classes=4)
    last = T0 - 1.0
    for second in range(200):
        weight = (0.05, 0.1, 0.25, 0.5)[second // 50]
        _feed(windows, rng, second, weight)
        now = T0 + second + 1
        feed, end = window_feed(windows, "r", last, now, judge_synthetic=judge)
        samples = list(feed)
        if isinstance(feed, BucketFeed):
            feed = BucketFeed(feed.buckets, judge)
        tests = second % 17 != 0  # now and then a tick that only grows stable's history
        direct.fold(now, feed, tests=tests)
        made.fold(now, samples, tests=tests)
        assert _encode_evidence(direct) == _encode_evidence(made)
        assert direct.evaluate(now) == made.evaluate(now)
        if end is not None:
            last = max(last, end)
    assert direct.thresholds  # stable's quantiles were in use
