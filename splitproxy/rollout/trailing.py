"""Stable's trailing history, as `evidence.Evidence.fold` keeps it each tick (pure).

Two records of stable's past outlive a rollout (the Evidence's ``recent`` and ``trail``, saved
with it by `codec`, which makes ``trail_total``, ``trail_requests`` and ``trail_open`` from
the slots on load, `trail_restore`):

- ``recent``: stable's requests and errors per `TRAIL_SLOT` seconds over the last
  `STABLE_RECENT` (the guard's incident rule);
- ``trail``: stable's latency histogram per `TRAIL_SLOT` seconds over about `TRAIL_WINDOW`
  (kept up to `TRAIL_MAX_AGE` while it holds fewer than `TRAIL_MIN_REQUESTS`), and
  ``trail_total``, the sum of its *closed* slots, from which the latency comparison's
  thresholds are drawn.

*Closed slots.* The slot of the latest tick with stable latency is open (``trail_open``): the
tick's stable bins are written into it alone, once each (`trail_begin`, `trail_sketch` /
`trail_pairs`, `trail_end`). The first tick of a later slot closes it (`trail_close`, one
pass over its histogram into the sum), so the sum, and the thresholds drawn from it, change
when a slot closes (at most every `TRAIL_SLOT` seconds), when a slot ages out, or when `codec`
loads a state (which reads the last saved slot as the open one): ``trail_changed`` tells
`Evidence.fold` to draw them again; between these it reuses the same thresholds. The
thresholds are therefore *predictable*: fixed before the data they judge, as the latency
comparison's validity needs (`sequential`). No request of the open slot, the current tick's
included, is in the sum the tick's requests are judged against. A 600-s trailing quantile
moved by one more second (or ten) of stable's data is the same threshold for any practical
purpose; the thresholds now lag by up to one slot.

Before the tenth round the sum held every tick before the current one: each stable bin was
written twice (the sum and its slot), and counts above each kept quantile were kept up to
date so that the quantiles could be found again every tick from where they stood (a
``QuantileAt`` per quantile). With the sum written once per slot, the quantiles are walked
afresh over it (`histograms.hist_quantiles`) when it changes, and that machinery is gone.

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

from splitproxy.rollout.histograms import hist_add, hist_quantiles
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
    """One tick's stable latency on its way into the open slot: `trail_begin` (at the tick's
    first stable histogram), `trail_sketch` / `trail_pairs` for each, `trail_end`."""

    __slots__ = ("counted", "current", "into")

    def __init__(self, current: list[Any] | None, into: dict[int, int]) -> None:
        self.current = current  # the open slot, if it is ``now``'s (None: a new one)
        self.into = into  # the slot's histogram (a new slot's: kept if it gets a request)
        self.counted = 0


def trail_close(e: Evidence, now: float) -> None:
    """Before a tick at ``now``: the open slot, if ``now`` lies outside it, joins the sum (one
    pass over its histogram) and the thresholds are to be drawn again (``trail_changed``)."""
    if e.trail_open:
        last = e.trail[-1]
        if last[0] != math.floor(now / TRAIL_SLOT) * TRAIL_SLOT:
            hist_add(e.trail_total, last[2].items())
            e.trail_open = False
            e.trail_changed = True


def trail_begin(e: Evidence, now: float) -> TrailTick:
    """Before the tick's first stable histogram is added: the open slot goes on, if it is
    ``now``'s, or a new one opens."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail = e.trail
    if e.trail_open and trail[-1][0] == slot:
        current = trail[-1]
        return TrailTick(current, current[2])
    return TrailTick(None, {})


def trail_sketch(
    tick: TrailTick,
    bins: Mapping[int, int],
    limits: Sequence[int] = (),
    lowest: int = ABOVE_ALL,
    above: list[int] | None = None,
) -> None:
    """Add a sketch's bins (``bins``: `sketch.LatencySketch.bins`, counts positive) to the
    open slot, and, in the same pass, count into ``above[j]`` the requests above ``limits[j]``
    (ordinals; ``lowest`` the smallest): the tally's slow counts of the same sketch."""
    into = tick.into
    get = into.get
    ords = ORDINALS
    if above is None:
        for key, count in bins.items():
            o = ords[key]
            into[o] = get(o, 0) + count
    else:
        for key, count in bins.items():
            o = ords[key]
            into[o] = get(o, 0) + count
            if o > lowest:  # (a few buckets of a tick)
                for j, c in enumerate(limits):
                    if o > c:
                        above[j] += count
    tick.counted += sum(bins.values())


def trail_pairs(tick: TrailTick, hist: Iterable[tuple[float, int]]) -> None:
    """`trail_sketch` for a histogram of ``(bound, count)`` pairs (a `Sample`'s)."""
    into = tick.into
    get = into.get
    for bound, count in hist:
        if count:
            o = ordinal_of(bound)
            into[o] = get(o, 0) + count
            tick.counted += count


def trail_end(e: Evidence, now: float, requests: int, errors: int, tick: TrailTick | None) -> None:
    """After the tick's stable histograms (``tick``: None without any): its requests and
    errors into the last minute, the slot's count, and what has aged out dropped."""
    slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
    trail = e.trail
    counted = tick.counted if tick is not None else 0
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
            trail_close(e, now)  # (the fold closed it already; `trail_add` alone may not)
            trail.append([slot, counted, tick.into])
            e.trail_open = True
        e.trail_requests += counted
    while trail:
        oldest_slot, oldest_n = trail[0][0], trail[0][1]
        age = now - oldest_slot
        keep_for_count = e.trail_requests - oldest_n < TRAIL_MIN_REQUESTS
        if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
            break
        oldest = trail.pop(0)
        e.trail_requests -= oldest_n
        if e.trail_open and not trail:  # (the open slot, never in the sum: a clock moved back)
            e.trail_open = False
        else:
            hist_add(e.trail_total, oldest[2].items(), -1)
            e.trail_changed = True


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
            trail_pairs(tick, hist)
    trail_end(e, now, requests, errors, tick)


def trail_restore(e: Evidence) -> None:
    """The sum made afresh from the slots (`codec`, a state loaded): every slot but the last,
    which is read as the open one (a tick in a later slot closes it)."""
    total: dict[int, int] = {}
    trail = e.trail
    for _, _, hist in trail[:-1]:
        hist_add(total, hist.items())
    e.trail_total = total
    e.trail_requests = sum([int(n) for _, n, _ in trail])
    e.trail_open = bool(trail)
    e.trail_changed = True


def trail_quantiles(e: Evidence, qs: Sequence[float]) -> dict[float, float | None]:
    """``hist_quantiles`` of the sum of the closed slots, by its bounds (walked afresh: the
    fold asks only when the sum changed, at most once a slot but for aged-out slots)."""
    found = hist_quantiles(e.trail_total, qs)
    return {q: None if o is None else bound_of(o) for q, o in found.items()}
