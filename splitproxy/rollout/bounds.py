"""Anytime-valid one-sided confidence bounds from e-processes (pure; stdlib ``math`` only).

`lower_confidence_bound` inverts a one-sided test: the least ratio ``r0`` that the test does
not reject at α. `sequential.AttributionTest`, `sequential.PathClassTests` and
`recovery.RecoveringTest` bound the candidate/stable rate ratio with it (see
`splitproxy.rollout.sequential`), and the A/B tests' intervals search as far (`BOUND_FAR`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 700 else math.inf


BOUND_FAR: Final = 12.0  # |log r0| searched: e^12 ≈ 1.6e5; beyond it a bound is reported there


def lower_confidence_bound(log_e_at: Callable[[float], float], alpha: float) -> float:
    """Invert a one-sided test into an anytime-valid lower (1 − α) confidence bound for ``r``.

    ``log_e_at(r0)`` is the log of an e-process for ``H0: r ≤ r0`` that does not grow with
    ``r0``, and ``log_e_at(1.0)`` is the e-process a decision is taken on. ``r0`` is rejected
    when ``e ≥ 1/α``, the decision's own comparison; the bound is the least ``r0`` not
    rejected, found by bisection in ``log r0`` and rounded down (conservative): ``0`` when
    the data reject no ``r0`` (down to ``e^-12``), ``e^12`` at most. When ``r0 = 1`` is
    rejected, so that the test has found the candidate worse, the bound is above 1.
    """
    bar = 1 / alpha

    def rejected(log_r0: float) -> bool:
        return _exp(log_e_at(math.exp(log_r0) if log_r0 else 1.0)) >= bar

    if rejected(0.0):
        lo, hi = 0.0, BOUND_FAR
        if rejected(hi):
            return math.exp(hi)
    else:
        lo, hi = -BOUND_FAR, 0.0
        if not rejected(lo):
            return 0.0
    while hi - lo > 1e-6:  # lo is rejected, hi is not (a ratio to a millionth)
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    bound = math.exp(lo)
    if lo >= 0.0:  # r0 = 1 was rejected: every r0 ≤ 1 is (the e-process falls with r0)
        bound = max(bound, math.nextafter(1.0, math.inf))
    return bound
