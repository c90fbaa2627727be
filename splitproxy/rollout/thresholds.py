"""Threshold checks judged with their sample size (pure; stdlib ``math`` only).

A threshold such as ``{metric: error_rate, max: 1%}`` is a statement about the candidate's
*rate*, and a step window only holds a sample of it: 3 errors in 120 requests is 2.5 %, yet
a candidate at 0.5 % shows that often enough to roll back several A/A rollouts in a hundred
when the raw ratio is compared with the line. So a threshold fails only when the window
*shows*, beyond its share of α, that the rate is on the wrong side of the line: an exact
one-sided binomial test of ``H0: rate ≤ max`` (``≥ min``) on the window's counts.

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


def binomial_upper_tail(n: int, x: int, p: float) -> float:
    """``P(X ≥ x)`` for ``X ~ Binomial(n, p)``, summed exactly from the pmf at ``x`` up."""
    if x <= 0:
        return 1.0
    if x > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_term = (
        math.lgamma(n + 1)
        - math.lgamma(x + 1)
        - math.lgamma(n - x + 1)
        + x * math.log(p)
        + (n - x) * math.log1p(-p)
    )
    term = math.exp(log_term)
    total = term
    odds = p / (1 - p)
    k = x
    while k < n:
        term *= (n - k) / (k + 1) * odds
        k += 1
        total += term
        if term <= total * 1e-15 and (n - k) / (k + 1) * odds < 1:
            break
    return min(1.0, total)


def exceeds(x: int, n: int, rate: float, alpha: float) -> tuple[bool, float]:
    """Do ``x`` hits in ``n`` show, at level ``alpha``, a rate above ``rate``? Returns the
    verdict and the p-value (1 when the observed share is not above ``rate`` at all)."""
    if n <= 0 or x <= rate * n:
        return False, 1.0
    p_value = binomial_upper_tail(n, x, rate)
    return p_value <= alpha, p_value


def window_alpha(alpha: float, window: int, checks: int) -> float:
    """The level of one threshold check in the ``window``-th judged window (1-based)."""
    j = max(1, window)
    return alpha / (j * (j + 1)) / max(1, checks)


__all__ = ["binomial_upper_tail", "exceeds", "window_alpha"]
