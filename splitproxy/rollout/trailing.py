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
histogram of the tick first, then add that twice: three passes over the same buckets), and
only into the sum while its slot is open: the slot's histogram is the sum less the sum of the
slots before it (``trail_mark``), written out once when the next slot opens (`trail_settle`;
also for `codec`, which saves every slot). The sum is what the thresholds read every tick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from splitproxy.rollout.histograms import hist_add

if TYPE_CHECKING:
    from splitproxy.rollout.evidence import Evidence

TRAIL_SLOT: Final = 10.0  # seconds per slot of stable's trailing latency
TRAIL_WINDOW: Final = 600.0  # stable's trailing window for the latency thresholds
TRAIL_MAX_AGE: Final = 3600.0  # kept longer (up to this) while it has too few requests
TRAIL_MIN_REQUESTS: Final = 2000
STABLE_RECENT: Final = 60.0  # the window in which stable "breaches too" (incident)


def trail_add(
    e: Evidence,
    now: float,
    requests: int,
    errors: int,
    hists: Sequence[Iterable[tuple[float, int]]],
) -> None:
    """Add one tick's stable traffic (``hists``: its latency histograms, each read once,
    counts positive as everywhere) to ``e``'s trailing history, and drop what has aged out.

    Each bucket goes into the sum only: the open slot's histogram is left unwritten while
    ``e.trail_mark`` holds the sum of the slots before it (it is the sum less the mark, made
    by `trail_settle` when the next slot opens or a reader asks). A slot written out by then
    (`trail_settle` mid-slot, a state restored by `codec`) is written to bucket by bucket
    for the rest of its seconds, as before."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail, total = e.trail, e.trail_total
    current = trail[-1] if trail and trail[-1][0] == slot else None
    opening = current is None and bool(hists)
    if opening:  # a new slot may open: the open one is complete
        trail_settle(e)
        e.trail_mark = dict(total)  # the sum of every slot before the new one
    into = current[2] if current is not None and e.trail_mark is None else None
    get_total = total.get
    counted, known = 0, len(total)
    low, at = e.trail_low, e.trail_at.values()  # (a few buckets of a tick lie above `low`)
    if into is None and not at:  # no quantile asked yet (too few requests): nothing to count
        for hist in hists:
            for bound, count in hist:
                if count:
                    total[bound] = get_total(bound, 0) + count
                    counted += count
    elif into is None:
        for hist in hists:
            for bound, count in hist:
                if count:
                    total[bound] = get_total(bound, 0) + count
                    counted += count
                    if bound > low:
                        for kept in at:
                            if bound > kept.bound:
                                kept.above += count
    else:
        get_slot = into.get
        for hist in hists:
            for bound, count in hist:
                if count:
                    into[bound] = get_slot(bound, 0) + count
                    total[bound] = get_total(bound, 0) + count
                    counted += count
                    if bound > low:
                        for kept in at:
                            if bound > kept.bound:
                                kept.above += count
    e.trail_count += counted
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
            trail.append([slot, counted, {}])  # its histogram: the sum less the mark
        e.trail_requests += counted
    elif opening:
        e.trail_mark = None  # no slot opened after all: the last one stays written out
    while trail:
        oldest_slot, oldest_n = trail[0][0], trail[0][1]
        age = now - oldest_slot
        keep_for_count = e.trail_requests - oldest_n < TRAIL_MIN_REQUESTS
        if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
            break
        if len(trail) == 1:  # the open slot itself (no stable traffic for ten minutes)
            trail_settle(e)
        oldest_hist = trail.pop(0)[2]
        hist_add(total, oldest_hist.items(), -1)
        if e.trail_mark is not None:  # a slot before the open one: in the mark too
            hist_add(e.trail_mark, oldest_hist.items(), -1)
        e.trail_requests -= oldest_n
        e.trail_bounds = None  # buckets may have emptied


def trail_settle(e: Evidence) -> list[list[Any]]:
    """Write out the open slot's histogram (the sum less the mark) and return ``e.trail``,
    every slot's histogram in place: what `codec` saves. Changes nothing that is read."""
    mark = e.trail_mark
    if mark is not None:
        e.trail_mark = None
        if e.trail:
            get = mark.get
            e.trail[-1][2] = {
                bound: count - get(bound, 0)
                for bound, count in e.trail_total.items()
                if count != get(bound, 0)
            }
    return e.trail


class QuantileAt:
    """Where a quantile of stable's trailing sum stood when last asked: its bucket (``bound``,
    at ``index`` of the sorted bounds) and the requests in the buckets above it, which
    `trail_add` keeps counting as the tick's requests come in."""

    __slots__ = ("above", "bound", "index")

    def __init__(self, bound: float, index: int, above: int) -> None:
        self.bound = bound
        self.index = index
        self.above = above


def trail_quantiles(e: Evidence, qs: Sequence[float]) -> dict[float, float | None]:
    """``hist_quantiles(e.trail_total, qs)``, from where each quantile stood the last time.

    The sum's bounds are sorted again only when `trail_add` changed which buckets it has (a
    new latency bucket, an aged-out slot, a sum written by `codec`): the tick asks every
    second, and after the first minutes a tick seldom opens a bucket. Between two such
    changes the sum (``e.trail_count``) and the requests above each quantile's last bucket
    (`QuantileAt`) are kept up to date by `trail_add`, so the quantile is found by moving a
    bucket or two from where it was (it seldom moves), where walking down from the top
    crossed the ten to twenty buckets above p95 every tick and summed every bucket. The
    same bucket as the walk from the top: both compare the same integer cumulative counts
    with the same ``q * total`` (`tests/unit/rollout/test_trail_quantiles.py`)."""
    total = e.trail_total
    bounds = e.trail_bounds
    if bounds is None or len(bounds) != len(total):
        bounds = e.trail_bounds = sorted(total, reverse=True)
        e.trail_count = sum(total.values())
        e.trail_at = {}
    n = e.trail_count
    if n <= 0 or not bounds:
        return dict.fromkeys(qs)
    at = e.trail_at
    out: dict[float, float | None] = {}
    last = len(bounds) - 1
    low = math.inf  # the smallest bound found
    for q in qs:
        kept = at.get(q)
        if kept is None:  # from the top, as `histograms` walks
            kept = at[q] = QuantileAt(bounds[0], 0, 0)
        i = kept.index
        rank = q * n
        seen = n - kept.above  # the cumulative count up to and including bounds[i]
        if seen >= rank:  # down while the next bucket still reaches the rank
            while i < last:
                below = seen - total[bounds[i]]
                if below < rank:
                    break
                seen = below
                i += 1
        else:  # up to the first that reaches it (the top, if none: q > 1)
            while i:
                i -= 1
                seen += total[bounds[i]]
                if seen >= rank:
                    break
        kept.bound = out[q] = found = bounds[i]
        kept.index = i
        if found < low:
            low = found
        kept.above = n - seen
    if len(at) == len(out):  # (the usual tick: every quantile kept was asked, so is in out)
        e.trail_low = low
    else:
        e.trail_low = min([kept.bound for kept in at.values()]) if at else math.inf
    return out
