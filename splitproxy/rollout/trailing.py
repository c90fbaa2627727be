"""Stable's trailing history, as `evidence.Evidence.fold` keeps it each tick (pure).

Two records of stable's past outlive a rollout (they are the Evidence's ``recent``, ``trail``,
``trail_total`` and ``trail_requests``, saved with it by `codec`):

- ``recent``: stable's requests and errors per `TRAIL_SLOT` seconds over the last
  `STABLE_RECENT` (the guard's incident rule);
- ``trail``: stable's latency histogram per `TRAIL_SLOT` seconds over about `TRAIL_WINDOW`
  (kept up to `TRAIL_MAX_AGE` while it holds fewer than `TRAIL_MIN_REQUESTS`), with its sum
  ``trail_total``, from which the latency comparison's thresholds are drawn.

`trail_add` takes one tick's stable traffic, its latency as the samples' histograms: each is
added straight into its slot and into the sum in one pass (the tick used to merge them into a
histogram of the tick first, then add that twice: three passes over the same buckets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from splitproxy.rollout.histograms import hist_add, hist_quantiles_from
from splitproxy.rollout.messages import Histogram

if TYPE_CHECKING:
    from splitproxy.rollout.evidence import Evidence

TRAIL_SLOT: Final = 10.0  # seconds per slot of stable's trailing latency
TRAIL_WINDOW: Final = 600.0  # stable's trailing window for the latency thresholds
TRAIL_MAX_AGE: Final = 3600.0  # kept longer (up to this) while it has too few requests
TRAIL_MIN_REQUESTS: Final = 2000
STABLE_RECENT: Final = 60.0  # the window in which stable "breaches too" (incident)


def trail_add(
    e: Evidence, now: float, requests: int, errors: int, hists: Sequence[Histogram]
) -> None:
    """Add one tick's stable traffic (``hists``: its samples' latency histograms, counts
    positive as everywhere) to ``e``'s trailing history, and drop what has aged out."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail, total = e.trail, e.trail_total
    current = trail[-1] if trail and trail[-1][0] == slot else None
    into: dict[float, int] = current[2] if current is not None else {}
    get_slot, get_total = into.get, total.get
    counted, known = 0, len(total)
    for hist in hists:
        for bound, count in hist:
            if count:
                into[bound] = get_slot(bound, 0) + count
                total[bound] = get_total(bound, 0) + count
                counted += count
    if len(total) != known:  # a new bucket: the sorted bounds kept for the quantiles are stale
        e.trail_bounds = None
    recent = e.recent
    if requests or counted:
        if recent and recent[-1][0] == slot:
            recent[-1][1] += requests
            recent[-1][2] += errors
        else:
            recent.append([slot, requests, errors])
    while recent and recent[0][0] < now - STABLE_RECENT:
        recent.pop(0)
    if counted:
        if current is not None:
            current[1] += counted
        else:
            trail.append([slot, counted, into])
        e.trail_requests += counted
    while trail:
        oldest_slot, oldest_n, oldest_hist = trail[0]
        age = now - oldest_slot
        keep_for_count = e.trail_requests - oldest_n < TRAIL_MIN_REQUESTS
        if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
            break
        trail.pop(0)
        hist_add(total, oldest_hist.items(), -1)
        e.trail_requests -= oldest_n
        e.trail_bounds = None  # buckets may have emptied


def trail_quantiles(e: Evidence, qs: Sequence[float]) -> dict[float, float | None]:
    """``hist_quantiles(e.trail_total, qs)``, with the sum's bounds sorted again only when
    `trail_add` changed which buckets it has (a new latency bucket, an aged-out slot): the
    tick asks every second, and after the first minutes a tick seldom opens a bucket."""
    total = e.trail_total
    bounds = e.trail_bounds
    if bounds is None or len(bounds) != len(total):  # (also a sum written by `codec`)
        bounds = e.trail_bounds = sorted(total, reverse=True)
    return hist_quantiles_from(total, bounds, qs)
