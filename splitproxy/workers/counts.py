"""``/metrics`` with workers: the leader's families plus every follower's, summed.

The hot path stays as it is (plain integers per worker, `metrics.Recorder`); only a scrape does
more. Once a second each follower sends the families of its data path (`SUMMED`: requests,
durations, decisions, upstream errors, in-flight requests, mirrored copies); the leader's
`PooledRegistry` adds them, sample by sample, to its own when it is scraped. Everything else
(rollout, config, health and process metrics) is the leader's: the leader owns the rollouts
and the config, and a gauge such as a route's weight is the same in every worker.

Two families describe the workers themselves: ``splitproxy_workers`` (how many serve) and
``splitproxy_worker_requests_total{worker,pid}`` (the requests each one answered), so a
dashboard can see the split between them; plus ``splitproxy_worker_restarts_total``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# the families each worker's data path counts on its own (see metrics.py)
SUMMED: Final = frozenset(
    {
        "splitproxy_requests",
        "splitproxy_synthetic_requests",
        "splitproxy_request_duration_seconds",
        "splitproxy_upstream_response_header_duration_seconds",
        "splitproxy_upstream_errors",
        "splitproxy_routing_decisions",
        "splitproxy_requests_in_flight",
        "splitproxy_mirror_requests",
        "splitproxy_mirror_duration_seconds",
    }
)
_REQUESTS: Final = "splitproxy_requests_total"


def data_path_families(registry: Collector) -> list[Metric]:
    """The `SUMMED` families of one worker's registry, to send to the leader."""
    return [family for family in registry.collect() if family.name in SUMMED]


def _requests(families: Iterable[Metric]) -> float:
    return sum(
        s.value
        for f in families
        if f.name == "splitproxy_requests"
        for s in f.samples
        if s.name == _REQUESTS
    )


@dataclass
class WorkerCounts:
    """The latest families of each follower, and who is serving."""

    leader_pid: int = field(default_factory=os.getpid)
    families: dict[int, list[Metric]] = field(default_factory=dict)  # follower -> families
    pids: dict[int, int] = field(default_factory=dict)  # worker -> pid (the leader's included)
    restarts: int = 0

    def update(self, worker: int, pid: int, families: list[Metric]) -> None:
        if worker in self.pids:  # not from a worker that is gone meanwhile
            self.families[worker] = families
            self.pids[worker] = pid

    def set_members(self, pids: dict[int, int], restarts: int) -> None:
        self.pids = dict(pids)
        self.restarts = restarts
        for gone in [w for w in self.families if w not in pids]:
            del self.families[gone]

    def merge(self, local: Iterable[Metric]) -> Iterator[Metric]:
        """The leader's families with the followers' `SUMMED` ones added."""
        remote: dict[str, list[Metric]] = {}
        for families in self.families.values():
            for family in families:
                remote.setdefault(family.name, []).append(family)
        own: list[Metric] = []
        for family in local:
            if family.name in SUMMED:
                own.append(family)
                yield _summed(family, remote.pop(family.name, []))
            else:
                yield family
        for _, families in sorted(remote.items()):  # only followers have it (rare)
            yield _summed(families[0], families[1:])
        yield from self._worker_families(own)

    def _worker_families(self, own: list[Metric]) -> Iterator[Metric]:
        workers = GaugeMetricFamily("splitproxy_workers", "Worker processes serving.")
        workers.add_metric((), max(1, len(self.pids)))
        yield workers
        served = CounterMetricFamily(
            "splitproxy_worker_requests",
            "Requests answered, per worker process (the sum of splitproxy_requests_total).",
            labels=("worker", "pid"),
        )
        served.add_metric(("0", str(self.leader_pid)), _requests(own))
        for worker, families in sorted(self.families.items()):
            served.add_metric((str(worker), str(self.pids.get(worker, 0))), _requests(families))
        yield served
        restarts = CounterMetricFamily(
            "splitproxy_worker_restarts", "Worker processes restarted after they died."
        )
        restarts.add_metric((), self.restarts)
        yield restarts


def _summed(first: Metric, others: list[Metric]) -> Metric:
    if not others:
        return first
    out = Metric(first.name, first.documentation, first.type, first.unit)
    index: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    samples = list(first.samples)
    for i, s in enumerate(samples):
        index[s.name, tuple(sorted(s.labels.items()))] = i
    for family in others:
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            at = index.get(key)
            if at is None:
                index[key] = len(samples)
                samples.append(s)
            else:
                samples[at] = samples[at]._replace(value=samples[at].value + s.value)
    out.samples = samples
    return out


class PooledRegistry(CollectorRegistry):
    """The leader's registry as a scrape sees it: ``inner`` (where every collector registers)
    with the followers' counts added (`WorkerCounts.merge`)."""

    def __init__(self, inner: CollectorRegistry, counts: WorkerCounts) -> None:
        super().__init__(auto_describe=True)
        self.inner = inner
        self.counts = counts

    def register(self, collector: Collector) -> None:
        self.inner.register(collector)

    def unregister(self, collector: Collector) -> None:
        self.inner.unregister(collector)

    def collect(self) -> Iterator[Metric]:
        yield from self.counts.merge(self.inner.collect())


class LateBucketsCollector(Collector):
    """``splitproxy_pool_late_buckets_total``: 1 s buckets another worker (or replica)
    published after the pool had already judged their second (``pooling.Pool.dropped``):
    traffic the analyzer never saw. It should stay at 0; a rising count means a stalled or
    overloaded worker, or clocks apart between replicas."""

    def __init__(self, dropped: Callable[[], int]) -> None:
        self.dropped = dropped

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "splitproxy_pool_late_buckets",
            "Buckets of another worker or replica that arrived after their second was judged.",
            value=self.dropped(),
        )
