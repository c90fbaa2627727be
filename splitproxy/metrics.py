"""The domain recorder: what the data path reports, kept as plain numbers, exported on scrape.

Handlers never call prometheus-client's ``.labels()``: the data path calls one verb per
exchange (`exchange_started`, `exchange_finished`, `attempt_failed`), which bumps plain
integers in dicts, and a custom collector turns them into metric families when ``/metrics``
is scraped. That keeps the per-request cost to a few dict updates and a bisect.

Every app gets its own `CollectorRegistry` (tests build many apps in one process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splitproxy.routing import BUCKETS as WEIGHT_BUCKETS
from splitproxy.state import RuntimeState

if TYPE_CHECKING:
    from splitproxy.proxy import Exchange

# Seconds: Prometheus' defaults plus resolution around typical 200 ms - 1 s p99 thresholds.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
UPSTREAM_ERROR_KINDS: Final = frozenset({"connect", "timeout", "reset", "protocol", "pool"})


class Histogram:
    """Bucket counts and a sum; cumulative only when exported."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bucket whose upper bound is >= value, i.e. value <= le.
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else _fmt(bound), float(total)))
        return out


def _fmt(bound: float) -> str:
    return repr(bound)


class ReloadStats:
    """Outcomes of config loads, for the ``splitproxy_config_*`` metrics."""

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_successful = True
        self.last_success_at = 0.0

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.success += 1
            self.last_success_at = now
        else:
            self.failure += 1
        self.last_successful = ok


class Recorder:
    """Counts every exchange by route, version, status and decision reason."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        self.reloads = ReloadStats()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.started: dict[tuple[str, str], int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.upstream_errors: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.ttfbs: dict[tuple[str, str], Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- ExchangeObserver ----------------------------------------------------------------------
    def exchange_started(self, ex: Exchange) -> None:
        route = ex.route
        decision = ex.decision
        if route is None or decision is None:
            return
        key = (route.name, ex.version)
        self.started[key] = self.started.get(key, 0) + 1
        dkey = (route.name, ex.version, decision.reason)
        self.decisions[dkey] = self.decisions.get(dkey, 0) + 1

    def exchange_finished(self, ex: Exchange) -> None:
        route = ex.route
        name = route.name if route is not None else ""
        version = ex.version
        rkey = (name, version, ex.status)
        self.requests[rkey] = self.requests.get(rkey, 0) + 1
        if route is None or ex.decision is None:
            return
        key = (name, version)
        self.finished[key] = self.finished.get(key, 0) + 1
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = Histogram()
            self.ttfbs[key] = Histogram()
        hist.observe(ex.duration)
        if ex.ttfb:
            self.ttfbs[key].observe(ex.ttfb)
        kind = ex.error_kind
        if kind and kind in UPSTREAM_ERROR_KINDS:
            ekey = (name, version, kind)
            self.upstream_errors[ekey] = self.upstream_errors.get(ekey, 0) + 1

    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None:
        route = ex.route
        if route is None:
            return
        ekey = (route.name, version, kind)
        self.upstream_errors[ekey] = self.upstream_errors.get(ekey, 0) + 1
        if ex.decision is not None and version != ex.version:
            # a retry moves the exchange to another version: the decision is recorded again
            dkey = (route.name, ex.version, "retry")
            self.decisions[dkey] = self.decisions.get(dkey, 0) + 1

    # -- reads ---------------------------------------------------------------------------------
    def in_flight(self, route: str, version: str) -> int:
        key = (route, version)
        return self.started.get(key, 0) - self.finished.get(key, 0)


class _Collector(Collector):
    def __init__(self, recorder: Recorder) -> None:
        self.r = recorder

    def collect(self) -> Iterator[Metric]:
        r = self.r
        requests = CounterMetricFamily(
            "splitproxy_requests", "Requests answered, by the status the client got.",
            labels=("route", "version", "code"),
        )  # fmt: skip
        for (route, version, code), n in sorted(r.requests.items()):
            requests.add_metric((route, version, str(code)), n)
        yield requests

        for name, doc, source in (
            (
                "splitproxy_request_duration_seconds",
                "Time from request head to the response's last byte.",
                r.durations,
            ),
            (
                "splitproxy_upstream_response_header_duration_seconds",
                "Time to the upstream's response head.",
                r.ttfbs,
            ),
        ):
            fam = HistogramMetricFamily(name, doc, labels=("route", "version"))
            for (route, version), hist in sorted(source.items()):
                fam.add_metric((route, version), hist.cumulative(), hist.sum)
            yield fam

        errors = CounterMetricFamily(
            "splitproxy_upstream_errors", "Failed upstream attempts, by kind.",
            labels=("route", "version", "kind"),
        )  # fmt: skip
        for key, n in sorted(r.upstream_errors.items()):
            errors.add_metric(key, n)
        yield errors

        decisions = CounterMetricFamily(
            "splitproxy_routing_decisions", "Routing decisions, by version and reason.",
            labels=("route", "version", "reason"),
        )  # fmt: skip
        for key, n in sorted(r.decisions.items()):
            decisions.add_metric(key, n)
        yield decisions

        in_flight = GaugeMetricFamily(
            "splitproxy_requests_in_flight", "Requests being served.", labels=("route", "version")
        )
        for route, version in sorted(r.started):
            in_flight.add_metric((route, version), r.in_flight(route, version))
        yield in_flight

        weight = GaugeMetricFamily(
            "splitproxy_route_weight", "Share of traffic per version, in percent.",
            labels=("route", "version"),
        )  # fmt: skip
        info = GaugeMetricFamily(
            "splitproxy_upstream_info", "The upstreams and revision behind each version.",
            labels=("route", "version", "upstream", "revision"),
        )  # fmt: skip
        snapshot = r.state.snapshot
        if snapshot is not None:
            for route_ in snapshot.routes:
                cand = route_.weight_bp * 100 / WEIGHT_BUCKETS if route_.candidate else 0.0
                weight.add_metric((route_.name, "stable"), 100.0 - cand)
                weight.add_metric((route_.name, "candidate"), cand)
                for version, plan in (("stable", route_.stable), ("candidate", route_.candidate)):
                    if plan is None:
                        continue
                    for target in plan.targets:
                        info.add_metric((route_.name, version, target.url, plan.revision or ""), 1)
        yield weight
        yield info

        reloads = CounterMetricFamily(
            "splitproxy_config_reloads", "Routing file loads, by result.", labels=("result",)
        )
        reloads.add_metric(("success",), r.reloads.success)
        reloads.add_metric(("failure",), r.reloads.failure)
        yield reloads
        yield GaugeMetricFamily(
            "splitproxy_config_last_reload_successful",
            "1 if the last routing file load succeeded.",
            value=1 if r.reloads.last_successful else 0,
        )
        yield GaugeMetricFamily(
            "splitproxy_config_last_reload_success_timestamp_seconds",
            "When the routing file was last loaded successfully (Unix time).",
            value=r.reloads.last_success_at,
        )
