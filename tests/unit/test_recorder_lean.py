"""The recorder's raw-until-read counting and the live windows' batched latencies, pitted
against counting each exchange at once: the same /metrics exposition, the same counters and
the same window contents (buckets, sketches, counts), for any exchanges, read at any time."""

from __future__ import annotations

import dataclasses
import math
import struct
from bisect import bisect_right
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.routing import BUCKETS as WEIGHT_BUCKETS
from splitproxy.dataplane.routing import retry_decision
from splitproxy.metrics import UPSTREAM_ERROR_KINDS, Recorder, _Collector
from splitproxy.metrics_series import FOLD_AT, Histogram
from splitproxy.rollout import sketch, windows
from splitproxy.rollout.sketch import LatencySketch, sequential_sum
from splitproxy.rollout.windows import Windows
from tests.unit.fakes import exchange, runtime_state

T0 = 1_700_000_000.0
# durations at and around the histograms' bounds and the sketch's clamps, zero, huge, ints
EDGES = [0, 1, 0.0, 1e-9, 1e-6, 0.0049, 0.005, 0.0051, 0.3, 10.0, 30.0, 30.000001, 1e5, 1e9]
durations = st.one_of(st.sampled_from(EDGES), st.floats(0.0, 1e7, allow_nan=False))
tracked = st.floats(1e-6, 1e5, exclude_min=True, exclude_max=True)  # no clamping: the fast path
values = st.one_of(
    tracked,
    durations,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1e308]),
)


def _bits(x: float) -> bytes:
    """``x`` bit for bit; every NaN alike (inf - inf has no defined sign, nor does the NaN a
    sum of NaNs gives: which operand's NaN comes out is the compiler's choice)."""
    return b"nan" if math.isnan(x) else struct.pack("<d", x)


class Reference(Recorder):
    """The recorder as it was before the raw lists: every exchange counted at once, its
    latencies observed one at a time (main at 7667b57, the same statements)."""

    def exchange_started(self, ex: Exchange) -> None:
        route = ex.route
        decision = ex.decision
        if route is None or decision is None:
            return
        key = (route.name, ex.version)
        series = ex.observed = self._series.get(key) or self._get(*key)
        series._started += 1
        reasons = series._reasons
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
        if route.ab is not None:
            self.ab.exposed(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        route, decision, status = ex.route, ex.decision, ex.status
        if route is None or decision is None:
            series = self._get(route.name if route is not None else "", "")
            codes = series.preview if ex.preview else series._codes
            codes[status] = codes.get(status, 0) + 1
            return
        name = route.name
        if (series := ex.observed) is None or series.version != ex.version:
            series = self._series.get((name, ex.version)) or self._get(name, ex.version)
        if ex.preview:
            self._preview_finished(series, ex)
            return
        synthetic = ex.synthetic
        codes = series.synthetic if synthetic else series._codes
        codes[status] = codes.get(status, 0) + 1
        reason = decision.reason
        retried = reason == "retry"
        if retried:
            self._get(name, "candidate")._finished += 1
            series._reasons["retry"] = series._reasons.get("retry", 0) + 1
        else:
            series._finished += 1
        latency: float | None = None
        if status != 101:
            latency = ex.duration
            if not synthetic:
                series._durations.observe(latency)
        ttfb = ex.ttfb
        if ttfb and not synthetic:
            series._ttfbs.observe(ttfb)
        kind = ex.error_kind
        upstream_error = kind in UPSTREAM_ERROR_KINDS
        if upstream_error:
            series.errors[kind] = series.errors.get(kind, 0) + 1
        window, version = series.window, series.version
        if window is not None and version is not None and not retried:
            window.observe(
                self.clock(), version, latency, status >= 500 or upstream_error,
                route.weight_bp / WEIGHT_BUCKETS if reason in ("weight", "sticky") else None,
                ex.path, route.path_prefix, synthetic, decision.unit,
            )  # fmt: skip


def _plain(x: Any) -> Any:
    """``x`` with its sketches (which compare by identity) as their contents."""
    if isinstance(x, LatencySketch):
        return ("sketch", sorted(x.bins.items()), x.count, _bits(x.total))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, *[_plain(getattr(x, f.name)) for f in dataclasses.fields(x)])
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _exposition(recorder: Recorder) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Collector(recorder))
    return generate_latest(registry)


def _state(recorder: Recorder) -> Any:
    out: dict[Any, Any] = {}
    for key, s in sorted(recorder._series.items()):
        out[key] = (
            s.started, s.finished, s.in_flight, s.codes, s.synthetic, s.preview, s.reasons,
            s.errors, s.durations.counts, _bits(s.durations.sum), s.ttfbs.counts,
            _bits(s.ttfbs.sum),
        )  # fmt: skip
    for name in ("shop", "static"):
        out[name] = _plain(recorder.observations(name, 0.0))
    return out


steps = st.lists(
    st.tuples(
        st.sampled_from(["shop", "static", None]),
        st.sampled_from(["stable", "candidate"]),
        st.sampled_from(["weight", "sticky", "override", "fallback"]),
        st.sampled_from([200, 404, 500, 503, 101]),
        st.sampled_from(["plain"] * 6 + ["replayed", "preview", "synthetic", "unrouted"]),
        st.sampled_from(["", "", "connect", "reset", "client_closed"]),
        durations,
        st.one_of(st.just(0.0), durations),  # time to first byte (0: none)
        st.floats(0.0, 1.5),  # seconds since the previous exchange
        st.booleans(),  # read (scrape) the lean recorder after this exchange
        st.booleans(),  # started (a request rejected before the start is finished only)
    ),
    max_size=3 * FOLD_AT,  # several folds of the raw lists
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_lean_recorder_exposes_what_counting_each_exchange_at_once_does(
    script: list[tuple[Any, ...]],
) -> None:
    now = [T0]
    recorders: list[Recorder] = []
    for cls in (Recorder, Reference):
        state = runtime_state()
        recorder = cls(state, clock=lambda: now[0], windows=Windows(capacity=8))
        state.subscribe(recorder.on_swap)
        recorders.append(recorder)
    lean, reference = recorders
    for route, version, reason, status, kind, error, took, ttfb, gap, read, starts in script:
        now[0] += gap
        if route == "static":
            version = "stable"
        for recorder in recorders:
            ex = exchange(
                recorder.state, route, version, reason, status=status, error_kind=error,
                duration=took, ttfb=ttfb, routed=kind != "unrouted",
                preview=kind == "preview", synthetic=kind == "synthetic",
            )  # fmt: skip
            if ex.decision is not None and reason == "sticky":
                ex.decision = dataclasses.replace(ex.decision, unit=hash((version, gap)) & 7)
            ex.path = "/api/users/7" if gap < 0.7 else "/static/x.js"
            if starts:
                recorder.exchange_started(ex)
            if kind == "replayed":
                recorder.attempt_failed(ex, ex.version, "reset")  # type: ignore[arg-type]
                ex.decision = retry_decision()
                ex.version = ex.decision.version
            recorder.exchange_finished(ex)
        if read:
            assert lean.in_flight("shop", "candidate") >= -len(script)
            _exposition(lean)
    assert _exposition(lean) == _exposition(reference)
    assert _state(lean) == _state(reference)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(tracked, max_size=80), st.lists(values, max_size=80)))
def test_add_all_is_add_one_at_a_time(batch: list[float]) -> None:
    one, many = LatencySketch(), LatencySketch()
    one.add(0.25)
    many.add(0.25)
    for value in batch:
        one.add(value)
    many.add_all(list(batch))
    assert many.bins == one.bins
    assert many.count == one.count
    assert _bits(many.total) == _bits(one.total)


def test_the_bin_starts_are_the_keys_of_add_around_every_edge() -> None:
    """``_MIN_KEY + bisect_right(_STARTS, v)`` is `add`'s bin for the 129 floats around each
    bin's edge (where the logarithm's rounding decides) and for the clamped values."""
    checked = [0.0, -1.0, 5e-324, sketch.MIN_LATENCY, sketch.MAX_LATENCY, math.inf, -math.inf]
    for start in sketch._STARTS:
        value = start
        for _ in range(64):
            value = math.nextafter(value, 0.0)
        for _ in range(129):
            checked.append(value)
            value = math.nextafter(value, math.inf)
    for value in checked:
        assert sketch._MIN_KEY + bisect_right(sketch._STARTS, value) == sketch._add_key(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=80), st.floats(allow_nan=False))
def test_sequential_sum_adds_one_at_a_time(batch: list[float], start: float) -> None:
    total = start
    for value in batch:
        total += value
    assert _bits(sequential_sum(batch, start)) == _bits(total)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(values, min_size=1, max_size=40), max_size=5))
def test_histogram_fold_is_observe_one_at_a_time(batches: list[list[float]]) -> None:
    one, folded = Histogram(), Histogram()
    for batch in batches:
        for value in batch:
            one.observe(value)
        folded.fold(list(batch))
    assert folded.counts == one.counts
    assert _bits(folded.sum) == _bits(one.sum)


observations = st.lists(
    st.tuples(
        st.floats(0.0, 1.2),  # seconds since the previous one (a new bucket now and then)
        st.sampled_from(["stable", "candidate"]),
        st.one_of(st.none(), tracked, tracked, values),
        st.booleans(),  # error
        st.sampled_from([0.5, 0.5, 0.25, None]),
        st.sampled_from(["/api/users/7", "/static/x.js", None]),
        st.booleans(),  # synthetic
        st.one_of(st.none(), st.integers(0, 5)),  # sticky user
        st.booleans(),  # read the window after this one
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(observations)
def test_the_windows_batched_latencies_are_the_sketches_of_each_one_at_once(
    script: list[tuple[Any, ...]],
) -> None:
    def feed(batched: bool) -> Any:
        mp = pytest.MonkeyPatch()
        if not batched:
            mp.setattr(windows, "LATENCY_BATCH", 1)  # each latency into its sketch at once
        try:
            window = Windows(capacity=6).window("r")
            now = T0
            for gap, version, latency, error, p, path, synthetic, unit, read in script:
                now += gap
                window.observe(now, version, latency, error, p, path, "/", synthetic, unit)
                if read and batched:
                    window.totals(0.0)  # reads the open bucket: its latencies go in early
            return _plain([window.observations(0.0), list(window.totals(0.0).values())])
        finally:
            mp.undo()

    assert feed(batched=True) == feed(batched=False)
