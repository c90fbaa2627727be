"""The recorder's raw-until-read counting (``metrics_series.py``) pitted against counting each
exchange at once: the same /metrics exposition, the same counters and the same window contents
(buckets, sketches, counts), for any exchanges, read at any time."""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.routing import BUCKETS as WEIGHT_BUCKETS
from splitproxy.dataplane.routing import retry_decision
from splitproxy.metrics import UPSTREAM_ERROR_KINDS, Recorder, _Collector
from splitproxy.metrics_series import FOLD_AT, Histogram, sequential_sum
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import Windows
from tests.unit.fakes import exchange, runtime_state

T0 = 1_700_000_000.0
# durations at and around the histograms' bounds and the sketch's clamps, zero, huge, ints
EDGES = [0, 1, 0.0, 1e-9, 1e-6, 0.0049, 0.005, 0.0051, 0.3, 10.0, 30.0, 30.000001, 1e5, 1e9]
durations = st.one_of(st.sampled_from(EDGES), st.floats(0.0, 1e7, allow_nan=False))
values = st.one_of(
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
