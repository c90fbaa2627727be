"""Stable's trailing history, as `evidence.Evidence.fold` keeps it each tick (pure).

Two records of stable's past outlive a rollout (they are the Evidence's ``recent``, ``trail``,
``trail_total`` and ``trail_requests``, saved with it by `codec`):

- ``recent``: stable's requests and errors per `TRAIL_SLOT` seconds over the last
  `STABLE_RECENT` (the guard's incident rule);
- ``trail``: stable's latency histogram per `TRAIL_SLOT` seconds over about `TRAIL_WINDOW`
  (kept up to `TRAIL_MAX_AGE` while it holds fewer than `TRAIL_MIN_REQUESTS`), with its sum
  ``trail_total``, from which the latency comparison's thresholds are drawn.

The sum is what the thresholds read every tick. `tally` adds each of the tick's stable
sketches as it reads them (`trail_begin`, `trail_sketch`, `trail_end`): one pass over a
sketch's bins serves the sum, the slot's histogram, the counts above each kept quantile and the
tally's slow counts; `trail_add` does the same for histograms of ``(bound, count)`` pairs
(samples). Each bin is written to its slot as it comes, where the eighth round left the open
slot unwritten (the sum less a copy of the sum taken when the slot opened, written out when
the next one opened): that saved a dictionary write per bin, but cost, every ten seconds, the
copy, a pass over the whole sum to write the slot out and the aged-out slot taken from the copy
as well as from the sum, more than the writes it saved (about 1.2 µs a tick in a
micro-benchmark).

*Keys.* The sum and the slots are keyed by each bound's `histograms.ordinal` (an
integer that orders as the float does), not by the float: every get and set of a float key
hashed it (``_Py_HashDouble``, a few % of a late tick's instructions), and a sketch's bin is
mapped to its ordinal by one look-up (`sketch.ORDINALS`) where its float bound was one too.
The thresholds and `codec` read the floats back (`sketch.bound_of`), bit for bit, and any
bound a histogram was given (not only the sketches' layout) is kept exactly, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from splitproxy.rollout.histograms import hist_add
from splitproxy.rollout.sketch import ORDINALS, bound_of, ordinal_of

if TYPE_CHECKING:
    from splitproxy.rollout.evidence import Evidence

TRAIL_SLOT: Final = 10.0  # seconds per slot of stable's trailing latency
TRAIL_WINDOW: Final = 600.0  # stable's trailing window for the latency thresholds
TRAIL_MAX_AGE: Final = 3600.0  # kept longer (up to this) while it has too few requests
TRAIL_MIN_REQUESTS: Final = 2000
STABLE_RECENT: Final = 60.0  # the window in which stable "breaches too" (incident)
ABOVE_ALL: Final = 1 << 64  # above every float's ordinal: no bucket lies above it


class TrailTick:
    """One tick's stable latency on its way into the trailing sum: `trail_begin` (at the
    tick's first stable histogram), `trail_sketch` / `trail_pairs` for each, `trail_end`."""

    __slots__ = ("counted", "current", "into", "known")

    def __init__(self, current: list[Any] | None, into: dict[int, int], known: int) -> None:
        self.current = current  # the slot of ``now`` in ``e.trail`` (None: not there yet)
        self.into = into  # the slot's histogram (a new slot's: kept if it gets a request)
        self.known = known  # the sum's buckets before the tick
        self.counted = 0


def trail_begin(e: Evidence, now: float) -> TrailTick:
    """Before the tick's first stable histogram is added: the slot of ``now`` goes on, or a
    new one opens."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail = e.trail
    if trail and trail[-1][0] == slot:
        current = trail[-1]
        return TrailTick(current, current[2], len(e.trail_total))
    return TrailTick(None, {}, len(e.trail_total))


def trail_sketch(
    e: Evidence,
    tick: TrailTick,
    bins: Mapping[int, int],
    limits: Sequence[int] = (),
    lowest: int = ABOVE_ALL,
    above: list[int] | None = None,
) -> None:
    """Add a sketch's bins (``bins``: `sketch.LatencySketch.bins`, counts positive) to the
    sum, and, in the same pass, count into ``above[j]`` the requests above ``limits[j]``
    (ordinals; ``lowest`` the smallest): the tally's slow counts of the same sketch."""
    total = e.trail_total
    get = total.get
    into = tick.into
    get_slot = into.get
    ords = ORDINALS
    at = e.trail_at.values()
    kept_low = e.trail_low if at else ABOVE_ALL  # (no quantile asked yet: nothing to count)
    low = kept_low if kept_low < lowest else lowest
    for key, count in bins.items():
        o = ords[key]
        total[o] = get(o, 0) + count
        into[o] = get_slot(o, 0) + count
        if o > low:  # (a few buckets of a tick)
            if o > kept_low:
                for kept in at:
                    if o > kept.bound:
                        kept.above += count
            if o > lowest and above is not None:
                for j, c in enumerate(limits):
                    if o > c:
                        above[j] += count
    tick.counted += sum(bins.values())


def trail_pairs(e: Evidence, tick: TrailTick, hist: Iterable[tuple[float, int]]) -> None:
    """`trail_sketch` for a histogram of ``(bound, count)`` pairs (a `Sample`'s)."""
    total = e.trail_total
    get = total.get
    into = tick.into
    at = e.trail_at.values()
    kept_low = e.trail_low if at else ABOVE_ALL
    for bound, count in hist:
        if count:
            o = ordinal_of(bound)
            total[o] = get(o, 0) + count
            into[o] = into.get(o, 0) + count
            tick.counted += count
            if o > kept_low:
                for kept in at:
                    if o > kept.bound:
                        kept.above += count


def trail_end(e: Evidence, now: float, requests: int, errors: int, tick: TrailTick | None) -> None:
    """After the tick's stable histograms (``tick``: None without any): its requests and
    errors into the last minute, the slot's count, and what has aged out dropped."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail, total = e.trail, e.trail_total
    counted = 0
    if tick is not None:
        counted = tick.counted
        e.trail_count += counted
        if len(total) != tick.known:  # a new bucket: the sorted bounds kept are stale
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
        assert tick is not None
        if tick.current is not None:
            tick.current[1] += counted
        else:
            trail.append([slot, counted, tick.into])
        e.trail_requests += counted
    while trail:
        oldest_slot, oldest_n = trail[0][0], trail[0][1]
        age = now - oldest_slot
        keep_for_count = e.trail_requests - oldest_n < TRAIL_MIN_REQUESTS
        if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
            break
        hist_add(total, trail.pop(0)[2].items(), -1)
        e.trail_requests -= oldest_n
        e.trail_bounds = None  # buckets may have emptied


def trail_add(
    e: Evidence,
    now: float,
    requests: int,
    errors: int,
    hists: Sequence[Iterable[tuple[float, int]]],
) -> None:
    """Add one tick's stable traffic (``hists``: its latency histograms as pairs, each read
    once, counts positive as everywhere) to ``e``'s trailing history, and drop what has aged
    out: `trail_begin`, `trail_pairs` of each, `trail_end`."""
    tick = trail_begin(e, now) if hists else None
    if tick is not None:
        for hist in hists:
            trail_pairs(e, tick, hist)
    trail_end(e, now, requests, errors, tick)


class QuantileAt:
    """Where a quantile of stable's trailing sum stood when last asked: its bucket (``bound``,
    its ordinal, at ``index`` of the sorted ordinals) and the requests in the buckets above it,
    which `trail_sketch` and `trail_pairs` keep counting as the tick's requests come in."""

    __slots__ = ("above", "bound", "index")

    def __init__(self, bound: int, index: int, above: int) -> None:
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
    low = ABOVE_ALL  # the smallest bound found
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
        kept.bound = found = bounds[i]
        out[q] = bound_of(found)
        kept.index = i
        if found < low:
            low = found
        kept.above = n - seen
    if len(at) == len(out):  # (the usual tick: every quantile kept was asked, so is in out)
        e.trail_low = low
    else:
        e.trail_low = min([kept.bound for kept in at.values()]) if at else ABOVE_ALL
    return out
