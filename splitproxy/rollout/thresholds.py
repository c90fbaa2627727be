"""Threshold checks judged with their sample size (pure; stdlib ``math`` only).

A threshold such as ``{metric: error_rate, max: 1%}`` is a statement about the candidate's
*rate*, and a step window only holds a sample of it: 3 errors in 120 requests is 2.5 %, yet
a candidate at 0.5 % shows that often enough to roll back several A/A rollouts in a hundred
when the raw ratio is compared with the line. So a threshold fails a window only when the
window *shows*, within its share of α, that the rate is on the wrong side of the line.

The test is anytime-valid within the window (`shown_above`): for ``H0: rate ≤ line`` the
likelihood ratio of the window's counts against rates ``m × line`` (``m`` in
`MULTIPLIERS`), averaged, is a test supermartingale as requests arrive (the guard's test,
`sequential.RateGuard`, without its fresh starts). So a window whose raw ratio is over the
line but not shown yet *holds on*: it gathers more requests, failing once the evidence is
there and passing once the ratio is back under the line; looking at it every tick costs no
validity.

- ``error_rate`` / ``success_rate``: the window's errors (successes) out of its requests.
- ``latency_pXX`` with ``max: c``: "pXX above c" means more than ``1 − XX %`` of requests
  slower than ``c``; the test counts the window's requests slower than ``c``. With ``min: c``,
  the requests at most ``c`` against ``XX %``.
- ``request_rate`` is not a proportion: it is compared as measured.

*α.* The ``j``-th step window judged in a rollout tests at ``α / (j (j+1))``, split evenly
over the spec's threshold checks. These sum to at most α over any number of windows, so a
candidate that meets every threshold fails even one window with probability at most the
rollout's ``alpha``, whatever the traffic, and rolls back (which takes more than
``failure_limit`` failed windows) less often still. This budget is the thresholds' own, on top
of the comparisons' and the guard's (which share ``alpha`` among themselves).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final

from splitproxy.rollout.sequential import guard_rates, logsumexp

MULTIPLIERS: Final = (1.5, 2.0, 4.0, 8.0)


def shown_above(x: int, n: int, rate: float, alpha: float) -> tuple[bool, float]:
    """Do ``x`` hits in ``n`` show, at level ``alpha``, a rate above ``rate``? Returns the
    verdict and the e-value (1 when the observed share is not above ``rate`` at all)."""
    if n <= 0 or x <= rate * n:
        return False, 1.0
    if rate <= 0.0:
        return True, math.inf
    if rate >= 1.0:
        return False, 1.0
    w, coefficients = _alternatives(rate)
    if not coefficients:  # a line a hair under 1: nothing above it can be shown
        return False, 1.0
    y = n - x
    log_e = logsumexp([w + x * a + y * b for a, b in coefficients])
    e = math.exp(log_e) if log_e < 700 else math.inf
    return e >= 1 / alpha, e


@lru_cache(maxsize=256)
def _alternatives(rate: float) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The log prior weight of each alternative rate ``q`` and its per-hit and per-miss log
    likelihood ratios ``(log(q/rate), log((1-q)/(1-rate)))``: the same for every tick of a
    window over its line (a check's line is fixed; the tick asks until the window decides)."""
    alts = guard_rates(rate, MULTIPLIERS)
    coefficients = tuple((math.log(q / rate), math.log((1 - q) / (1 - rate))) for q in alts)
    return (-math.log(len(alts)) if alts else 0.0), coefficients


def window_alpha(alpha: float, window: int, checks: int) -> float:
    """The level of one threshold check in the ``window``-th judged window (1-based)."""
    j = max(1, window)
    return alpha / (j * (j + 1)) / max(1, checks)


__all__ = ["MULTIPLIERS", "shown_above", "window_alpha"]
