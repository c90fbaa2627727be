"""The attribution test's likelihood ratios per event (pure; stdlib ``math`` only).

Under a rate ratio ``r``, an event of a unit routed to the candidate with probability ``p``
comes from the candidate with probability `q_of` ``(r, p)``; one candidate event multiplies the
likelihood ratio of ``r`` against the null by ``q/p``, one stable event by ``(1−q)/(1−p)``.
`sequential.AttributionTest` adds their logs, per grid point, for every batch of events:
`coefficients` are those logs, and `coefficient_table` keeps them per grid so a batch looks up
its ``p`` alone.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final

Coefficients = tuple[tuple[float, float], ...]


def q_of(r: float, p: float) -> float:
    """The chance an event comes from the candidate when its rate is ``r`` × stable's."""
    return r * p / (r * p + 1.0 - p)


@lru_cache(maxsize=4096)
def coefficients(p: float, grid: tuple[float, ...]) -> Coefficients:
    """Per grid point: the log-likelihood ratio of one candidate and one stable event."""
    out = []
    for r in grid:
        q = q_of(r, p)
        out.append((math.log(q / p), math.log((1 - q) / (1 - p))))
    return tuple(out)


TABLE_MAX: Final = 4096  # p values kept per grid (a sticky route has one per realized share)


@lru_cache(maxsize=64)
def coefficient_table(grid: tuple[float, ...]) -> dict[float, Coefficients]:
    """One grid's `coefficients` by ``p``, filled as they are asked for: a test holds its
    grid's table, so an update looks up ``p`` alone (`coefficients` hashes the grid, eight
    floats, on every call). Emptied when full: entries are remade, exactly, when asked again."""
    return {}


def coefficients_in(
    table: dict[float, Coefficients], p: float, grid: tuple[float, ...]
) -> Coefficients:
    """``coefficients(p, grid)`` through ``grid``'s `coefficient_table`."""
    coefs = table.get(p)
    if coefs is None:
        if len(table) >= TABLE_MAX:
            table.clear()
        coefs = table[p] = coefficients(p, grid)
    return coefs


__all__ = [
    "TABLE_MAX",
    "Coefficients",
    "coefficient_table",
    "coefficients",
    "coefficients_in",
    "q_of",
]
