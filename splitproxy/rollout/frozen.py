"""The e-processes as they stood at one tick, for results made later (pure).

The comparisons' and the guard's results are made when first read (`results`), which may be
ticks after the tests moved on. A snapshot here keeps what each e-value is made of and makes
it, bit for bit, as the live test would have at the snapshot's tick: the same functions
(`sequential.attribution_log_e`, `recovery.mixture_log_e`, `sequential.family_log_e`,
`sequential.guard_log_e`) on the same floats. Taking one copies no number: the tests never
write a list they have made (`AttributionTest.add` makes a new list of log-likelihood ratios,
`RateGuard.update` a new list of component tuples), so a snapshot holds the lists themselves.

Each snapshot also gives a *ceiling*, an upper bound on its log e-value that costs a ``max``
instead of the log-sum-exps. Every e-value here is an average of components with weights
summing to at most 1, the rest counting at value 1 (a mixture's components not started yet,
a family's unused slots), and a component's e-value is a mean of ``exp`` of its
log-likelihood ratios: so ``log E <= max(0, the largest ratio)``. `surely_below` turns it into
a verdict: when the ceiling is below the bar by more than the floats' rounding could make up
(`SLACK`), the e-value made in floats is below it too, and nothing need be made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import Final, TypeVar

from splitproxy.rollout.recovery import RecoveringTest, log_weight, mixture_log_e
from splitproxy.rollout.sequential import (
    NEG_INF,
    AttributionTest,
    OneSidedTest,
    PathClassTests,
    RateGuard,
    attribution_log_e,
    family_log_e,
    guard_log_e,
)

# Far above the rounding of a log-sum-exp whose largest term is near a bar (a few ulps of
# numbers of a few units; an e-value this close to its bar is simply made)
SLACK: Final = 1e-6


@lru_cache(maxsize=64)
def _log_bar(bar: float) -> float:
    return math.log(bar)


def surely_below(ceiling: float, bar: float) -> bool:
    """Is an e-value whose log is at most ``ceiling`` below ``bar`` once made in floats?
    (False when it cannot tell: then the e-value must be made.)"""
    return ceiling < _log_bar(bar) - SLACK


def ceiling(leaves: Sequence[Sequence[float]]) -> float:
    """``max(0, every log-likelihood ratio in leaves)``: see the module docstring (``inf``,
    no ceiling, for an empty list of ratios or one whose ``max`` reads a NaN)."""
    top = NEG_INF
    for leaf in leaves:
        if not leaf:
            return math.inf
        m = max(leaf)
        if not m <= top:  # larger, or a NaN
            if m != m:
                return math.inf
            top = m
    return top if top > 0.0 else 0.0


def leaves_of(test: OneSidedTest) -> list[list[float]]:
    """A live comparison test's log-likelihood ratios, every component's (for a ceiling)."""
    if isinstance(test, RecoveringTest):
        return [t._log_l for _, t in test._comps]
    if isinstance(test, AttributionTest):
        return [test._log_l]
    return [[math.inf]]  # another kind of test: no ceiling


def family_ceiling(family: PathClassTests | FrozenFamily) -> float:
    """A ceiling of a family's log e-value (live or a snapshot); ``inf`` for one holding more
    classes than slots, which `family_log_e` cannot weigh."""
    slots = family.slots
    if isinstance(family, PathClassTests):
        n_classes = len(family.classes)
        leaves = leaves_of(family.pooled)
        if slots:
            for t in family.classes.values():
                leaves += leaves_of(t)
    else:
        n_classes = len(family.classes)
        leaves = family.pooled.leaves()
        if slots:
            for _, frozen in family.classes:
                leaves += frozen.leaves()
    if slots and n_classes > slots + 1:
        return math.inf
    return ceiling(leaves)


def guard_ceiling(
    comps: Sequence[Sequence[int]], ab: Sequence[tuple[float, float]], g: float
) -> float:
    """A ceiling of `sequential.guard_log_e`: ``max(0, max over components and rates of
    t - g)``. A component's log e-value is a log-mean-exp of its terms ``t = g + x·a + y·b``
    (``g = -log(rates)``), so at most its largest term less ``g``; the terms are the very
    floats `guard_log_e` makes."""
    if not ab:  # no alternative rate: every component's e-value is 0
        return 0.0
    top = NEG_INF
    if len(ab) == 3:
        (a1, b1), (a2, b2), (a3, b3) = ab
        for _, n, x in comps:
            y = n - x
            top = max(top, g + x * a1 + y * b1, g + x * a2 + y * b2, g + x * a3 + y * b3)
    else:
        for _, n, x in comps:
            y = n - x
            top = max(top, *[g + x * a + y * b for a, b in ab])
    top -= g
    if top > 0.0:
        return top
    return 0.0 if top <= 0.0 else math.inf


# `guard_loose_ceiling` gives up on components with more requests: their products' rounding
# (a few ulps of numbers up to 2**20 * |log-ratio|) must stay far inside `SLACK`
_LOOSE_REQUESTS: Final = 2**20
_Comp = TypeVar("_Comp", bound=Sequence[int])  # a guard's component: [k, requests, errors]


def guard_loose_ceiling(
    comps: Sequence[Sequence[int]], ab: tuple[tuple[float, float], ...]
) -> float:
    """A looser ceiling of `sequential.guard_log_e`, a third of `guard_ceiling`'s arithmetic:
    with ``x``, ``y ≥ 0``, ``x·max(a) + y·max(b)`` bounds each rate's ``x·a + y·b``; ``inf``
    for a component too large for it."""
    if not ab:
        return 0.0
    top = _lead(comps, *_tops(ab))[0]
    return top if top > 0.0 else 0.0


def _lead(comps: Sequence[_Comp], a_top: float, b_top: float) -> tuple[float, _Comp | None]:
    """The largest ``x·a_top + (n - x)·b_top`` of the components (``-inf`` without any) and
    the component that makes it; ``inf`` (and None) once one is too large for the bound."""
    top, best = NEG_INF, None
    for comp in comps:
        n, x = comp[1], comp[2]
        if n > _LOOSE_REQUESTS:
            return math.inf, None
        v = x * a_top + (n - x) * b_top
        if v > top:
            top, best = v, comp
    return top, best


def guard_lead_ceiling(guard: RateGuard) -> float:
    """`guard_loose_ceiling` of a live guard, reading one component on most ticks. Between two
    changes of its list of components (a component started or dropped: another list, or
    another length), every component takes the same batches, so each one's ``x·max(a) +
    y·max(b)`` moves by the same amount and the one that leads them leads them still: the
    guard keeps it (`RateGuard.lead`), found by a full pass after each change. (The floats
    of two components within rounding of each other may lead in turn: the ceiling read is
    then below the full pass's by a few ulps of its terms, far inside `SLACK`.)"""
    comps = guard._comps
    lead = guard.lead
    if lead is None or lead[0] is not comps or lead[1] != len(comps):
        return _find_lead(guard)
    if comps[0][1] > _LOOSE_REQUESTS:  # (the oldest component has the most requests)
        return math.inf
    _, _, comp, a_top, b_top = lead
    x = comp[2]
    v = x * a_top + (comp[1] - x) * b_top
    return v if v > 0.0 else 0.0


def _find_lead(guard: RateGuard) -> float:
    """`guard_loose_ceiling`, keeping the component that leads it (even below 0)."""
    comps, ab = guard._comps, guard._ab
    if not ab or not comps:
        return 0.0  # (no lead kept: nothing to lead, and ``ab`` never changes)
    a_top, b_top = _tops(ab)
    top, best = _lead(comps, a_top, b_top)
    if best is None:  # a component too large for the bound
        return top
    guard.lead = (comps, len(comps), best, a_top, b_top)
    return top if top > 0.0 else 0.0


@lru_cache(maxsize=64)
def _tops(ab: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    return max(a for a, _ in ab), max(b for _, b in ab)


def mixtures_ceiling(tests: Iterable[OneSidedTest]) -> float:
    """`ceiling` of the tests' log-likelihood ratios, read in place (no list is made: the
    tick asks for the latency comparison's every time its tests change)."""
    top = NEG_INF
    for test in tests:
        if isinstance(test, RecoveringTest):
            for _, t in test._comps:
                m = max(t._log_l)
                if not m <= top:  # larger, or a NaN: no ceiling
                    if m != m:
                        return math.inf
                    top = m
        else:
            return ceiling(leaves_of(test))
    return top if top > 0.0 else 0.0


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 700 else math.inf


class FrozenAttribution:
    """An `AttributionTest` at one moment: its weight and log-likelihood ratios."""

    __slots__ = ("events", "log_l", "log_w")

    def __init__(self, test: AttributionTest) -> None:
        self.log_w, self.log_l, self.events = test._log_w, test._log_l, test.events

    @property
    def log_e(self) -> float:
        return attribution_log_e(self.log_w, self.log_l)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def leaves(self) -> list[list[float]]:
        return [self.log_l]


class FrozenMixture:
    """A `RecoveringTest` at one moment: ``(k, weight, ratios)`` per carried component."""

    __slots__ = ("_comp_log_es", "comps", "events", "started")

    def __init__(self, test: RecoveringTest) -> None:
        self.started = test._started
        self.comps = [(k, t._log_w, t._log_l) for k, t in test._comps]
        self.events = test.events
        self._comp_log_es: list[float] | None = None

    def comp_log_es(self) -> list[float]:
        """Each carried component's log e-value (`AttributionTest.log_e`)."""
        out = self._comp_log_es
        if out is None:
            out = self._comp_log_es = [attribution_log_e(w, log_l) for _, w, log_l in self.comps]
        return out

    def _weighted(self) -> list[float]:
        logs = self.comp_log_es()
        return [log_weight(k) + c for (k, _, _), c in zip(self.comps, logs, strict=True)]

    @property
    def log_e(self) -> float:
        return mixture_log_e(self.started, self._weighted())

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def debt(self) -> str:
        """`RecoveringTest.debt` as it read at the snapshot."""
        logs = self.comp_log_es()
        weighted = self._weighted()
        best = max(range(len(logs)), key=weighted.__getitem__)  # the first of equals, as `max`
        first = self.comps[0][0] == 1
        head = f"from start e={_exp(logs[0]):.3g}" if first else "start dropped"
        k = self.comps[best][0]
        return f"{head}, restarts {self.started - 1}, best restart #{k} e={_exp(logs[best]):.3g}"

    def leaves(self) -> list[list[float]]:
        return [log_l for _, _, log_l in self.comps]


Frozen = FrozenAttribution | FrozenMixture


def freeze(test: OneSidedTest) -> Frozen:
    """A snapshot of one comparison test (either kind the evidence holds)."""
    if isinstance(test, RecoveringTest):
        return FrozenMixture(test)
    if isinstance(test, AttributionTest):
        return FrozenAttribution(test)
    raise TypeError(f"no snapshot of a {type(test).__name__}")


class FrozenFamily:
    """A `PathClassTests` at one moment: the pooled test's and each class's snapshot."""

    __slots__ = ("classes", "pooled", "slots")

    def __init__(self, family: PathClassTests) -> None:
        self.slots = family.slots
        self.pooled = freeze(family.pooled)
        self.classes = [(name, freeze(t)) for name, t in family.classes.items()]

    @property
    def log_e(self) -> float:
        if not self.slots:
            return self.pooled.log_e
        per_class = [t.log_e for _, t in self.classes]
        return family_log_e(self.slots, self.pooled.log_e, per_class)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def worst_class(self) -> tuple[str, Frozen] | None:
        """`PathClassTests.worst_class` as it read at the snapshot."""
        if not self.classes:
            return None
        return max(self.classes, key=lambda kv: kv[1].log_e)


class GuardView:
    """A `RateGuard` at one moment: its components ``(k, requests, errors)``, copied flat
    (one tuple: the guard adds to its components in place), and its rates."""

    __slots__ = ("ab", "cap", "flat", "g", "started")

    def __init__(self, guard: RateGuard) -> None:
        self.flat = tuple(chain.from_iterable(guard._comps))
        self.started, self.cap, self.ab, self.g = guard._started, guard.cap, guard._ab, guard._log_g

    @property
    def comps(self) -> list[tuple[int, ...]]:
        flat = self.flat
        return [flat[i : i + 3] for i in range(0, len(flat), 3)]

    @property
    def log_e(self) -> float:
        return guard_log_e(self.comps, self.started, self.ab, self.g)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    @property
    def requests(self) -> int:
        """`RateGuard.requests` at the snapshot."""
        return self.flat[1] if self.flat else 0

    def ceiling(self) -> float:
        return guard_ceiling(self.comps, self.ab, self.g)
