"""`Recorder.exchange_finished` takes the series `exchange_started` found from the exchange
(`Exchange.observed`) instead of looking it up again: the same counters, histograms and window
observations as the look-up, over any exchanges (replayed on stable since they started,
preview, synthetic, never routed, finished without a start)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.routing import retry_decision
from splitproxy.metrics import Recorder
from splitproxy.rollout.windows import Window, Windows
from tests.unit.fakes import exchange, runtime_state

requests = st.lists(
    st.tuples(
        st.sampled_from(["shop", "static", None]),
        st.sampled_from(["stable", "candidate"]),
        st.sampled_from(["weight", "sticky", "override", "fallback"]),
        st.sampled_from([200, 404, 500, 503, 101]),
        st.sampled_from(["plain", "replayed", "preview", "synthetic", "unrouted", "unstarted"]),
        st.sampled_from(["", "connect", "reset", "client_closed"]),
    ),
    max_size=40,
)


def run(
    script: list[tuple[str | None, str, str, int, str, str]], look_up: bool
) -> tuple[object, ...]:
    """The recorder's state after ``script``; ``look_up``: the finish finds the series afresh
    (as it did before the exchange kept it)."""
    seen: list[tuple[Any, ...]] = []

    class Spy(Window):
        __slots__ = ()

        def observe(self, *args: Any, **kwargs: Any) -> None:
            seen.append(args[1:])
            super().observe(*args, **kwargs)

    class SpyWindows(Windows):
        def window(self, route: str) -> Window:
            return self._windows.setdefault(route, Spy())

    state = runtime_state()
    recorder = Recorder(state, clock=lambda: 1_700_000_000.0, windows=SpyWindows())
    state.subscribe(recorder.on_swap)
    for route, version, reason, status, kind, error in script:
        if route == "static":
            version = "stable"
        ex: Exchange = exchange(
            state, route, version, reason, status=status, error_kind=error,
            routed=kind != "unrouted", preview=kind == "preview", synthetic=kind == "synthetic",
        )  # fmt: skip
        if kind != "unstarted":
            recorder.exchange_started(ex)
        if kind == "replayed":  # the candidate failed; stable answers (`replay.retarget`)
            recorder.attempt_failed(ex, ex.version, "reset")  # type: ignore[arg-type]
            ex.decision = retry_decision()
            ex.version = ex.decision.version
        if look_up:
            ex.observed = None
        recorder.exchange_finished(ex)
    series = {
        key: (
            s.started, s.finished, s.codes, s.synthetic, s.preview, s.reasons, s.errors,
            s.durations.counts, s.durations.sum, s.ttfbs.counts, s.ttfbs.sum,
        )
        for key, s in recorder._series.items()
    }  # fmt: skip
    return series, seen


@settings(max_examples=300, deadline=None)
@given(requests)
def test_the_series_kept_by_the_exchange_is_the_one_looked_up(
    script: list[tuple[str | None, str, str, int, str, str]],
) -> None:
    assert run(script, look_up=False) == run(script, look_up=True)


def test_a_started_exchange_keeps_its_series() -> None:
    state = runtime_state()
    recorder = Recorder(state, clock=lambda: 1_700_000_000.0)
    state.subscribe(recorder.on_swap)
    ex = exchange(state, "shop", "candidate", "weight")
    recorder.exchange_started(ex)
    assert ex.observed is recorder._series[("shop", "candidate")]
