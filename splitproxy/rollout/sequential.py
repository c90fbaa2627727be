"""Anytime-valid sequential tests for canary analysis (pure; stdlib ``math`` only).

Everything here is an *e-process*: a non-negative number that starts at 1 and, while the
null hypothesis holds, is a supermartingale, so by Ville's inequality the chance that it
*ever* reaches ``1/α`` is at most ``α``. That is what lets the analyzer look after every tick,
across every step, paused or not, and still keep its false-rollback rate within budget.
Values are kept in log space and combined with `logsumexp`.

`AttributionTest`, the randomization-attribution e-process
    The proxy routes each unit to the candidate with a known probability ``p``. Under the
    sharp null "the version makes no difference", a bad event (an error, a request slower
    than stable's trailing p95) comes from the candidate with probability exactly ``p``,
    whatever the traffic does. Under a constant event-rate ratio ``r`` it does so with
    ``q(r) = r·p / (r·p + 1 − p)``. The likelihood ratio ``L(r)`` of ``q(r)`` against ``p``,
    mixed over a grid of ``r > 1`` with equal weights, is a test martingale for "the
    candidate is not worse". Batches are exact: ``x`` candidate and ``y`` stable events at
    one ``p`` multiply ``L`` by ``(q/p)^x ((1−q)/(1−p))^y``. ``p`` may change from batch to
    batch (the weight of each step); the sufficient statistic is the event counts per ``p``,
    which is what is stored (and serialised).

    *One-sided bounds.* Shifted by ``r0``, the same mixture, ``mean_s L(r0·s) / L(r0)`` over
    the grid, is a test supermartingale for ``H0: r ≤ r0`` (`AttributionTest.log_e_at`); at
    ``r0 = 1`` it is the test itself, and it falls as ``r0`` grows. `lower_confidence_bound`
    inverts it: the anytime-valid lower (1 − α) bound on ``r`` is the least ``r0`` that the
    test does not reject at α. The bound reported beside a decision is built from exactly the
    e-process that made it (the path-class family, the mean over latency quantiles), so it is
    above 1 whenever that test has rejected ``r ≤ 1``.

`PathClassTests`
    The error-rate family: ``E = ½·E_pooled + ½·mean_k E_k`` over a fixed number of path
    class slots (a class takes the next free slot when it first shows up; later ones share
    an overflow slot). An average of test martingales with weights fixed in advance is one,
    so the family needs no further α split; the per-class half catches a candidate that
    breaks one endpoint.

`RateGuard`, the one-sample guard
    Tests ``H0: rate ≤ cap`` with ``mean_j Π (q_j/cap)^x ((1−q_j)/(1−cap))^(n−x)``,
    ``q_j ∈ {2, 4, 8}·cap``: a supermartingale for every rate up to ``cap``, so a single early
    error cannot trip it. A plain product would drift down for ever while the candidate is
    healthy (hours of good traffic would make it slow to see a late crash), so the guard is
    a *mixture over start times*: a new component starts every ``block`` requests, component
    ``k`` has prior weight ``1/(k(k+1))`` (they sum to 1), and components too small to
    matter are dropped. Dropping terms only lowers the process, and a process below a test
    supermartingale keeps Ville's bound, so the guard stays valid while a crash at any time
    trips it within a few dozen requests.

`split_alpha` is the α accounting of one rollout (a union bound over the families).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol

from splitproxy.rollout.bounds import BOUND_FAR, lower_confidence_bound
from splitproxy.rollout.ratios import coefficient_table, coefficients_in, q_of

DEFAULT_GRID: Final = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0)
GUARD_MULTIPLIERS: Final = (2.0, 4.0, 8.0)
NEG_INF: Final = -math.inf


def logsumexp(values: Iterable[float]) -> float:
    """``log(Σ exp(v))`` without overflow; ``-inf`` for no values."""
    vs = values if isinstance(values, list) else list(values)
    if not vs:
        return NEG_INF
    top = max(vs)
    if top == NEG_INF or top == math.inf:
        return top
    exp = math.exp  # a list, not a generator, into fsum: the same exact sum, cheaper
    return top + math.log(math.fsum([exp(v - top) for v in vs]))


def attribution_log_e(log_w: float, log_l: Sequence[float]) -> float:
    """An attribution test's log e-value from its log-likelihood ratios (equal weights)."""
    return logsumexp([log_w + v for v in log_l])


def kl_bernoulli(q: float, p: float) -> float:
    """``KL(Bernoulli(q) ‖ Bernoulli(p))``: the expected log-evidence per event."""
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def events_needed(r: float, p: float, alpha: float, weight: float) -> float:
    """Roughly how many events a grid point ``r`` of prior ``weight`` needs to reach ``1/α``
    when the true ratio is ``r`` (the sizing formula of the reference)."""
    return (math.log(1 / alpha) + math.log(1 / weight)) / kl_bernoulli(q_of(r, p), p)


def _valid_p(p: float) -> bool:
    """Events routed at ``p`` = 0 or 1 carry no information about the version."""
    return 0.0 < p < 1.0


def _loglik(counts: Mapping[float, Sequence[int]], r: float) -> float:
    """``log P(attributions | ratio r)`` up to a constant that does not depend on ``r``."""
    total = 0.0
    for p, (x, y) in counts.items():
        q = q_of(r, p)
        if x:
            total += x * math.log(q) if q > 0 else NEG_INF
        if y:
            total += y * math.log1p(-q) if q < 1 else NEG_INF
    return total


class AttributionTest:
    """The randomization-attribution e-process for "the candidate is worse" (``r > 1``).

    ``update(p, candidate_events, stable_events)`` adds a batch of events whose units were
    routed to the candidate with probability ``p``. ``log_e`` is the log of the e-value.
    """

    __slots__ = ("_counts", "_events", "_log_e", "_log_l", "_log_w", "_table", "changes", "grid")

    def __init__(self, grid: Sequence[float] = DEFAULT_GRID) -> None:
        if not grid or any(r <= 1.0 for r in grid):
            raise ValueError("the grid needs ratios above 1")
        self.grid: tuple[float, ...] = tuple(grid)
        self._table = coefficient_table(self.grid)
        self._log_w = -math.log(len(self.grid))
        self._log_l = [0.0] * len(self.grid)
        self._counts: dict[float, list[int]] = {}
        # `events`, counted as they come: asked several times a tick, and a sticky route's
        # tests hold a ``p`` per realized share (hundreds of them after a few minutes)
        self._events = 0
        # `log_e` as last computed (None once `_log_l` changed): asked often, seldom changed
        self._log_e: float | None = None
        self.changes = 0  # counts the updates: what a memo of anything derived is keyed on

    def update(self, p: float, candidate: int, stable: int) -> None:
        if candidate < 0 or stable < 0:
            raise ValueError("event counts cannot be negative")
        if not _valid_p(p) or candidate + stable == 0:
            return
        coefs = coefficients_in(self._table, p, self.grid)
        self.add([candidate * a + stable * b for a, b in coefs], p, candidate, stable)

    def add(self, increments: list[float], p: float, candidate: int, stable: int) -> None:
        """`update` past its checks, given the log-likelihood ratios' increments: ``candidate
        * a + stable * b`` per grid point, ``(a, b)`` its `ratios.coefficients` at ``p``. The
        components of a `recovery.RecoveringTest` share a grid and get the same batches: it
        works them out once for all."""
        self.changes += 1
        cell = self._counts.get(p)
        if cell is None:
            cell = self._counts[p] = [0, 0]
        cell[0] += candidate
        cell[1] += stable
        self._events += candidate + stable
        self._log_e = None
        # ``log_l[j] += increments[j]`` for every j, in one call, into a new list: a list once
        # made is never written again, so a result made later reads it as it was (`frozen`)
        self._log_l = list(map(operator.add, self._log_l, increments))

    @property
    def log_e(self) -> float:
        cached = self._log_e
        if cached is None:
            cached = self._log_e = attribution_log_e(self._log_w, self._log_l)
        return cached

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def log_e_at(self, r0: float) -> float:
        """The log e-value of the same test shifted to ``H0: r ≤ r0``: ``log mean_s L(r0·s) /
        L(r0)`` over the grid. At ``r0 = 1`` it is `log_e` itself (bit for bit); it falls as
        ``r0`` grows."""
        if r0 == 1.0:
            return self.log_e
        base = _loglik(self._counts, r0)
        if base == NEG_INF:  # the data are impossible at r0
            return math.inf
        return logsumexp(self._log_w + _loglik(self._counts, r0 * s) - base for s in self.grid)

    def lower_confidence_bound(self, alpha: float) -> float:
        """The anytime-valid one-sided lower (1 − α) confidence bound for ``r``: the least
        ``r0`` this test does not reject at α (see `lower_confidence_bound`)."""
        return lower_confidence_bound(self.log_e_at, alpha)

    @property
    def events(self) -> int:
        """Events seen at an informative ``p`` (both versions): ``Σ x + y`` over `counts`."""
        return self._events

    @property
    def candidate_events(self) -> int:
        return sum(x for x, _ in self._counts.values())

    def counts(self) -> dict[float, tuple[int, int]]:
        """``{p: (candidate events, stable events)}``, the sufficient statistic."""
        return {p: (x, y) for p, (x, y) in self._counts.items()}

    def expected_candidate_events(self) -> float:
        """How many candidate events the null predicts: ``Σ p·(x + y)``."""
        return sum(p * (x + y) for p, (x, y) in self._counts.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": list(self.grid),
            "counts": [[p, x, y] for p, (x, y) in sorted(self._counts.items())],
            "log_l": list(self._log_l),
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributionTest:
        test = cls(tuple(float(r) for r in data.get("grid", DEFAULT_GRID)))
        for p, x, y in data.get("counts", ()):
            test.update(float(p), int(x), int(y))
        log_l = data.get("log_l")
        if log_l is not None and len(log_l) == len(test.grid):
            test._log_l = [float(v) for v in log_l]  # bit-exact, not re-summed
            test._log_e = None
            test.changes += 1
        return test


OVERFLOW_CLASS: Final = "~other"


class OneSidedTest(Protocol):
    """What `PathClassTests` needs of a component: an `AttributionTest`, or a mixture of them
    over start times (`recovery.RecoveringTest`)."""

    def update(self, p: float, candidate: int, stable: int) -> None: ...
    def log_e_at(self, r0: float) -> float: ...
    @property
    def changes(self) -> int: ...
    @property
    def log_e(self) -> float: ...
    @property
    def e_value(self) -> float: ...
    @property
    def events(self) -> int: ...
    def counts(self) -> dict[float, tuple[int, int]]: ...
    def lower_confidence_bound(self, alpha: float) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...


class PathClassTests:
    """Pooled plus per-path-class attribution tests, averaged into one e-process.

    ``slots`` classes get a test each in order of first appearance; any later class shares
    one overflow slot, named `OVERFLOW_CLASS`. A class given by that name (the live windows'
    own overflow, ``stats.OTHER_CLASS``) goes straight to the overflow slot and never takes
    a regular one. Unused slots count as 1 in the average, so the weights never change.
    With ``slots=0`` this is just the pooled test.
    """

    __slots__ = ("_classes", "_memo", "factory", "grid", "pooled", "slots")

    def __init__(
        self,
        slots: int = 10,
        grid: Sequence[float] = DEFAULT_GRID,
        factory: Callable[[tuple[float, ...]], OneSidedTest] = AttributionTest,
    ) -> None:
        self.slots = slots
        self.grid = tuple(grid)
        self.factory = factory
        self.pooled: OneSidedTest = factory(self.grid)
        self._classes: dict[str, OneSidedTest] = {}
        # (the components' log e-values, the family's): `log_e` is asked for several times a
        # tick and its inputs rarely change; keyed on them, since `pooled` is updated directly
        self._memo: tuple[tuple[float, ...], float] | None = None

    def tests(self) -> list[OneSidedTest]:
        """Every component: the pooled test, then the classes'."""
        return [self.pooled, *self._classes.values()]

    def state_key(self) -> tuple[Any, ...]:
        """Equal between two calls only when no component was replaced, added or updated
        since (each component counts its changes): what a memo of a result is keyed on."""
        pooled = self.pooled
        return (pooled, pooled.changes, *[(t, t.changes) for t in self._classes.values()])

    def _slot(self, path_class: str) -> OneSidedTest:
        name = path_class
        classes = self._classes
        if name not in classes and len(classes) - (OVERFLOW_CLASS in classes) >= self.slots:
            name = OVERFLOW_CLASS
        test = classes.get(name)
        if test is None:
            test = classes[name] = self.factory(self.grid)
        return test

    def update(self, p: float, candidate: int, stable: int, path_class: str | None = None) -> None:
        """Add events to the pooled test and, when ``path_class`` is given, to its slot."""
        self.pooled.update(p, candidate, stable)
        if self.slots and path_class is not None:
            self._slot(path_class).update(p, candidate, stable)

    def update_class(self, p: float, candidate: int, stable: int, path_class: str) -> None:
        """Add events to one class slot only (when the pooled counts are added separately)."""
        if self.slots:
            self._slot(path_class).update(p, candidate, stable)

    @property
    def classes(self) -> Mapping[str, OneSidedTest]:
        return self._classes

    @property
    def log_e(self) -> float:
        return self.log_e_at(1.0)

    def log_e_at(self, r0: float) -> float:
        """The family's log e-value for ``H0: r ≤ r0`` (every component shifted to ``r0``, the
        same weights); `log_e` at ``r0 = 1``."""
        if not self.slots:
            return self.pooled.log_e_at(r0)
        if r0 == 1.0:
            key = (self.pooled.log_e, *[t.log_e for t in self._classes.values()])
            memo = self._memo
            if memo is not None and memo[0] == key:
                return memo[1]
            value = self._log_e_at(r0)
            self._memo = (key, value)
            return value
        return self._log_e_at(r0)

    def _log_e_at(self, r0: float) -> float:
        per_class = [t.log_e_at(r0) for t in self._classes.values()]
        return family_log_e(self.slots, self.pooled.log_e_at(r0), per_class)

    def lower_confidence_bound(self, alpha: float) -> float:
        """The one-sided lower (1 − α) bound for ``r`` from the family's own e-process, the one
        the error comparison decides on: above 1 whenever ``e_value ≥ 1/α``."""
        return lower_confidence_bound(self.log_e_at, alpha)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def worst_class(self) -> tuple[str, OneSidedTest] | None:
        """The class whose test has the most evidence against the candidate."""
        if not self._classes:
            return None
        return max(self._classes.items(), key=lambda kv: kv[1].log_e)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "pooled": self.pooled.to_dict(),
            "classes": {name: t.to_dict() for name, t in self._classes.items()},
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        load: Callable[[Mapping[str, Any]], OneSidedTest] = AttributionTest.from_dict,
        factory: Callable[[tuple[float, ...]], OneSidedTest] = AttributionTest,
    ) -> PathClassTests:
        """Read `to_dict`'s form; ``load`` reads a component, ``factory`` makes new ones."""
        grid = tuple(float(r) for r in data["pooled"].get("grid", DEFAULT_GRID))
        out = cls(int(data.get("slots", 10)), grid, factory)
        out.pooled = load(data["pooled"])
        for name, t in data.get("classes", {}).items():
            out._classes[str(name)] = load(t)
        return out


def family_log_e(slots: int, pooled: float, per_class: list[float]) -> float:
    """`PathClassTests`' log e-value (``slots`` > 0) from its components' (``per_class`` is
    extended with the unused slots')."""
    n_slots = slots + 1  # the overflow slot is reserved from the start
    unused = n_slots - len(per_class)
    if unused:
        per_class.append(math.log(unused))
    mean_class = logsumexp(per_class) - math.log(n_slots)
    return logsumexp((math.log(0.5) + pooled, math.log(0.5) + mean_class))


def mean_log_e(log_es: Sequence[float]) -> float:
    """The log of the average of e-values (an average of e-processes is one)."""
    if not log_es:
        return 0.0
    return logsumexp(log_es) - math.log(len(log_es))


def guard_rates(cap: float, multipliers: Sequence[float] = GUARD_MULTIPLIERS) -> tuple[float, ...]:
    """The alternative rates of the guard: ``m·cap``, folded into (cap, 1) when too large."""
    if not 0.0 < cap < 1.0:
        raise ValueError("the cap must be between 0 and 1")
    rates: set[float] = set()
    for m in multipliers:
        q = m * cap
        if q >= 1.0:  # keep the point strictly between cap and 1
            q = cap + (1.0 - cap) * (1.0 - 1.0 / (2.0 * m))
        # a cap a hair under 1 (1 - 2**-53) has no float strictly between it and 1: the folded
        # point rounds to 1.0 (log(1 - q) undefined). Such a line can never be shown exceeded,
        # so the test is left with no alternative (an e-value that never grows)
        if cap < q < 1.0:
            rates.add(q)
    return tuple(sorted(rates))


class RateGuard:
    """Anytime-valid test of ``H0: rate ≤ cap`` mixed over start times (see the module doc).

    ``update(requests, errors)`` adds one batch. A new component starts before a batch once
    ``block`` requests have arrived since the newest one started (a rule fixed by the past,
    so the mixture stays a supermartingale). At most ``keep`` components are carried: the
    newest always, then those with the largest weighted values.
    """

    __slots__ = (
        "_ab", "_comps", "_log_g", "_started", "block", "cap", "changes", "keep", "lead", "rates",
    )  # fmt: skip

    def __init__(
        self,
        cap: float,
        *,
        multipliers: Sequence[float] = GUARD_MULTIPLIERS,
        block: int = 50,
        keep: int = 12,
    ) -> None:
        self.cap = cap
        self.rates = guard_rates(cap, multipliers)
        self.block = max(1, block)
        self.keep = max(1, keep)
        self._ab = tuple((math.log(q / cap), math.log((1 - q) / (1 - cap))) for q in self.rates)
        self._log_g = -math.log(len(self.rates)) if self.rates else 0.0
        self._started = 0  # components started so far (k of the newest)
        # per component: [k, requests since it started, errors since it started]
        self._comps: list[list[int]] = []
        self.changes = 0  # counts the updates: what a memo of a result is keyed on
        # the component leading the loose ceiling, and its list (`frozen.guard_lead_ceiling`)
        self.lead: tuple[list[list[int]], int, list[int], float, float] | None = None

    def update(self, requests: int, errors: int) -> None:
        if errors < 0 or requests < errors:
            raise ValueError("need 0 <= errors <= requests")
        if requests == 0:
            return
        self.changes += 1
        if not self._comps or self._comps[-1][1] >= self.block:
            self._started += 1
            self._comps.append([self._started, 0, 0])
        for comp in self._comps:
            comp[1] += requests
            comp[2] += errors
        if len(self._comps) > self.keep:
            newest = self._comps[-1]
            rest = sorted(self._comps[:-1], key=self._comp_log_e, reverse=True)
            self._comps = [*sorted(rest[: self.keep - 1], key=lambda c: c[0]), newest]

    def _comp_log_e(self, comp: Sequence[int]) -> float:
        k, n, x = comp[0], comp[1], comp[2]
        g, y = self._log_g, n - x
        return _log_weight(k) + logsumexp([g + x * a + y * b for a, b in self._ab])

    @property
    def log_e(self) -> float:
        return guard_log_e(self._comps, self._started, self._ab, self._log_g)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    @property
    def requests(self) -> int:
        """Requests seen by the oldest component still carried."""
        return self._comps[0][1] if self._comps else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cap": self.cap,
            "rates": list(self.rates),
            "block": self.block,
            "keep": self.keep,
            "started": self._started,
            "components": [list(c) for c in self._comps],
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateGuard:
        cap = float(data["cap"])
        guard = cls(cap, block=int(data.get("block", 50)), keep=int(data.get("keep", 12)))
        rates = tuple(float(q) for q in data.get("rates", guard.rates))
        if rates != guard.rates:
            guard.rates = rates
            guard._ab = tuple((math.log(q / cap), math.log((1 - q) / (1 - cap))) for q in rates)
            guard._log_g = -math.log(len(rates)) if rates else 0.0
        guard._started = int(data.get("started", 0))
        guard._comps = [[int(v) for v in c] for c in data.get("components", ())]
        return guard


def guard_log_e(
    comps: Sequence[Sequence[int]],
    started: int,
    ab: Sequence[tuple[float, float]],
    g: float,
) -> float:
    """`RateGuard.log_e` from its components ``(k, requests, errors)``, the number started,
    its rates' coefficients ``(a, b)`` and their log weight ``g``."""
    if not comps:
        return 0.0
    # `_comp_log_e` of each component, written out: the guard asks on every tick with a
    # candidate request, for up to `keep` components, and two calls per component (it and
    # its `logsumexp`) were most of the cost. The same operations in the same order.
    exp, log, fsum = math.exp, math.log, math.fsum
    parts = []
    if len(ab) == 3:  # the usual three rates, unrolled: no list comprehension's frames
        (a1, b1), (a2, b2), (a3, b3) = ab
        for k, n, x in comps:
            y = n - x
            t1, t2, t3 = g + x * a1 + y * b1, g + x * a2 + y * b2, g + x * a3 + y * b3
            top = max(t1, t2, t3)  # max of a list of them: the same float
            if top != NEG_INF and top != math.inf:
                top = top + log(fsum((exp(t1 - top), exp(t2 - top), exp(t3 - top))))
            parts.append(_log_weight(k) + top)
    else:
        for k, n, x in comps:
            y = n - x
            terms = [g + x * a + y * b for a, b in ab]
            top = max(terms) if terms else NEG_INF
            if top != NEG_INF and top != math.inf:
                top = top + log(fsum([exp(v - top) for v in terms]))
            parts.append(_log_weight(k) + top)
    # components never started carry their prior weight at value 1
    unstarted = 1.0 / (started + 1)  # Σ_{k > started} 1/(k(k+1))
    parts.append(log(unstarted))
    return logsumexp(parts)


@dataclass(frozen=True, slots=True)
class AlphaSplit:
    """One rollout's α budget, split by a union bound over the families of tests."""

    total: float
    error: float
    latency: float
    guard: float


def split_alpha(alpha: float, *, error: bool, latency: bool, guard: bool) -> AlphaSplit:
    """The reference's split: the guard takes 10 % of α, the comparison families share the
    rest equally (0.45 % / 0.45 % / 0.1 % for α = 1 % with all three)."""
    guard_share = 0.1 * alpha if guard else 0.0
    families = int(error) + int(latency)
    rest = alpha - guard_share if families else 0.0
    each = rest / families if families else 0.0
    return AlphaSplit(
        total=alpha,
        error=each if error else 0.0,
        latency=each if latency else 0.0,
        guard=guard_share,
    )


@lru_cache(maxsize=1024)
def _log_weight(k: int) -> float:
    """A guard component's log prior weight, ``log(1/(k(k+1)))``: the newest components'
    ``k`` recur on every tick's e-value (a guard carries up to twelve of them)."""
    return -math.log(k) - math.log(k + 1)


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 700 else math.inf


__all__ = [
    "BOUND_FAR",
    "DEFAULT_GRID",
    "GUARD_MULTIPLIERS",
    "AlphaSplit",
    "AttributionTest",
    "OneSidedTest",
    "PathClassTests",
    "RateGuard",
    "attribution_log_e",
    "events_needed",
    "family_log_e",
    "guard_log_e",
    "guard_rates",
    "kl_bernoulli",
    "logsumexp",
    "lower_confidence_bound",
    "mean_log_e",
    "q_of",
    "split_alpha",
]
