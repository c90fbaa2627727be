"""From the live windows to the analyzer's input: `windows.Period` -> `analyzer.Sample` (pure).

``controller.py`` ticks each route's analyzer with the buckets closed since the previous tick::

    analyzer = Analyzer(route, spec, path_class_slots=path_class_slots(recorder.windows), ...)
    ...
    judge = spec.traffic is not None and spec.traffic.judge
    samples = samples_for(recorder.observations(route, last, until=now), judge_synthetic=judge)

What one bucket becomes, per version (a sample only where there is something to say):

- one sample per path class with traffic: its requests and errors, the bucket's candidate
  probability ``p``, ``path_class`` set, no latency. Together they add up to the version's
  counts, so the analyzer's pooled error test sees every request exactly once and its
  per-class tests see each in its class (`windows.OTHER_CLASS` is the analyzer's overflow slot);
- one latency sample: the version's whole histogram (the sketch is kept per version, not per
  class) with zero requests and errors, ``path_class`` None, the same ``p``;
- requests that no class holds (a `Period` built without classes) as one sample with
  ``path_class`` None, so the pooled counts stay exact;
- on a sticky route (`windows.Period.sticky`), each class sample also names the users whose
  errors it holds (``unit_errors``, ``units``: the analyzer counts a user's first error once),
  and the latency sample's ``p`` is the bucket's *realized* candidate share of requests with
  a latency, rounded up to a thousandth: a user's requests all go one way, so the weight is
  not the chance that a request was the candidate's; given the bucket's requests, a slow one
  is the candidate's with probability at most that share when the version makes no
  difference (rounding up keeps the one-sided test conservative);
- with ``judge_synthetic``, the synthetic requests as one sample with ``p=None``: they count
  for the absolute checks, the guard and the step's ``min_requests``, never for the comparisons
  with stable (they were not routed at random). Without it they are left out entirely.

The controller's own path makes no samples at all: `window_feed` hands the analyzer the live
buckets as a `BucketFeed`, which `Evidence.fold` folds as they are (``tally.tally_buckets``:
the sums these samples would give, in their order) and which turns into these samples only
if something else reads it as a sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from splitproxy.config import Rollout, Route
from splitproxy.config.vocabulary import VERSIONS
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.windows import Period, Windows, _Bucket


def samples_for(periods: Iterable[Period], *, judge_synthetic: bool = False) -> list[Sample]:
    """The analyzer's samples for a sequence of buckets (see the module docstring)."""
    out: list[Sample] = []
    for period in periods:
        p = period.probability
        p_latency = realized_share(period) if period.sticky and p is not None else p
        for version in VERSIONS:
            counts = period.version(version)
            requests, errors = counts.requests, counts.errors
            for cls in period.path_classes:
                n, x = cls.counts(version)
                if n or x:
                    ue, units = cls.units(version)
                    out.append(Sample(version, n, x, p, cls.name, (), ue, units))
                    requests -= n
                    errors -= x
            if requests or errors:
                out.append(Sample(version, requests, errors, p, None))
            if counts.latency.count:
                hist = counts.latency.histogram()
                out.append(Sample(version, 0, 0, p_latency, None, hist))
            if judge_synthetic:
                syn = period.synthetic(version)
                if syn.requests or syn.errors:
                    hist = syn.latency.histogram()
                    out.append(Sample(version, syn.requests, syn.errors, None, None, hist))
    return out


def window_samples(
    windows: Windows,
    route: str,
    since: float,
    until: float,
    *,
    judge_synthetic: bool = False,
) -> tuple[list[Sample], float | None]:
    """``samples_for(windows.observations(route, since, until), ...)`` and the largest
    ``end`` of those buckets (None without any), read from the live buckets directly: the
    controller's path every tick, which skips building a `Period` (and copying its sketches)
    per bucket. The same samples, in the same order, as the `Period` path (tested).

    Windows whose reads are not their own buckets (``workers.pooling.PooledWindows`` answers
    `observations` from the buckets pooled from every worker or replica) are read through
    their `observations`, as before."""
    if type(windows).observations is not Windows.observations:
        periods = windows.observations(route, since, until)
        end = max(p.end for p in periods) if periods else None
        return samples_for(periods, judge_synthetic=judge_synthetic), end
    buckets, end = _live_buckets(windows, route, since, until)
    return (bucket_samples(buckets, judge_synthetic), end) if buckets else ([], None)


def window_feed(
    windows: Windows,
    route: str,
    since: float,
    until: float,
    *,
    judge_synthetic: bool = False,
) -> tuple[Sequence[Sample], float | None]:
    """`window_samples`, with the live buckets handed on as a `BucketFeed` (no `Sample`s
    made: `Evidence.fold` folds the buckets themselves) where the windows are this process's
    own; the controller's path every tick."""
    if type(windows).observations is not Windows.observations:
        return window_samples(windows, route, since, until, judge_synthetic=judge_synthetic)
    window = windows.get(route)  # (`_live_buckets` written out: one call fewer a route-tick)
    buckets = window.buckets(since, until) if window is not None else None
    if not buckets or window is None:
        return [], None
    return BucketFeed(buckets, judge_synthetic), buckets[-1].start + window.resolution


def _live_buckets(
    windows: Windows, route: str, since: float, until: float
) -> tuple[list[_Bucket], float | None]:
    """The route's own live buckets in ``[since, until)`` and the end of the last (none: an
    empty list and None)."""
    window = windows.get(route)
    if window is None:
        return [], None
    buckets = window.buckets(since, until)
    return (buckets, buckets[-1].start + window.resolution) if buckets else ([], None)


class BucketFeed(Sequence[Sample]):
    """A tick's live buckets as the analyzer's samples: `Evidence.fold` reads the buckets
    (``tally.tally_buckets``: the same sums, in the same order, without a `Sample` each);
    anyone else who reads it as a sequence gets `bucket_samples`' samples, made on the first
    read. Valid only while the buckets do not change: within the tick that read them (the
    windows are written by the same event loop, never during a tick)."""

    __slots__ = ("_samples", "buckets", "judge_synthetic")

    def __init__(self, buckets: list[_Bucket], judge_synthetic: bool) -> None:
        self.buckets = buckets
        self.judge_synthetic = judge_synthetic
        self._samples: list[Sample] | None = None

    def samples(self) -> list[Sample]:
        """`bucket_samples` of the buckets (made once)."""
        out = self._samples
        if out is None:
            out = self._samples = bucket_samples(self.buckets, self.judge_synthetic)
        return out

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | Sequence[Sample]:
        return self.samples()[index]

    def __len__(self) -> int:
        return len(self.samples())

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples())


def bucket_samples(buckets: Iterable[_Bucket], judge_synthetic: bool) -> list[Sample]:
    """The samples of live buckets (`window_samples` without the look-up)."""
    out: list[Sample] = []
    append = out.append
    # `Sample(...)` without its generated `__new__` (a Python frame filling in the defaults,
    # about fifteen samples per route and tick): the same named tuple, every field given
    new = tuple.__new__
    for b in buckets:
        p = b.probability
        latency = b.latency
        p_latency = p
        if b.sticky and p is not None:
            p_latency = share_of(latency[1].count, latency[0].count)
        req, err, names = b.class_requests, b.class_errors, b.class_names
        unit_err = b.class_unit_errors
        for v, version in enumerate(VERSIONS):
            requests, errors = b.requests[v], b.errors[v]
            by_cell: dict[int, list[int]] | None = None
            if unit_err is not None:
                by_cell = {}
                for unit, cell in b.error_units[v].items():
                    by_cell.setdefault(cell, []).append(unit)
            cell = v - 2  # class i's cell of this version is 2 * i + v; the other's, cell ^ 1
            for name in names:
                cell += 2
                n = req[cell]
                if not (n or req[cell ^ 1]):  # no request of this class in either version
                    continue
                x = err[cell]
                if n or x:
                    if by_cell is None or unit_err is None:
                        append(new(Sample, (version, n, x, p, name, (), 0, ())))
                    else:
                        units = tuple(by_cell.get(cell, ()))
                        append(new(Sample, (version, n, x, p, name, (), unit_err[cell], units)))
                    requests -= n
                    errors -= x
            if requests or errors:
                append(new(Sample, (version, requests, errors, p, None, (), 0, ())))
            sketch = latency[v]
            if sketch.count:
                hist = sketch.histogram()
                append(new(Sample, (version, 0, 0, p_latency, None, hist, 0, ())))
            syn = b.synthetic
            if judge_synthetic and syn is not None:
                n, x = syn.requests[v], syn.errors[v]
                if n or x:
                    append(Sample(version, n, x, None, None, syn.latency[v].histogram()))
    return out


def realized_share(period: Period) -> float | None:
    """The candidate's share of the bucket's requests with a latency, rounded up to a
    thousandth; None when one version had them all (no information on who is slower)."""
    return share_of(period.candidate.latency.count, period.stable.latency.count)


def share_of(candidate: int, stable: int) -> float | None:
    """``candidate / (candidate + stable)`` rounded up to a thousandth, None at 0 or 1."""
    if not candidate or not stable:
        return None
    share = math.ceil(1000 * candidate / (candidate + stable)) / 1000
    return share if share < 1.0 else None


def path_class_slots(windows: Windows) -> int:
    """The ``path_class_slots`` to build the analyzer with: the windows' named classes per
    route (their overflow, `windows.OTHER_CLASS`, is the analyzer's own overflow slot)."""
    return windows.path_classes


def analyzer_spec(rollout: Rollout) -> Rollout:
    """The spec the analyzer sees: without hooks, and without synthetic traffic the verdicts
    ignore, so editing either restarts nothing (neither changes the evidence)."""
    update: dict[str, Any] = {}
    if rollout.hooks:
        update["hooks"] = ()
    if rollout.traffic is not None and not rollout.traffic.judge:
        update["traffic"] = None
    return rollout.model_copy(update=update) if update else rollout


def judges_synthetic(route: Route | None) -> bool:
    """Does this route's rollout count its test traffic (synthetic and preview requests) in the
    verdicts? Blue/green always does: before its switch, test traffic is all there is."""
    rollout = route.rollout if route is not None else None
    if rollout is None:
        return False
    return rollout.bluegreen or (rollout.traffic is not None and rollout.traffic.judge)
