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
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Protocol

from splitproxy.rollout.frozen import (
    Frozen,
    FrozenFamily,
    FrozenMixture,
    GuardView,
    ceiling,
    freeze,
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
    detail are made on the first `result` (then kept)."""

    __slots__ = ("_made", "_make", "kind", "name", "verdict")

    def __init__(
        self,
        name: str,
        kind: CheckKind,
        verdict: Verdict,
        make: Callable[[], CheckResult] | None,
        made: CheckResult | None = None,
    ) -> None:
        self.name, self.kind, self.verdict = name, kind, verdict
        self._make, self._made = make, made

    @classmethod
    def of(cls, result: CheckResult) -> LazyResult:
        """A result made already (its e-value was needed for the verdict)."""
        return cls(result.name, result.kind, result.verdict, None, result)

    @property
    def pending(self) -> bool:
        """Not made yet."""
        return self._made is None

    def result(self) -> CheckResult:
        made = self._made
        if made is None:
            assert self._make is not None
            made = self._made = self._make()
            self._make = None  # the snapshot is no longer needed
        return made


def made(result: CheckResult | LazyResult) -> CheckResult:
    """``result`` as a `CheckResult` (a lazy one made now)."""
    return result.result() if isinstance(result, LazyResult) else result


@lru_cache(maxsize=256, typed=True)
def latency_detail(thresholds: tuple[tuple[float, float], ...], tolerance: float) -> str:
    """The latency comparison's detail text. Made once per set of stable's quantiles: they
    are bucket bounds and move seldom, while the result is remade on nearly every tick."""
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
    family = FrozenFamily(test)
    if not surely_below(family.ceiling(), bar):
        return LazyResult.of(_error(name, family, bar, units, skipped))
    verdict: Verdict = "pass" if family.pooled.events else "no_data"
    return LazyResult(name, "compare", verdict, lambda: _error(name, family, bar, units, skipped))


def _error(name: str, family: FrozenFamily, bar: float, units: int, skipped: int) -> CheckResult:
    e = family.e_value
    detail = ""
    worst = family.worst_class()
    if worst is not None:
        detail = f"worst path class {worst[0]}: e={worst[1].e_value:.3g}"
    if isinstance(family.pooled, FrozenMixture):  # how much debt the fresh starts shed
        detail = "; ".join(d for d in (f"pooled {family.pooled.debt()}", detail) if d)
    if units or skipped:
        detail += f"; sticky users counted once: {units}"
        detail += f" (table full, {skipped} errors left out)" * bool(skipped)
    events = family.pooled.events
    verdict: Verdict = "fail" if e >= bar else ("pass" if events else "no_data")
    return CheckResult(
        name, "compare", e, None, bar, events, verdict, detail, None, "error_rate", "e_value"
    )


# --- the latency comparison ---------------------------------------------------------------


def latency_result(
    name: str,
    tests: Mapping[float, RecoveringTest],
    thresholds: tuple[tuple[float, float], ...],
    tolerance: float,
    bar: float,
) -> LazyResult:
    """The latency comparison's result: the mean over ``tests`` (one per quantile) against
    ``bar``, with stable's quantiles ``thresholds`` and the check's ``tolerance``."""
    frozen = [freeze(t) for t in tests.values()]
    events = sum(t.events for t in frozen)
    if not thresholds and not events:
        verdict: Verdict = "no_data"
    else:
        leaves = [log_l for t in frozen for log_l in t.leaves()]
        if not surely_below(ceiling(leaves), bar):
            return LazyResult.of(_latency(name, frozen, events, thresholds, tolerance, bar))
        verdict = "pass" if events else "no_data"

    def make() -> CheckResult:
        return _latency(name, frozen, events, thresholds, tolerance, bar)

    return LazyResult(name, "compare", verdict, make)


def _latency(
    name: str,
    frozen: Sequence[Frozen],
    events: int,
    thresholds: tuple[tuple[float, float], ...],
    tolerance: float,
    bar: float,
) -> CheckResult:
    log_e = mean_log_e([t.log_e for t in frozen])
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
    view = GuardView(guard)
    if not surely_below(view.ceiling(), bar):
        return LazyResult.of(_guard(view, bar))
    return LazyResult("guard", "guard", "pass", lambda: _guard(view, bar))


def _guard(view: GuardView, bar: float) -> CheckResult:
    e = view.e_value
    verdict: Verdict = "fail" if e >= bar else "pass"
    return CheckResult(
        "guard", "guard", e, None, bar, view.requests, verdict, guard_detail(view.cap), None,
        "error_rate", "e_value",
    )  # fmt: skip
