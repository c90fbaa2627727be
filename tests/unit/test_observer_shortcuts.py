"""The per-request shortcuts of the access log, the recorder and the live windows, each pitted
against the full computation it stands for: the same lines byte for byte, the same counters,
the same path classes and buckets."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy import logs
from splitproxy.dataplane.exchange import Exchange
from splitproxy.logs import AccessLog, Observers
from splitproxy.metrics import LATENCY_BUCKETS, Histogram, Recorder, _probability
from splitproxy.rollout import windows
from splitproxy.rollout.windows import PathClasses, Window, Windows
from tests.unit.fakes import exchange, runtime_state
from tests.unit.test_access_log_batches import (
    STATE,
    Clock,
    Sink,
    exchanges,
    reference_json,
    reference_text,
    times,
)


# -- the access log ------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(exchanges(), times)
def test_log_keeps_the_row_capture_makes(ex: Exchange, now: float) -> None:
    """`log` builds its row inline: the row `_capture` (what `line` formats) makes."""
    log = AccessLog("text", Sink(), clock=lambda: now)  # type: ignore[arg-type]
    log._pending.append(log._capture(ex))  # a pass already under way: nothing is scheduled
    log.log(ex)
    assert log._pending == [log._capture(ex)] * 2


targets = st.one_of(
    st.sampled_from([b"/", b"/1k", b"/cart?id=1", b'/a"b', b"/\xe9t\xe9", b"/sp ace"]),
    st.binary(max_size=300).map(lambda b: b"/" + b),  # past the cache's longest target too
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(exchanges(), targets, times), min_size=1, max_size=30),
    st.sampled_from(["text", "json"]),
    st.integers(1, 8),
)
def test_lines_with_targets_seen_before_are_the_reference_byte_for_byte(
    batch: list[tuple[Exchange, bytes, float]], log_format: str, per_flush: int
) -> None:
    """The target caches (text: escaped; JSON: quoted) give what formatting anew gives, over
    several flushes, with targets repeated, escaped, long and short, and caches that start
    over when full."""
    sink = Sink()
    log = AccessLog(log_format, sink, clock=Clock([now for _, _, now in batch]))  # type: ignore[arg-type]
    lines = []
    reference = reference_json if log_format == "json" else reference_text
    for i, (ex, target, now) in enumerate(batch):
        ex.target = target
        log._pending.append(log._capture(ex))
        lines.append(reference(ex, now) + "\n")
        if (i + 1) % per_flush == 0:
            log.flush()
    log.flush()
    assert sink.text == "".join(lines)


def test_the_target_caches_start_over_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_REMEMBER", 4)
    for log_format in ("text", "json"):
        sink = Sink()
        log = AccessLog(log_format, sink, clock=lambda: 1_700_000_000.5)  # type: ignore[arg-type]
        ex = exchange(STATE)
        for n in range(10):
            ex.target = b"/p%d" % (n % 6)
            log._pending.append(log._capture(ex))
            log.flush()
        kept = log._json_targets if log_format == "json" else log._targets
        assert 0 < len(kept) <= 4
        assert sink.text.count("\n") == 10


class Calls:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def exchange_started(self, ex: Exchange) -> None:
        self.calls.append("started")

    def exchange_finished(self, ex: Exchange) -> None:
        self.calls.append("finished")

    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None:
        self.calls.append(f"failed {version} {kind}")


def test_observers_hand_the_recorder_its_own_verbs() -> None:
    recorder = Calls()
    observers = Observers(recorder, None)
    ex = exchange(STATE)
    observers.exchange_started(ex)
    observers.attempt_failed(ex, "candidate", "reset")
    observers.exchange_finished(ex)
    assert recorder.calls == ["started", "failed candidate reset", "finished"]


# -- the recorder ------------------------------------------------------------------------------
latencies = st.one_of(
    st.sampled_from([*LATENCY_BUCKETS, 0.0]),
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            latencies,
            latencies,
            st.sampled_from([101, 200, 404, 500, 503]),
            st.sampled_from(["weight", "sticky", "override", "retry", "fallback"]),
            st.sampled_from(["stable", "candidate"]),
            st.booleans(),
            st.sampled_from(["", "connect", "client_closed"]),
        ),
        max_size=40,
    )
)
def test_the_recorders_inlined_histograms_and_probability_match_the_full_ones(
    requests: list[tuple[float, float, int, str, str, bool, str]],
) -> None:
    """`exchange_finished` updates the histograms and passes the window the probability
    inline: the same as `Histogram.observe` and `_probability` over any requests."""
    seen: list[float | None] = []

    class Spy(Window):
        __slots__ = ()

        def observe(self, *args: Any, **kwargs: Any) -> None:
            seen.append(args[4])
            super().observe(*args, **kwargs)

    class SpyWindows(Windows):
        def window(self, route: str) -> Window:
            return self._windows.setdefault(route, Spy())

    state = runtime_state()
    recorder = Recorder(state, clock=lambda: 1_700_000_000.0, windows=SpyWindows())
    state.subscribe(recorder.on_swap)
    durations, ttfbs = Histogram(), Histogram()
    expected: list[float | None] = []
    for duration, ttfb, status, reason, version, synthetic, error in requests:
        ex = exchange(state, "shop", version, reason, status=status, duration=duration,
                      ttfb=ttfb, error_kind=error, synthetic=synthetic)  # fmt: skip
        recorder.exchange_started(ex)
        recorder.exchange_finished(ex)
        route, decision = ex.route, ex.decision
        assert route is not None
        assert decision is not None
        if reason != "retry":
            expected.append(_probability(route, decision))
        if version == "stable" and not synthetic:
            if status != 101:
                durations.observe(duration)
            if ttfb:
                ttfbs.observe(ttfb)
    series = recorder._series[("shop", "stable")]
    assert series.durations.counts == durations.counts
    assert series.durations.sum == durations.sum
    assert series.ttfbs.counts == ttfbs.counts
    assert series.ttfbs.sum == ttfbs.sum
    assert seen == expected


def test_histogram_observe_is_the_first_bucket_at_or_above() -> None:
    h = Histogram()
    for value in (*LATENCY_BUCKETS, 0.0, 1e9):
        h.observe(value)
    assert h.counts[bisect_left(LATENCY_BUCKETS, 0.005)] == 2  # 0.005 itself and 0.0


# -- the live windows' path classes -----------------------------------------------------------
segments = st.one_of(
    st.sampled_from(["api", "users", "", "v1", "x" * 40, "2024-01-01", "ab12", "a.b", "%20"]),
    st.text(alphabet="abc123-_./", max_size=8),
)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
prefixes = st.sampled_from(["/", "/api", "/api/", "/api/users", ""])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(paths, prefixes), max_size=60),
    st.integers(0, 9),
    st.integers(1, 6),
    st.integers(1, 20),
)
def test_classify_with_its_path_cache_is_classify_in_full(
    asked: list[tuple[str, str]], limit: int, cache: int, longest: int
) -> None:
    """Over any paths and prefixes (prefix objects changing as at a swap), with caches of
    any size and any longest path kept: the same classes, given in the same order."""
    mp = pytest.MonkeyPatch()
    mp.setattr(windows, "SEEN_PATHS", cache)
    mp.setattr(windows, "SEEN_PATH_CHARS", longest)
    try:
        cached, full = PathClasses(limit), PathClasses(limit)
        for path, prefix in asked:
            fresh = "".join(prefix)  # an equal prefix, a new object: the cache starts over
            for p in (prefix, fresh):
                assert cached.classify(path, p) == _classify_in_full(full, path, p)
            assert len(cached._seen) <= cache
        assert cached.names == full.names
    finally:
        mp.undo()


def _classify_in_full(classes: PathClasses, path: str, prefix: str) -> int:
    """`classify` without its path cache (the computation as it was)."""
    classes._prefix = prefix
    classes._base = prefix.rstrip("/")
    classes._depth = classes._base.count("/") + 1
    return classes._classify(path)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(paths, st.booleans(), st.sampled_from(["stable", "candidate"]))))
def test_a_windows_buckets_are_those_of_classify_in_full(
    requests: list[tuple[str, bool, str]],
) -> None:
    """`Window.observe` looks a path seen before up itself: the buckets' class counts are
    those the full classification gives."""
    window, classes = Window(), PathClasses()
    expected: dict[str, int] = {}
    for i, (path, error, version) in enumerate(requests):
        window.observe(100.0 + i / 1000, version, 0.01, error, 0.5, path, "/")  # type: ignore[arg-type]
        name = classes.names[_classify_in_full(classes, path, "/")]
        key = f"{name} {version} {error}"
        expected[key] = expected.get(key, 0) + 1
    got: dict[str, int] = {}
    for period in window.observations(0.0):
        for counts in period.path_classes:
            for version in ("stable", "candidate"):
                requests_, errors = counts.counts(version)  # type: ignore[arg-type]
                for flag, n in ((True, errors), (False, requests_ - errors)):
                    if n:
                        key = f"{counts.name} {version} {flag}"
                        got[key] = got.get(key, 0) + n
    assert got == expected
    assert window.classes.names == classes.names


def test_a_long_path_is_classified_but_not_kept() -> None:
    classes = PathClasses()
    long_path = "/api/" + "x" * windows.SEEN_PATH_CHARS
    assert classes.classify(long_path, "/") == 1
    assert long_path not in classes._seen
    assert classes.classify("/api", "/") == 1
    assert "/api" in classes._seen
