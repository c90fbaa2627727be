"""The threshold checks of one tick, judged only when someone reads them (pure).

A threshold check (error rate, a latency quantile, the request rate over the step's window) is
decided on only once the step's window is long and large enough (`Evidence.window_outcome`):
until then, its result is shown (status, events, saved state) but decides nothing. With a
thousand routes each waiting out its ``interval``, computing every result every second was
about a sixth of the tick, for results that no one read before the next tick replaced them.

`DeferredThresholds` keeps what the results are made of, as `Evidence.evaluate` saw it, and
makes them on the first read: the window's counts and start, the failed windows so far (the
α of this window), the spec's α and checks, and the window's latency histogram. Every value
but the histogram is copied at once (the window is changed in place by later ticks); the
histogram is copied only if the window is about to change while the results are still unmade
(`detach`, from `Evidence.fold` and before the next `Evidence.evaluate_deferred`), so a result
made late is the one made on time, bit for bit.

*An evaluation that stands.* A route whose evaluation's inputs did not change since its last
one (no candidate request in the window, no new event for the comparisons, no request for the
guard: nearly every tick of a quiet route) keeps it: `Evidence.evaluate_deferred` hands out the
same `DeferredThresholds`, which carries the other results beside it (``rest``) and what both
were made of (``stamp``), read in place again (`reattach`; its window is the same, unchanged).
It is then the latest evaluation, and `detach` treats it so: a holder of an older evaluation
that is this same object reads what the latest one reads (refused once stale, as it is).

`Checks` is what `Analyzer.checks` reads: the deferred thresholds joined with the tick's other
results (the comparisons, the guard, external and shadow checks, made on time as before) on
the first read. The anytime decisions (`Analyzer._judge`) read the others only; the step
window's outcome reads them all, but only once the window is long and large enough.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from splitproxy.config import LATENCY_QUANTILES, MetricCheck
from splitproxy.rollout.histograms import hist_above, hist_quantile_from
from splitproxy.rollout.messages import (
    CheckKind,
    CheckResult,
    Unit,
    bounded_verdict,
    metric_unit,
)
from splitproxy.rollout.results import Judged, LazyResult, StaleResult
from splitproxy.rollout.results import made as made_now
from splitproxy.rollout.thresholds import shown_above, window_alpha

if TYPE_CHECKING:
    from splitproxy.rollout.evidence import StepWindow


# the histogram of a window that changed with no copy kept (`DeferredThresholds.detach`)
_STALE: dict[float, int] = {}


class DeferredThresholds:
    """The threshold checks' results at one tick, made on the first `results` (see above)."""

    __slots__ = (
        "_alpha",
        "_errors",
        "_judged",
        "_latency",
        "_needs_latency",
        "_now",
        "_requests",
        "_results",
        "_start",
        "_unshown",
        "_window",
        "checks",
        "rest",
        "stamp",
        "timed",
    )

    def __init__(
        self,
        now: float,
        window: StepWindow,
        checks: Sequence[MetricCheck],
        alpha: float,
        judged: int,
        needs_latency: bool | None = None,
    ) -> None:
        self._now = now
        self._window: StepWindow | None = window  # its histogram is read in place until `detach`
        self._latency: dict[float, int] | None = None
        self._requests, self._errors, self._start = window.requests, window.errors, window.start
        # the checks judged (read: `Evidence.evaluate_deferred` tells a new spec's by identity)
        self.checks: tuple[MetricCheck, ...] = (
            checks if isinstance(checks, tuple) else tuple(checks)
        )
        if needs_latency is None:  # (``needs_latency``: the same, known to the caller)
            needs_latency = any(c.metric in LATENCY_QUANTILES for c in self.checks)
        self._needs_latency = needs_latency
        self._alpha = alpha
        self._judged = judged
        self._results: tuple[CheckResult, ...] | None = None
        # made with the first check over its line but not shown (a set per route per tick,
        # kept for a tick, was a young container for the collector to walk)
        self._unshown: set[str] | None = None
        # the evaluation this belongs to (`Evidence.evaluate_deferred`): the other results, what
        # all were made of (None: not to be kept), whether a check reads ``now``
        self.rest: tuple[CheckResult | LazyResult, ...] = ()
        self.stamp: tuple[object, ...] | None = None
        self.timed = False

    @property
    def pending(self) -> bool:
        """Not made yet."""
        return self._results is None

    def detach(self, keep: bool = True) -> None:
        """The window is about to change: keep a copy of its histogram if still needed.
        ``keep`` false: no one reads these results any more (`Evidence.fold` with no reader
        after it), so none is kept; a latency check read all the same refuses
        (`results.StaleResult`) rather than show another tick's numbers."""
        window = self._window
        if window is not None and self._results is None:
            if not self._needs_latency:
                self._latency = None
            elif keep:
                self._latency = dict(window.latency)
            else:
                self._latency = _STALE
            self._window = None

    def reattach(self, window: StepWindow) -> None:
        """These results stand for another evaluation of ``window``, unchanged since they were
        made (`Evidence.evaluate_deferred`): read it in place again, if still unmade."""
        if self._results is None:
            self._window, self._latency = window, None

    def results(self) -> tuple[CheckResult, ...]:
        """Each threshold check's result, in the spec's order (made once)."""
        results = self._results
        if results is None:
            results = self._results = tuple(self._check(c) for c in self.checks)
            self._window = self._latency = None  # nothing more to read
        return results

    def unshown(self) -> set[str]:
        """The checks over their line but not shown to be yet: the window holds on."""
        self.results()
        return self._unshown if self._unshown is not None else set()

    def _histogram(self) -> tuple[dict[float, int], list[float]]:
        window = self._window
        if window is not None:
            return window.latency, window.latency_bounds()
        latency = self._latency if self._latency is not None else {}
        if latency is _STALE:
            raise StaleResult("the step window's histogram changed, unkept")
        return latency, sorted(latency, reverse=True)

    def _check(self, check: MetricCheck) -> CheckResult:
        """The measured value, failed only when the window's counts show it on the wrong
        side of the line at this window's α (`splitproxy.rollout.thresholds`)."""
        requests, errors, now = self._requests, self._errors, self._now
        value: float | None = None
        sample = requests
        # (hits, share the line allows) per side: the side fails when hits exceed the share;
        # counted only for a value over a line (most ticks pass: no need to count)
        sides: list[tuple[int, float]] = []
        low, high = check.min, check.max
        metric = check.metric
        quantile = LATENCY_QUANTILES.get(metric)
        latency: dict[float, int] = {}
        if metric in ("error_rate", "success_rate") and requests:
            value = errors / requests
            if metric == "success_rate":
                value = 1 - value
        elif metric == "request_rate" and now > self._start:
            value = requests / (now - self._start)
        elif quantile is not None:  # = hist_quantile(latency, quantile), the bounds kept
            latency, bounds = self._histogram()
            sample = sum(latency.values())
            if sample > 0:
                value = hist_quantile_from(latency, bounds, sample, quantile)
        result = bounded(
            check.key, "threshold", value, low, high, sample,
            metric=metric, unit=metric_unit(metric),
        )  # fmt: skip
        if result.verdict != "fail":
            return result
        if metric in ("error_rate", "success_rate") and requests:
            n, x = requests, errors
            if metric == "success_rate":
                x = n - x
            if high is not None:
                sides.append((x, high))
            if low is not None:
                sides.append((n - x, 1 - low))
        elif quantile is not None:
            if high is not None:
                sides.append((hist_above(latency.items(), high), 1 - quantile))
            if low is not None:
                sides.append((sample - hist_above(latency.items(), low), quantile))
        if not sides:
            return result
        level = window_alpha(self._alpha, self._judged + 1, len(self.checks))
        e = max(shown_above(x, sample, share, level)[1] for x, share in sides)
        if e >= 1 / level:
            return result._replace(detail=f"shown: e={e:.3g} >= {1 / level:.3g}")
        if self._unshown is None:
            self._unshown = set()
        self._unshown.add(check.key)  # the window holds on for more requests
        detail = f"over the line, not shown yet: e={e:.3g} < {1 / level:.3g}"
        return result._replace(verdict="pass", detail=detail)


class Checks:
    """`Analyzer.checks`: a tuple set by hand, or, after a tick, the threshold checks'
    `DeferredThresholds` and the other results (the comparisons' and the guard's numbers made
    when read, `results`), joined on the first read. Iterating it reads it; the step window's
    outcome reads `judged` (only past the window's length and size)."""

    # the tick's pending results in two slots rather than a pair: one tuple fewer per route
    # and tick, kept for a tick (the young collector walks what outlives the tick)
    __slots__ = ("_made", "_rest", "_thresholds")

    def __init__(self) -> None:
        self._made: tuple[CheckResult, ...] | None = ()
        self._thresholds: DeferredThresholds | None = None  # pending while not None
        self._rest: tuple[CheckResult | LazyResult, ...] = ()

    def get(self) -> tuple[CheckResult, ...]:
        made = self._made
        if made is None:
            thresholds = self._thresholds
            assert thresholds is not None
            made = self._made = thresholds.results() + tuple([made_now(r) for r in self._rest])
            self._thresholds, self._rest = None, ()
        return made

    def set(self, value: tuple[CheckResult, ...]) -> None:
        self._made, self._thresholds, self._rest = value, None, ()

    def append(self, result: CheckResult) -> None:
        """One more result after the others (the candidate's health), nothing made for it."""
        if self._thresholds is None:
            self.set((*self.get(), result))
        else:
            self._rest = (*self._rest, result)

    def defer(
        self,
        thresholds: DeferredThresholds,
        rest: tuple[CheckResult | LazyResult, ...],
        *,
        eager: bool,
    ) -> None:
        """The tick's results: ``thresholds`` first, then ``rest`` (made now if ``eager``)."""
        self._made, self._thresholds, self._rest = None, thresholds, rest
        if eager:
            self.get()

    def anytime(self) -> Sequence[Judged]:
        """The results the anytime decisions read: all but the threshold checks' while those
        are unmade (none of them is a comparison; one named like the guard is made at once),
        the comparisons and the guard by their verdicts alone."""
        return self._rest if self._thresholds is not None else self.get()

    def judged(self) -> Iterator[Judged]:
        """What the step window's outcome reads: the threshold checks' results, then the
        others, the comparisons and the guard by their verdicts alone (it judges the
        threshold and external checks only). A generator: nothing is made, not even the
        threshold checks' results, unless the outcome gets as far as reading them (a window
        long and large enough); it reads the results as they are then."""
        thresholds = self._thresholds
        if thresholds is None:
            yield from self.get()
            return
        rest = self._rest
        yield from thresholds.results()
        yield from rest

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.get())


def bounded(
    name: str,
    kind: CheckKind,
    value: float | None,
    low: float | None,
    high: float | None,
    sample: int,
    *,
    metric: str | None = None,
    unit: Unit | None = None,
) -> CheckResult:
    """A result that fails when ``value`` lies outside ``[low, high]`` (no value: no data)."""
    verdict = bounded_verdict(value, low, high)
    return CheckResult(name, kind, value, low, high, sample, verdict, metric=metric, unit=unit)
