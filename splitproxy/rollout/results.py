"""The comparisons' and the guard's results of one tick, their numbers made when read (pure).

The anytime decisions (`Analyzer._judge`) need each comparison's and the guard's verdict
every tick, but not its e-value or its detail text: those are read by the status API, the
ledger, the metrics and saved state, most ticks by no one before the next tick replaces them.
Making them was about a fifth of a late tick (the log-sum-exps of every component of every
test, the debt text's formatting).

A `LazyResult` holds the name, kind and verdict at once and the rest as a snapshot of the
tests (`frozen`), made into the `CheckResult` on the first `LazyResult.result`: the very
result the eager computation makes at the tick, whenever it is read. The verdict comes from
the snapshot's ceiling (`frozen.surely_below`): an e-value surely below its bar passes (or
has no data); one that may reach it is made at once and judged as before.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from typing import Protocol

from splitproxy.rollout.frozen import (
    Frozen,
    FrozenFamily,
    FrozenMixture,
    GuardView,
    family_ceiling,
    freeze,
    guard_ceiling,
    guard_lead_ceiling,
    mixtures_ceiling,
    surely_below,
)
from splitproxy.rollout.messages import CheckKind, CheckResult, Verdict
from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import PathClassTests, RateGuard, mean_log_e


class Judged(Protocol):
    """What the anytime decisions read of a result."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> CheckKind: ...
    @property
    def verdict(self) -> Verdict: ...


class LazyResult:
    """A `CheckResult` whose name, kind and verdict are known now and whose numbers and
    detail are made on the first `result` (then kept). This class holds one made at once;
    the comparisons' and the guard's own kinds below make theirs when read."""

    __slots__ = ("_made", "kind", "name", "verdict")

    def __init__(
        self, name: str, kind: CheckKind, verdict: Verdict, made: CheckResult | None = None
    ) -> None:
        self.name, self.kind, self.verdict, self._made = name, kind, verdict, made

    @classmethod
    def of(cls, result: CheckResult) -> LazyResult:
        """A result made already (its e-value was needed for the verdict)."""
        return cls(result.name, result.kind, result.verdict, result)

    @property
    def pending(self) -> bool:
        """Not made yet."""
        return self._made is None

    def result(self) -> CheckResult:
        made = self._made
        if made is None:
            made = self._made = self._make()
        return made

    def _make(self) -> CheckResult:
        raise AssertionError("a result made at once has nothing left to make")

    def detach(self) -> None:
        """The tests are about to change: a result still unmade keeps a snapshot of them
        (`frozen`), to be made later as it reads now. (`Evidence.fold` calls it before it
        updates or restarts a test: the only places they change.)"""


class StaleResult(AssertionError):
    """A lazy result read after its tests changed without a `LazyResult.detach` first: a
    wrong number would be shown, so nothing is."""


def made(result: CheckResult | LazyResult) -> CheckResult:
    """``result`` as a `CheckResult` (a lazy one made now)."""
    return result.result() if isinstance(result, LazyResult) else result


def latency_detail(thresholds: tuple[tuple[float, float], ...], tolerance: float) -> str:
    """The latency comparison's detail text. Made once per set of stable's quantiles: they
    are bucket bounds and move seldom, while the result is remade on nearly every tick.
    (A zero is made afresh: ``0.0`` and ``-0.0`` are one key to the cache, not one text.)"""
    for q, c in thresholds:
        if c == 0.0 or q == 0.0:
            return _latency_detail.__wrapped__(thresholds, tolerance)
    return _latency_detail(thresholds, tolerance)


@lru_cache(maxsize=256, typed=True)
def _latency_detail(thresholds: tuple[tuple[float, float], ...], tolerance: float) -> str:
    detail = ", ".join(f"stable p{q * 100:g} {c * 1000:.4g}ms" for q, c in thresholds)
    if thresholds and tolerance:
        detail += f", slow beyond +{tolerance * 100:g}%"
    return detail


@lru_cache(maxsize=64, typed=True)
def guard_detail(cap: float) -> str:
    """The guard's detail text, made once per cap (its result is remade on every tick with a
    candidate request)."""
    return f"candidate error rate far above {cap:g}"


# --- the error comparison -----------------------------------------------------------------


def error_result(
    name: str, test: PathClassTests, bar: float, units: int, skipped: int
) -> LazyResult:
    """The error comparison's result: ``test`` against ``bar`` (1/α), ``units`` sticky users
    counted once so far, ``skipped`` errors their full table left out."""
    if not surely_below(family_ceiling(test), bar):
        return LazyResult.of(_error(name, test, bar, units, skipped))
    verdict: Verdict = "pass" if test.pooled.events else "no_data"
    return _LazyError(name, verdict, test, bar, units, skipped)


class _LazyError(LazyResult):
    __slots__ = ("_bar", "_family", "_skipped", "_units", "_version")

    def __init__(
        self, name: str, verdict: Verdict, family: PathClassTests, bar: float, units: int,
        skipped: int,
    ) -> None:  # fmt: skip
        super().__init__(name, "compare", verdict)
        self._family: PathClassTests | FrozenFamily = family
        self._version = family.state_key()
        self._bar, self._units, self._skipped = bar, units, skipped

    def detach(self) -> None:
        family = self._family
        if self._made is None and isinstance(family, PathClassTests):
            self._family = FrozenFamily(family)

    def _make(self) -> CheckResult:
        family = self._family
        if isinstance(family, PathClassTests) and family.state_key() != self._version:
            raise StaleResult(self.name)
        return _error(self.name, family, self._bar, self._units, self._skipped)


def _error(
    name: str, family: PathClassTests | FrozenFamily, bar: float, units: int, skipped: int
) -> CheckResult:
    e = family.e_value
    detail = ""
    worst = family.worst_class()
    if worst is not None:
        detail = f"worst path class {worst[0]}: e={worst[1].e_value:.3g}"
    pooled = family.pooled
    if isinstance(pooled, RecoveringTest | FrozenMixture):  # the debt fresh starts shed
        detail = "; ".join(d for d in (f"pooled {pooled.debt()}", detail) if d)
    if units or skipped:
        detail += f"; sticky users counted once: {units}"
        detail += f" (table full, {skipped} errors left out)" * bool(skipped)
    events = family.pooled.events
    verdict: Verdict = "fail" if e >= bar else ("pass" if events else "no_data")
    return CheckResult(
        name, "compare", e, None, bar, events, verdict, detail, None, "error_rate", "e_value"
    )


# --- the latency comparison ---------------------------------------------------------------


# the latency tests by quantile and stable's quantiles, as the evidence holds them (a result
# keeps the dicts themselves: neither is written in place, see `Evidence._latency_compare`)
# or as a tuple of the tests and one of ``(q, quantile)`` pairs
LatencyTests = Mapping[float, RecoveringTest] | tuple[RecoveringTest, ...]
Thresholds = Mapping[float, float] | tuple[tuple[float, float], ...]


def latency_result(
    name: str, tests: LatencyTests, thresholds: Thresholds, tolerance: float, bar: float
) -> LazyResult:
    """The latency comparison's result: the mean over ``tests`` (one per quantile) against
    ``bar``, with stable's quantiles ``thresholds`` and the check's ``tolerance``."""
    live = tests if isinstance(tests, tuple) else tests.values()  # (`_tests_of`)
    events = 0
    for t in live:
        events += t.events
    if not thresholds and not events:
        verdict: Verdict = "no_data"
    else:
        if not surely_below(mixtures_ceiling(live), bar):
            made = _latency(name, live, events, _pairs(thresholds), tolerance, bar)
            return LazyResult.of(made)
        verdict = "pass" if events else "no_data"
    return _LazyLatency(name, verdict, tests, events, thresholds, tolerance, bar)


def _pairs(thresholds: Thresholds) -> tuple[tuple[float, float], ...]:
    return thresholds if isinstance(thresholds, tuple) else tuple(thresholds.items())


def _tests_of(tests: LatencyTests) -> Collection[RecoveringTest]:
    return tests if isinstance(tests, tuple) else tests.values()


class _LazyLatency(LazyResult):
    __slots__ = ("_bar", "_events", "_frozen", "_tests", "_thresholds", "_tolerance", "_version")

    def __init__(
        self, name: str, verdict: Verdict, tests: LatencyTests, events: int,
        thresholds: Thresholds, tolerance: float, bar: float,
    ) -> None:  # fmt: skip
        # (`LazyResult.__init__` written out: one made on most ticks, kept for a tick)
        self.name, self.kind, self.verdict, self._made = name, "compare", verdict, None
        self._tests = tests  # (the evidence's dicts themselves: no tuple kept for a tick)
        self._version = _changes(tests if isinstance(tests, tuple) else tests.values())
        self._frozen: list[Frozen] | None = None
        self._events, self._thresholds, self._tolerance, self._bar = (
            events, thresholds, tolerance, bar,
        )  # fmt: skip

    def detach(self) -> None:
        if self._made is None and self._frozen is None:
            self._frozen = [freeze(t) for t in _tests_of(self._tests)]

    def _make(self) -> CheckResult:
        tests: Iterable[RecoveringTest | Frozen] | None = self._frozen
        if tests is None:
            live = _tests_of(self._tests)
            if _changes(live) != self._version:
                raise StaleResult(self.name)
            tests = live
        thresholds = _pairs(self._thresholds)
        return _latency(self.name, tests, self._events, thresholds, self._tolerance, self._bar)


def _changes(tests: Iterable[RecoveringTest]) -> int:
    """The tests' change counters summed: they only grow, so an equal sum is no change."""
    total = 0
    for t in tests:
        total += t.changes
    return total


def _latency(
    name: str,
    tests: Iterable[RecoveringTest | Frozen],
    events: int,
    thresholds: tuple[tuple[float, float], ...],
    tolerance: float,
    bar: float,
) -> CheckResult:
    log_e = mean_log_e([t.log_e for t in tests])
    e = math.exp(log_e) if log_e < 700 else math.inf
    detail = latency_detail(thresholds, tolerance)
    if not thresholds and not events:
        detail = "stable history too short"
        return CheckResult(
            name, "compare", e, None, bar, 0, "no_data", detail, None, "latency", "e_value"
        )
    verdict: Verdict = "fail" if e >= bar else ("pass" if events else "no_data")
    return CheckResult(
        name, "compare", e, None, bar, events, verdict, detail, None, "latency", "e_value"
    )


# --- the guard ----------------------------------------------------------------------------


def guard_result(guard: RateGuard, bar: float) -> LazyResult:
    """The guard's result against ``bar`` (1/α of the guard)."""
    comps, ab = guard._comps, guard._ab
    if not surely_below(guard_lead_ceiling(guard), bar) and not surely_below(
        guard_ceiling(comps, ab, guard._log_g), bar
    ):
        return LazyResult.of(_guard(guard, bar))
    return _LazyGuard(guard, bar)


class _LazyGuard(LazyResult):
    __slots__ = ("_bar", "_guard", "_version")

    def __init__(self, guard: RateGuard, bar: float) -> None:
        # (`LazyResult.__init__` written out: one made on most ticks, kept for a tick)
        self.name, self.kind, self.verdict, self._made = "guard", "guard", "pass", None
        self._guard: RateGuard | GuardView = guard
        self._version, self._bar = guard.changes, bar

    def detach(self) -> None:
        guard = self._guard
        if self._made is None and isinstance(guard, RateGuard):
            self._guard = GuardView(guard)

    def _make(self) -> CheckResult:
        guard = self._guard
        if isinstance(guard, RateGuard) and guard.changes != self._version:
            raise StaleResult(self.name)
        return _guard(guard, self._bar)


def _guard(guard: RateGuard | GuardView, bar: float) -> CheckResult:
    e = guard.e_value
    verdict: Verdict = "fail" if e >= bar else "pass"
    return CheckResult(
        "guard", "guard", e, None, bar, guard.requests, verdict, guard_detail(guard.cap), None,
        "error_rate", "e_value",
    )  # fmt: skip
