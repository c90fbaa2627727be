"""One tick's traffic, summed for `evidence.Evidence.fold` (pure).

`Evidence.fold` needs, per tick: each version's requests and errors (and its errors with a
sticky user's counted once per bucket, for the guard and the incident rule), the candidate's
requests, errors and latency (the step window), and, for the comparisons with stable, the
events per candidate probability ``p`` (pooled and per path class: errors, a sticky user's
first error only) and the slow requests per quantile and ``p``. That is a `Tally`, made here
from either input:

- `tally_samples`: from `Sample`s (tests, pooled windows read through `Period`s, anything
  built by hand): one pass over the samples;
- `tally_buckets`: from the live buckets themselves (`samples.BucketFeed`, the controller's
  path every tick), without a `Sample` per class, version and bucket in between (about
  fifteen per route and tick, and half the fold's loop). It walks the buckets as
  `samples.bucket_samples` does and adds up what each sample would have added, in the order
  it would have (the sticky users' tables are asked in the same order; the dictionaries of
  events gain their keys in the same order, so the tests are updated in the same order, bit
  for bit). ``tests/unit/rollout/test_tally.py`` pits it against `tally_samples` of the same
  buckets' samples, and the evidence folded either way.

Both leave the step window updated (with ``tests``), the unit tables asked, as the fold
always did, and stable's latency added to its trailing history (`trailing`) as it is read:
`tally_buckets` walks each sketch's bins once, stable's into its open trailing slot and the
candidate's into the step window, counting the slow requests of either on the way (where the
tick used to walk each sketch two or three times, as zipped pairs). `Evidence.fold` applies
the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from splitproxy.rollout.histograms import hist_merge, slow_counts
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.samples import BucketFeed, share_of
from splitproxy.rollout.sketch import BOUNDS, ordinal_of
from splitproxy.rollout.trailing import (
    ABOVE_ALL,
    TrailTick,
    trail_add,
    trail_begin,
    trail_end,
    trail_sketch,
)

if TYPE_CHECKING:
    from splitproxy.rollout.evidence import Evidence


class Tally(NamedTuple):
    """One tick's sums (see the module docstring)."""

    cand_n: int
    cand_x: int
    cand_gx: int  # errors with a sticky user's counted once per bucket (the guard)
    stab_n: int
    stab_x: int
    stab_gx: int
    pooled: dict[float, list[int]]  # p -> [candidate events, stable events]
    classes: dict[tuple[float, str], list[int]]  # (p, path class) -> the same
    slow: dict[tuple[float, float], list[int]]  # (q, p) -> [candidate, stable]


Limits = tuple[tuple[float, float], ...]  # (q, the latency a request is slow beyond)
_limit = itemgetter(1)
_new = tuple.__new__


class Cuts(NamedTuple):
    """``limits`` as `tally_buckets` reads them (`cuts_of`): made once per set of thresholds
    (`Evidence.fold` keeps them while stable's closed slots do not change, see `trailing`)."""

    limits: Limits
    qs: list[float]
    cuts: list[float]  # floats, for the candidate's bins (read as bounds, into the window)
    lowest: float  # the smallest of them (inf: none)
    ords: list[int]  # their ordinals, for stable's bins (read as ordinals, into its slot)
    lowest_ord: int


def cuts_of(limits: Limits) -> Cuts:
    """``limits`` prepared for the tally (see `Cuts`)."""
    cuts = [c for _, c in limits]
    ords = [ordinal_of(c) for c in cuts]
    return Cuts(
        limits,
        [q for q, _ in limits],
        cuts,
        min(cuts, default=math.inf),
        ords,
        min(ords, default=ABOVE_ALL),
    )


def tally(
    e: Evidence,
    now: float,
    samples: Sequence[Sample],
    tests: bool,
    limits: Limits,
    cuts: Cuts | None = None,
) -> Tally:
    """`tally_buckets` for a `BucketFeed`, `tally_samples` for anything else (``cuts``:
    `cuts_of(limits)`, if made already)."""
    if type(samples) is BucketFeed:
        return tally_buckets(e, now, samples, tests, limits, cuts)
    return tally_samples(e, now, samples, tests, limits)


def tally_samples(
    e: Evidence, now: float, samples: Sequence[Sample], tests: bool, limits: Limits
) -> Tally:
    """The tick's sums from its samples (with ``tests``, the step window updated; stable's
    latency added to its trailing history)."""
    cand_n = cand_x = stab_n = stab_x = 0
    cand_gx = stab_gx = 0
    pooled: dict[float, list[int]] = {}
    classes: dict[tuple[float, str], list[int]] = {}
    slow: dict[tuple[float, float], list[int]] = {}
    window = e.window
    guard_count, first = e.guard_units.count, e.units.first
    lowest = min(map(_limit, limits), default=0.0)
    stable_latency: list[Iterable[tuple[float, int]]] = []  # (`trailing.trail_add`'s)
    # each sample unpacked once (a named tuple's fields are properties: eight lookups)
    for version, requests, errors, p, path_class, latency, unit_errors, units in samples:
        cand = version == "candidate"
        once = errors - unit_errors  # for the guard and the incident rule
        if units:
            once += sum(guard_count(now, u) for u in units)
        if cand:
            cand_n += requests
            cand_x += errors
            cand_gx += once
        else:
            stab_n += requests
            stab_x += errors
            stab_gx += once
            if latency:
                stable_latency.append(latency)
        if not tests:
            continue
        if cand:
            window.requests += requests
            window.errors += errors
            if latency:
                hist_merge(window.latency, latency)
        if p is None or not 0.0 < p < 1.0:
            continue
        i = 0 if cand else 1
        # per request, but a sticky user's first error only (`units`)
        events = errors - unit_errors
        if units:
            events += sum(first(u) for u in units)
        if events:
            pooled.setdefault(p, [0, 0])[i] += events
            if path_class is not None:
                classes.setdefault((p, path_class), [0, 0])[i] += events
        if latency and limits:
            for q, above in slow_counts(latency, limits, lowest):
                slow.setdefault((q, p), [0, 0])[i] += above
    trail_add(e, now, stab_n, stab_x, stable_latency)
    return Tally(cand_n, cand_x, cand_gx, stab_n, stab_x, stab_gx, pooled, classes, slow)


def tally_buckets(
    e: Evidence,
    now: float,
    feed: BucketFeed,
    tests: bool,
    limits: Limits,
    cuts: Cuts | None = None,
) -> Tally:
    """`tally_samples(e, now, feed.samples(), tests, limits)` without making the samples:
    each bucket's counts read where they are (see the module docstring; ``cuts``:
    `cuts_of(limits)`, if made already)."""
    n_by = [0, 0]  # per version (0 stable, 1 candidate): requests, errors, guard's errors
    x_by = [0, 0]
    gx_by = [0, 0]
    pooled: dict[float, list[int]] = {}
    classes: dict[tuple[float, str], list[int]] = {}
    slow: dict[tuple[float, float], list[int]] = {}
    window = e.window
    guard_count, first = e.guard_units.count, e.units.first
    # the slow counts' limits: floats for the candidate's bins and ordinals for stable's
    if cuts is None:
        cuts = cuts_of(limits)
    _, qs, floats, lowest, cut_ords, lowest_ord = cuts
    trail: TrailTick | None = None  # stable's latency on its way into its open slot
    judge_synthetic = feed.judge_synthetic
    for b in feed.buckets:
        p = b.probability
        latency = b.latency
        p_latency = p
        if b.sticky and p is not None:
            p_latency = share_of(latency[1].count, latency[0].count)
        # the class and remainder samples' p, and the latency samples' (`bucket_samples`):
        # events and slow counts only at an informative one, and only with ``tests``
        judged = slow_too = False
        pj = pl = 0.0
        if tests and p is not None and 0.0 < p < 1.0:
            judged, pj = True, p
        if tests and limits and p_latency is not None and 0.0 < p_latency < 1.0:
            slow_too, pl = True, p_latency
        req, err, names = b.class_requests, b.class_errors, b.class_names
        unit_err = b.class_unit_errors
        syn = b.synthetic if judge_synthetic else None
        for v in (0, 1):
            i = 1 - v  # the events' index: [candidate, stable]
            requests, errors = b.requests[v], b.errors[v]
            once = errors  # less the sticky users' errors, plus those the guard counts
            events = 0  # this version's events at p, pooled
            # without errors of this version in the bucket, its classes have none either, nor
            # sticky users with errors (a cell's errors are some of the version's): the walk
            # over them would count nothing (most buckets: 0.5 % of 20 requests)
            if errors:
                by_cell: dict[int, list[int]] | None = None
                if unit_err is not None:
                    by_cell = {}
                    for unit, c in b.error_units[v].items():
                        by_cell.setdefault(c, []).append(unit)
                cell = v - 2  # class i's cell of this version: 2 * i + v; the other's: cell ^ 1
                for name in names:
                    cell += 2
                    n = req[cell]
                    if not (n or req[cell ^ 1]):  # no sample of this class in either version
                        continue
                    x = err[cell]
                    if not (n or x):
                        continue
                    errors -= x  # what is left is the remainder sample's
                    ev = x
                    if by_cell is not None and unit_err is not None:
                        ue = unit_err[cell]
                        once -= ue
                        ev -= ue
                        units = by_cell.get(cell)
                        if units:
                            once += sum(guard_count(now, u) for u in units)
                            if judged:
                                ev += sum(first(u) for u in units)
                    if judged and ev:
                        events += ev
                        classes.setdefault((pj, name), [0, 0])[i] += ev
            if judged:
                events += errors  # the remainder's errors (requests outside the classes)
                if events:
                    pooled.setdefault(pj, [0, 0])[i] += events
            sketch = latency[v]
            if sketch.count and (v == 0 or tests):
                # one pass over the sketch's bins, in their own order (sums and counts need
                # none): stable's into its open trailing slot, the candidate's into the step
                # window, and the slow counts of either on the way
                above = [0] * len(floats) if slow_too else None
                if v == 0:
                    if trail is None:
                        trail = trail_begin(e, now)
                    trail_sketch(trail, sketch.bins, cut_ords, lowest_ord, above)
                else:
                    _window_add(window.latency, sketch.bins, floats, lowest, above)
                if above is not None:
                    for j, n in enumerate(above):
                        if n:
                            slow.setdefault((qs[j], pl), [0, 0])[i] += n
            if v == 1 and tests:
                window.requests += requests
                window.errors += b.errors[1]
            if syn is not None:
                sn, sx = syn.requests[v], syn.errors[v]
                if sn or sx:
                    requests += sn
                    once += sx
                    bins = syn.latency[v].bins
                    if bins:
                        if v == 0:
                            if trail is None:
                                trail = trail_begin(e, now)
                            trail_sketch(trail, bins)
                        elif tests:
                            _window_add(window.latency, bins, (), math.inf, None)
                    if v == 1 and tests:
                        window.requests += sn
                        window.errors += sx
                    x_by[v] += sx
            n_by[v] += requests
            x_by[v] += b.errors[v]
            gx_by[v] += once
    trail_end(e, now, n_by[0], x_by[0], trail)
    # (the named tuple's own ``__new__`` is a Python function: one call per route and tick)
    return _new(
        Tally, (n_by[1], x_by[1], gx_by[1], n_by[0], x_by[0], gx_by[0], pooled, classes, slow)
    )


def _window_add(
    into: dict[float, int],
    bins: Mapping[int, int],
    cuts: Sequence[float],
    lowest: float,
    above: list[int] | None,
) -> None:
    """A sketch's bins (positive counts) into the step window's histogram, and into
    ``above[j]`` the requests above ``cuts[j]`` (``lowest``: the smallest; ``above`` None:
    none counted): `histograms.hist_merge` and `histograms.slow_counts` in one pass."""
    get = into.get
    bounds = BOUNDS
    for key, count in bins.items():
        bound = bounds[key]
        into[bound] = get(bound, 0) + count
        if bound > lowest and above is not None:
            for j, c in enumerate(cuts):
                if bound > c:
                    above[j] += count
