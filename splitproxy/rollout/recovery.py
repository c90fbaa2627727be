"""Comparisons that recover from evidence in the candidate's favour (pure; stdlib only).

An attribution e-process (`sequential.AttributionTest`) multiplies likelihood ratios from the
rollout's first event on. When stable alone fails for a while (a stable-only incident), or the
candidate is simply better, every ratio ``L(r > 1)`` falls far below 1: the *evidence debt*.
A real regression that starts later must first pay the debt back before the test can reach
``1/α``, which can take minutes, or for ever for a small one.

`RecoveringTest` is a *mixture over start times* of attribution tests, as the guard is
(`sequential.RateGuard`): component ``k`` starts fresh (at 1) at the ``k``-th call to
`RecoveringTest.restart` (``k = 1`` at the beginning) and has prior weight ``1/(k(k+1))``;
the weights of all components, started or not, sum to 1, and a component not started yet
counts at its value 1. Each component is a test martingale for "the candidate is not worse"
from its start on, so the mixture is one too, whatever the restarts' times, as long as they
are chosen from the past alone (the evidence restarts on a fixed clock, `RESTART_EVERY`).
At most `KEEP` components are carried: the newest always, then those with the largest
weighted values; dropping a component only lowers the process, which keeps Ville's bound.

The price: a regression that starts after the ``k``-th restart is judged by a component of
weight ``1/(k(k+1))``, about ``2·ln k`` nats more than the test from the start would need if
there were no debt (4.8 nats after ten restarts); the first component keeps half the weight,
so a rollout without debt loses ``ln 2``. The one-sided lower confidence bound for the rate
ratio inverts the same mixture, so it stays above 1 whenever the mixture rejects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from splitproxy.rollout.ratios import coefficient_table, coefficients_in
from splitproxy.rollout.sequential import (
    DEFAULT_GRID,
    AttributionTest,
    logsumexp,
    lower_confidence_bound,
)

RESTART_EVERY: Final = 60.0  # seconds of judged rollout time between two fresh starts
KEEP: Final = 12  # components carried at most


@lru_cache(maxsize=256)
def _log_weight(k: int) -> float:
    return -math.log(k) - math.log(k + 1)


def mixture_log_e(started: int, parts: list[float]) -> float:
    """A mixture's log e-value from its carried components' weighted log e-values (``parts``:
    ``log_weight(k) + log_e`` each, extended here), ``started`` components started so far
    (those not started yet count at their prior weight, value 1)."""
    parts.append(math.log(1.0 / (started + 1)))  # Σ_{k > started} 1/(k(k+1))
    return logsumexp(parts)


def log_weight(k: int) -> float:
    """Component ``k``'s log prior weight, ``log(1/(k(k+1)))``."""
    return _log_weight(k)


class RecoveringTest:
    """A mixture over start times of `AttributionTest` (see the module docstring).

    It answers like an `AttributionTest` (``update``, ``log_e``, ``log_e_at``, ``events``,
    ``counts``), so the evidence uses either; ``restart`` starts a new component."""

    __slots__ = ("_comps", "_log_e", "_one_grid", "_started", "_table", "changes", "grid", "keep")

    def __init__(self, grid: Sequence[float] = DEFAULT_GRID, keep: int = KEEP) -> None:
        self.grid: tuple[float, ...] = tuple(grid)
        self._table = coefficient_table(self.grid)
        # every component on this grid (always, but for a state read in with another grid in
        # a component): what lets `update` look the coefficients up once for all of them
        self._one_grid = True
        self.keep = max(1, keep)
        self._started = 1
        self._comps: list[tuple[int, AttributionTest]] = [(1, AttributionTest(self.grid))]
        self._log_e: float | None = None  # `log_e` as last computed; None after a change
        self.changes = 0  # updates and fresh starts: what a memo of a result is keyed on

    def restart(self) -> None:
        """Start a fresh component from now on (call on a schedule fixed by the past)."""
        if not self._comps[-1][1].events:
            return  # the newest has seen nothing yet: it is as fresh as a new one
        self._log_e = None
        self.changes += 1
        self._started += 1
        self._comps.append((self._started, AttributionTest(self.grid)))
        if len(self._comps) > self.keep:
            newest = self._comps[-1]
            rest = sorted(self._comps[:-1], key=lambda c: _log_weight(c[0]) + c[1].log_e)
            kept = sorted(rest[len(rest) - (self.keep - 1) :], key=lambda c: c[0])
            self._comps = [*kept, newest]

    def update(self, p: float, candidate: int, stable: int) -> None:
        self._log_e = None
        self.changes += 1
        if candidate < 0 or stable < 0:
            raise ValueError("event counts cannot be negative")
        if not self._one_grid:
            for _, test in self._comps:
                test.update(p, candidate, stable)
            return
        if not 0.0 < p < 1.0 or candidate + stable == 0:
            return  # what each component's `AttributionTest.update` would pass over
        # every component's `update`, with ``p``'s coefficients looked up, and the increments
        # of the log-likelihood ratios worked out, once for all
        coefs = coefficients_in(self._table, p, self.grid)
        increments = [candidate * a + stable * b for a, b in coefs]
        for _, test in self._comps:
            test.add(increments, p, candidate, stable)

    def log_e_at(self, r0: float) -> float:
        """The mixture's log e-value for ``H0: r ≤ r0`` (each component shifted to ``r0``)."""
        if r0 == 1.0:
            return self.log_e
        return self._log_e_at(r0)

    def _log_e_at(self, r0: float) -> float:
        parts = [_log_weight(k) + t.log_e_at(r0) for k, t in self._comps]
        return mixture_log_e(self._started, parts)

    @property
    def log_e(self) -> float:
        cached = self._log_e
        if cached is None:  # `_log_e_at(1.0)`, each component's `log_e_at(1.0)` its `log_e`
            parts = [_log_weight(k) + t.log_e for k, t in self._comps]
            cached = self._log_e = mixture_log_e(self._started, parts)
        return cached

    @property
    def e_value(self) -> float:
        return math.exp(self.log_e) if self.log_e < 700 else math.inf

    def lower_confidence_bound(self, alpha: float) -> float:
        return lower_confidence_bound(self.log_e_at, alpha)

    @property
    def first(self) -> AttributionTest | None:
        """The component from the rollout's start, while it is carried."""
        k, test = self._comps[0]
        return test if k == 1 else None

    @property
    def restarts(self) -> int:
        """Fresh starts so far (components started after the first)."""
        return self._started - 1

    def best(self) -> tuple[int, AttributionTest]:
        """The component with the largest weighted value: ``(k, test)``."""
        return max(self._comps, key=lambda c: _log_weight(c[0]) + c[1].log_e)

    @property
    def _whole(self) -> AttributionTest:
        """The oldest component carried: it has seen the most events."""
        return self._comps[0][1]

    @property
    def events(self) -> int:
        return self._comps[0][1]._events  # (`_whole.events`: read on most ticks)

    @property
    def candidate_events(self) -> int:
        return self._whole.candidate_events

    def counts(self) -> dict[float, tuple[int, int]]:
        return self._whole.counts()

    def expected_candidate_events(self) -> float:
        return self._whole.expected_candidate_events()

    def debt(self) -> str:
        """What the ledger shows: the test from the start against the mixture's best part."""
        k, best = self.best()
        first = self.first
        head = f"from start e={first.e_value:.3g}" if first is not None else "start dropped"
        return f"{head}, restarts {self.restarts}, best restart #{k} e={best.e_value:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data; before its first restart, a plain `AttributionTest`'s form (so a state
        saved by an older version reads and saves in the same shape)."""
        if self._started == 1 and len(self._comps) == 1 and self.keep == KEEP:
            return self._comps[0][1].to_dict()
        return {
            "grid": list(self.grid),
            "keep": self.keep,
            "started": self._started,
            "components": [[k, t.to_dict()] for k, t in self._comps],
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecoveringTest:
        """Read `to_dict`'s form, or a plain `AttributionTest`'s (a state saved before
        restarts existed: it becomes the first component)."""
        grid = tuple(float(r) for r in data.get("grid", DEFAULT_GRID))
        out = cls(grid, int(data.get("keep", KEEP)))
        if "components" not in data:
            out._comps = [(1, AttributionTest.from_dict(data))]
            out._log_e = None
            out._one_grid = out._comps[0][1].grid == out.grid
            return out
        out._started = int(data["started"])
        out._comps = [(int(k), AttributionTest.from_dict(t)) for k, t in data["components"]]
        out._log_e = None
        out._one_grid = all(t.grid == out.grid for _, t in out._comps)
        return out


__all__ = ["KEEP", "RESTART_EVERY", "RecoveringTest", "log_weight", "mixture_log_e"]
