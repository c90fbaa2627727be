"""A closed bucket is kept as a sealed copy whose counters are tuples (`windows._OpenBucket.
sealed`: the collector stops tracking them, where it tracks lists for ever) and reads as
before: for any traffic (path classes,
sticky users with errors, synthetic requests, probability changes, the clock going back, a
small ring that drops buckets), a window whose buckets are sealed answers every read (the
`Period`s, the totals, the samples, the tick's tally) as one whose buckets never are."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.samples import window_feed, window_samples
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.tally import tally
from splitproxy.rollout.windows import Windows, _Bucket, _OpenBucket
from tests.unit.rollout.drive import spec

PATHS = ["/api/users/7", "/api/orders", "/static/x.js", "/", "/a/b", None]
REQUEST = st.tuples(
    st.floats(-1.0, 6.0),  # seconds after the start (now and then the clock goes back)
    st.sampled_from([STABLE, CANDIDATE]),
    st.none() | st.floats(0.0001, 5.0),  # latency
    st.booleans(),  # error
    st.sampled_from([0.05, 0.05, 0.5, None]),
    st.sampled_from(PATHS),
    st.booleans(),  # synthetic
    st.none() | st.integers(0, 6),  # sticky user
)
T0 = 1_700_000_000.0
Request = tuple[float, str, float | None, bool, float | None, str | None, bool, int | None]


def _feed(requests: list[Request]) -> Windows:
    windows = Windows(capacity=4, path_classes=3)
    window = windows.window("r")
    for at, version, latency, error, p, path, synthetic, unit in requests:
        window.observe(
            T0 + at,
            STABLE if version == STABLE else CANDIDATE,
            latency,
            error,
            p,
            path,
            "/",
            synthetic=synthetic,
            unit=unit,
        )
    return windows


def _plain(x: Any) -> Any:
    """``x`` with its sketches (which compare by identity) as their contents."""
    if isinstance(x, LatencySketch):
        return ("sketch", sorted(x.bins.items()), x.count, x.total)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, *[_plain(getattr(x, f.name)) for f in dataclasses.fields(x)])
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _reads(windows: Windows, judge: bool) -> Any:
    window = windows.get("r")
    assert window is not None
    out: list[Any] = [window.observations(0.0), window.totals(0.0)]
    out.append(window_samples(windows, "r", 0.0, T0 + 8, judge_synthetic=judge))
    e = Evidence(spec(), path_class_slots=3)
    feed, _ = window_feed(windows, "r", 0.0, T0 + 8, judge_synthetic=judge)
    sums = tally(e, T0 + 8, feed, True, ((0.95, 0.01), (0.99, 0.5)))
    out.append(list(sums))
    out.append((e.window.requests, e.window.errors, e.window.latency))
    out.append((e.trail_total, e.trail, e.recent))  # stable's latency, added as it is read
    return _plain(out)


@settings(max_examples=200, deadline=None)
@given(st.lists(REQUEST, max_size=60), st.booleans())
def test_sealed_buckets_read_as_open_ones(requests: list[Request], judge: bool) -> None:
    sealed = _feed(requests)
    with mock.patch.object(_OpenBucket, "sealed", autospec=True, side_effect=lambda b: b):
        never = _feed(requests)  # every bucket kept open
    assert _reads(sealed, judge) == _reads(never, judge)
    window = sealed.get("r")
    if window is None:
        return
    buckets = window.buckets(0.0)
    gc.collect(0)  # the collector's first look at the tuples
    for b in buckets[:-1]:  # closed: sealed, untracked
        assert type(b) is _Bucket
        assert not any(gc.is_tracked(c) for c in (b.requests, b.errors, b.class_requests))
    if buckets:  # the newest is still written to
        assert type(buckets[-1]) is _OpenBucket
