"""The domain recorder: what the data path reports, kept as plain numbers, exported on scrape.

Handlers never call prometheus-client's ``.labels()``. The data path calls one verb per event
(`Recorder.exchange_started`, `Recorder.exchange_finished`, `Recorder.attempt_failed`; the
composition root calls `Recorder.config_reloaded`), which bumps plain integers in one
`Series` per route and version, and feeds the route's live `windows.Window`. A custom collector
turns the numbers into metric families only when ``/metrics`` is scraped. Per exchange that is
two dict look-ups, a few appends to the series' raw lists (counted when read, or every
`metrics_series.FOLD_AT` exchanges: see ``metrics_series.py``) and the window's observation
(measured in ``docs/observability.md``).

Every app gets its own `CollectorRegistry` (tests build many apps in one process), with the
process, platform and GC collectors next to splitproxy's own.

Versions: a series is labelled with the version that answered (``stable`` or ``candidate``),
or ``""`` for an exchange that never reached the routing decision (no route, a rejected
request). A candidate request that failed and was replayed on stable is counted as stable's
answer in ``splitproxy_requests_total`` (that is the status the client got), as a
``splitproxy_upstream_errors_total`` of the candidate, and in the live windows as a candidate
error (the analyzer must see it).

Synthetic requests (the proxy's own, ``Exchange.synthetic``) are counted apart: in
``splitproxy_synthetic_requests_total``, not in ``splitproxy_requests_total`` or the duration
histograms, and in the windows' synthetic cells; their routing decisions (reason
``synthetic``) and upstream errors are counted like any other.

Preview requests (``Exchange.preview``: from the preview listener, always the candidate) are
not user traffic: ``splitproxy_requests_total`` and ``splitproxy_request_duration_seconds``
label them ``traffic="preview"`` (user requests ``traffic="user"``), they stay out of the
time-to-first-byte histogram, and they never enter the live windows the analyzer reads.

Mirrored copies (``dataplane/mirror.py``: the proxy's copies of user requests to the
candidate) are not user traffic either: the candidate's answers to them are counted in
``splitproxy_requests_total{traffic="mirror"}``, never in the duration histograms or the live
windows; what became of each copy in ``splitproxy_mirror_requests_total{result}``, both
sides' latencies in ``splitproxy_mirror_duration_seconds``, and the last divergent examples
per route for status (`Recorder.mirror_counts`, `Recorder.mirror_examples`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splitproxy.config.vocabulary import CANDIDATE, FAILURE_KINDS, STABLE, FailureKind, Version
from splitproxy.dataplane.abgoals import AbBook
from splitproxy.dataplane.health import CHECK_RESULTS, HealthBook
from splitproxy.dataplane.mirror_compare import RESULTS as MIRROR_RESULTS
from splitproxy.dataplane.mirror_compare import MirrorOutcome, MirrorResult
from splitproxy.dataplane.routing import BUCKETS as WEIGHT_BUCKETS
from splitproxy.dataplane.routing import CompiledRoute, Decision
from splitproxy.dataplane.state import RuntimeState
from splitproxy.metrics_follow import FollowsSnapshots
from splitproxy.metrics_series import FOLD_AT, ReloadStats, Series

# what the recorder's users and tests import from here
from splitproxy.metrics_series import LATENCY_BUCKETS as LATENCY_BUCKETS
from splitproxy.metrics_series import MIRROR_EXAMPLES as MIRROR_EXAMPLES
from splitproxy.metrics_series import MIRROR_LATENCIES as MIRROR_LATENCIES
from splitproxy.metrics_series import Histogram as Histogram
from splitproxy.metrics_series import MirrorStats as MirrorStats
from splitproxy.rollout.messages import MirrorSample
from splitproxy.rollout.windows import Period, Summary, Windows

if TYPE_CHECKING:
    from splitproxy.dataplane.exchange import Exchange

# ``kind`` of splitproxy_upstream_errors_total. ``pool``: the proxy's own per-upstream
# connection limit was reached (the request got a 503 without reaching the upstream).
UPSTREAM_ERROR_KINDS: Final = frozenset(FAILURE_KINDS)
_ROUTED: Final[Mapping[str, Version]] = MappingProxyType({STABLE: STABLE, CANDIDATE: CANDIDATE})


def _probability(route: CompiledRoute, decision: Decision) -> float | None:
    """The chance this request had of being routed to the candidate, when it was routed; None
    when it was not routed at random (an override rule, or no candidate to go to)."""
    reason = decision.reason
    if reason == "weight" or reason == "sticky":
        return route.weight_bp / WEIGHT_BUCKETS
    return None


class Recorder(FollowsSnapshots):
    """Counts every exchange by route, version, status and decision reason (an
    `ExchangeObserver`), and keeps the live windows the analyzer and status read; follows the
    snapshots (`on_swap`, metrics_follow.py)."""

    def __init__(
        self,
        state: RuntimeState,
        *,
        clock: Callable[[], float] = time.time,
        windows: Windows | None = None,
    ) -> None:
        self.state = state
        self.clock = clock  # wall time for the live windows
        self.windows = windows if windows is not None else Windows()
        self.reloads = ReloadStats()
        self.ab = AbBook()  # A/B tests' users and conversions (abgoals.py), taken each tick
        self._series: dict[tuple[str, str], Series] = {}
        # the same series by version, then route name: two look-ups by string (their hashes
        # cached) where ``_series`` needs a tuple made and hashed per exchange
        self._by_version: dict[str, dict[str, Series]] = {}
        self._mirrors: dict[str, MirrorStats] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def _get(self, route: str, version: str) -> Series:
        key = (route, version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(_ROUTED.get(version))
            self._by_version.setdefault(version, {})[route] = series
            if series.version is not None:
                series.window = self.windows.window(route)
                followed = self._followed
                self._stray |= followed is not None and followed.route(route) is None
        return series

    def _mirror_stats(self) -> MirrorStats:
        return MirrorStats()

    # -- ExchangeObserver ----------------------------------------------------------------------
    def exchange_started(self, ex: Exchange) -> None:
        route = ex.route
        decision = ex.decision
        if route is None or decision is None:
            return
        try:  # a hit: two look-ups, no `_get` call; kept by the exchange for its finish
            series = ex.observed = self._by_version[ex.version][route.name]
        except KeyError:
            series = ex.observed = self._get(route.name, ex.version)
        # started, and its reason: counted when read (`Series.fold`), one append now
        raw = series.raw_reasons
        raw.append(decision.reason)
        if len(raw) >= FOLD_AT:
            series.fold()
        if route.ab is not None:
            self.ab.exposed(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        route = ex.route
        decision = ex.decision
        status = ex.status
        if route is None or decision is None:
            series = self._get(route.name if route is not None else "", "")
            codes = series.preview if ex.preview else series._codes
            codes[status] = codes.get(status, 0) + 1
            return
        # the series the start found, unless none or replayed on another version since
        if (series := ex.observed) is None or series.version != ex.version:
            name = route.name
            series = self._series.get((name, ex.version)) or self._get(name, ex.version)
        if ex.preview:
            self._preview_finished(series, ex)
            return
        reason = decision.reason
        if ex.synthetic or reason == "retry":
            self._rare_finished(series, ex, route, decision)
            return
        # User traffic: the status and latencies go to the series' raw lists, counted into
        # its counters and histograms when read (`Series.fold`: the same numbers).
        raw = series.raw_codes
        raw.append(status)
        latency: float | None = None
        if status != 101:  # a WebSocket session's length is not a latency
            latency = ex.duration
            series.raw_durations.append(latency)
        ttfb = ex.ttfb
        if ttfb:
            series.raw_ttfbs.append(ttfb)
        if len(raw) >= FOLD_AT:
            series.fold()
        kind = ex.error_kind
        if kind and kind in UPSTREAM_ERROR_KINDS:  # (mostly "": no set look-up)
            errors = series.errors
            errors[kind] = errors.get(kind, 0) + 1
            error = True
        else:
            error = status >= 500
        window, version = series.window, series.version
        if window is not None and version is not None:  # a window is only given to a version
            window.observe(
                self.clock(), version, latency, error,
                # `_probability`, inlined
                route.weight_bp / WEIGHT_BUCKETS if reason == "weight" or reason == "sticky"
                else None,
                ex.path, route.path_prefix, False, decision.unit,
            )  # fmt: skip

    def _rare_finished(
        self, series: Series, ex: Exchange, route: CompiledRoute, decision: Decision
    ) -> None:
        """`exchange_finished` of a synthetic request or of a replayed one, counted at once
        (the counts are sums: whenever the raw lists are folded, they add up the same)."""
        status = ex.status
        synthetic = ex.synthetic
        codes = series.synthetic if synthetic else series._codes
        codes[status] = codes.get(status, 0) + 1
        retried = decision.reason == "retry"
        if retried:
            # it started on the candidate, which failed; stable answered
            self._get(route.name, CANDIDATE)._finished += 1
            series._reasons["retry"] = series._reasons.get("retry", 0) + 1
        else:
            series._finished += 1
        latency: float | None = None
        if status != 101:
            latency = ex.duration
            if not synthetic:  # after the values already waiting: the sum keeps their order
                series.raw_durations.append(latency)
        ttfb = ex.ttfb
        if ttfb and not synthetic:
            series.raw_ttfbs.append(ttfb)
        series.fold()
        kind = ex.error_kind
        upstream_error = kind in UPSTREAM_ERROR_KINDS
        if upstream_error:
            series.errors[kind] = series.errors.get(kind, 0) + 1
        window, version = series.window, series.version
        # a retried one was observed when it failed; a window is only ever given to a version
        if window is not None and version is not None and not retried:
            window.observe(
                self.clock(), version, latency, status >= 500 or upstream_error,
                _probability(route, decision), ex.path, route.path_prefix, synthetic,
                decision.unit,
            )  # fmt: skip

    def _preview_finished(self, series: Series, ex: Exchange) -> None:
        """A preview request: its own code and duration cells, no time to first byte. In the
        live window it is test traffic (the synthetic cells), never user traffic: only a
        rollout that judges test traffic (blue/green, or ``traffic: {judge: true}``) weighs it."""
        status = ex.status
        series.preview[status] = series.preview.get(status, 0) + 1
        series._finished += 1
        latency: float | None = None
        if status != 101:
            latency = ex.duration
            if series.preview_durations is None:
                series.preview_durations = Histogram()
            series.preview_durations.observe(latency)
        kind = ex.error_kind
        upstream_error = kind in UPSTREAM_ERROR_KINDS
        if upstream_error:
            series.errors[kind] = series.errors.get(kind, 0) + 1
        route, window, version = ex.route, series.window, series.version
        if window is not None and version is not None and route is not None:
            window.observe(
                self.clock(), version, latency, status >= 500 or upstream_error,
                None, ex.path, route.path_prefix, True,
            )  # fmt: skip

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        """An upstream attempt failed; the exchange goes on (a replay) or ends with a 503."""
        route = ex.route
        if route is None:
            return
        series = self._get(route.name, version)
        series.errors[kind] = series.errors.get(kind, 0) + 1
        decision = ex.decision
        if (
            version == "candidate"
            and ex.retried
            and decision is not None
            and decision.version == "candidate"
            and series.window is not None
            and not ex.preview
        ):
            # The candidate failed and the request is replayed on stable: the user will not
            # see the failure, but the analyzer must, with the probability it was routed at.
            elapsed = max(0.0, time.monotonic() - ex.started) if ex.started else None
            series.window.observe(
                self.clock(), CANDIDATE, elapsed, True, _probability(route, decision),
                ex.path, route.path_prefix, ex.synthetic, decision.unit,
            )  # fmt: skip

    # -- MirrorObserver (dataplane/mirror.py) -------------------------------------------------
    def mirror_result(self, route: str, result: MirrorResult) -> None:
        """A copy that was never sent: ``dropped`` (the queue was full) or ``skipped``."""
        stats = self._mirrors.get(route)
        if stats is not None:
            stats.counts[result] += 1

    def mirror_compared(self, route: str, outcome: MirrorOutcome) -> None:
        """A copy that was sent: its result, both latencies, an example when it diverged or
        failed. Never user traffic: no live window sees it."""
        stats = self._mirrors.get(route)
        if stats is None:
            return
        stats.counts[outcome.result] += 1
        stats.tally.add(outcome)
        for version, latency in ((STABLE, outcome.primary_latency),
                                 (CANDIDATE, outcome.mirror_latency)):  # fmt: skip
            stats.durations[version].observe(latency)
            stats.recent[version].append(latency)
        if outcome.mirror_status is not None:
            codes = self._get(route, CANDIDATE).mirror
            codes[outcome.mirror_status] = codes.get(outcome.mirror_status, 0) + 1
        if outcome.result != "match":
            stats.examples.append((self.clock(), outcome))

    def mirror_counts(self, route: str) -> dict[MirrorResult, int]:
        """The route's copies by result so far (all zero for a route that does not mirror):
        ``diverged / (match + diverged)`` is its divergence rate."""
        stats = self._mirrors.get(route)
        return dict(stats.counts) if stats is not None else dict.fromkeys(MIRROR_RESULTS, 0)

    def mirror_take(self, route: str) -> MirrorSample | None:
        """The route's copies answered since the previous call (the rollout controller's, once
        a tick); None for a route that never mirrors."""
        stats = self._mirrors.get(route)
        return stats.tally.take() if stats is not None else None

    def mirror_stats(self, route: str) -> MirrorStats | None:
        """The route's mirror statistics (None: the route does not mirror); status reads it."""
        return self._mirrors.get(route)

    # -- the composition root ------------------------------------------------------------------
    def config_reloaded(self, ok: bool, now: float) -> None:
        """A routing file was loaded (``ok``) or rejected; ``now`` is Unix time."""
        self.reloads.record(ok, now)

    # -- reads ---------------------------------------------------------------------------------
    def in_flight(self, route: str, version: str) -> int:
        series = self._series.get((route, version))
        return 0 if series is None else series.in_flight

    def requests(self, route: str, version: str, code: int) -> int:
        """How many exchanges of ``route`` answered by ``version`` ended with ``code``."""
        series = self._series.get((route, version))
        return 0 if series is None else series.codes.get(code, 0)

    def observations(self, route: str, since: float, until: float | None = None) -> list[Period]:
        """The route's live windows since ``since`` (Unix time): see `windows.Window`."""
        return self.windows.observations(route, since, until)

    def summary(
        self, route: str, now: float | None = None, span: float = 60.0
    ) -> dict[str, Summary]:
        """Per version, the last ``span`` seconds: rate, error rate, p50/p95/p99."""
        return self.windows.summary(route, self.clock() if now is None else now, span)


class _Collector(Collector):
    def __init__(self, recorder: Recorder) -> None:
        self.r = recorder

    def collect(self) -> Iterator[Metric]:
        r = self.r
        items = sorted(r._series.items())
        requests = CounterMetricFamily(
            "splitproxy_requests",
            "Requests answered, by the status the client got; traffic: user, preview or mirror "
            "(the candidate's answers to mirrored copies).",
            labels=("route", "version", "code", "traffic"),
        )
        synthetic = CounterMetricFamily(
            "splitproxy_synthetic_requests",
            "The proxy's own synthetic requests (rollout.traffic), by the status they got.",
            labels=("route", "version", "code"),
        )
        for (route, version), series in items:
            for code, n in sorted(series.codes.items()):
                requests.add_metric((route, version, str(code), "user"), n)
            for code, n in sorted(series.preview.items()):
                requests.add_metric((route, version, str(code), "preview"), n)
            for code, n in sorted(series.mirror.items()):
                requests.add_metric((route, version, str(code), "mirror"), n)
            for code, n in sorted(series.synthetic.items()):
                synthetic.add_metric((route, version, str(code)), n)
        yield requests
        yield synthetic

        durations = HistogramMetricFamily(
            "splitproxy_request_duration_seconds",
            "Time from the request head to the response's last byte; traffic: user or preview.",
            labels=("route", "version", "traffic"),
        )
        ttfbs = HistogramMetricFamily(
            "splitproxy_upstream_response_header_duration_seconds",
            "Time from the request head to the upstream's response head (time to first byte).",
            labels=("route", "version"),
        )
        for (route, version), series in items:
            if series.version is not None:
                dur, ttfb = series.durations, series.ttfbs
                durations.add_metric((route, version, "user"), dur.cumulative(), dur.sum)
                preview = series.preview_durations
                if preview is not None:
                    durations.add_metric(
                        (route, version, "preview"), preview.cumulative(), preview.sum
                    )
                ttfbs.add_metric((route, version), ttfb.cumulative(), ttfb.sum)
        yield durations
        yield ttfbs

        errors = CounterMetricFamily(
            "splitproxy_upstream_errors", "Failed upstream attempts, by kind.",
            labels=("route", "version", "kind"),
        )  # fmt: skip
        decisions = CounterMetricFamily(
            "splitproxy_routing_decisions", "Routing decisions, by version and reason.",
            labels=("route", "version", "reason"),
        )  # fmt: skip
        in_flight = GaugeMetricFamily(
            "splitproxy_requests_in_flight", "Requests being served.", labels=("route", "version")
        )
        for (route, version), series in items:
            for kind, n in sorted(series.errors.items()):
                errors.add_metric((route, version, kind), n)
            for reason, n in sorted(series.reasons.items()):
                decisions.add_metric((route, version, reason), n)
            if series.version is not None:
                in_flight.add_metric((route, version), series.in_flight)
        yield errors
        yield decisions
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
                live = route_.candidate is not None
                cand = route_.weight_bp * 100 / WEIGHT_BUCKETS if live else 0.0
                weight.add_metric((route_.name, "stable"), 100.0 - cand)
                weight.add_metric((route_.name, "candidate"), cand)
                for version, plan in (("stable", route_.stable), ("candidate", route_.candidate)):
                    if plan is None:
                        continue
                    for target in plan.targets:
                        info.add_metric((route_.name, version, target.url, plan.revision or ""), 1)
        yield weight
        yield info

        yield from _mirror_families(r)

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


def _mirror_families(r: Recorder) -> Iterator[Metric]:
    mirrored = CounterMetricFamily(
        "splitproxy_mirror_requests",
        "Copies of user requests for the candidate (mirror), by result: match, diverged, "
        "error (no answer), dropped (queue full) or skipped (body too large, request cut).",
        labels=("route", "result"),
    )
    durations = HistogramMetricFamily(
        "splitproxy_mirror_duration_seconds",
        "Latency of mirrored requests: the user's answer (stable) and the copy's (candidate).",
        labels=("route", "version"),
    )
    for route, stats in sorted(r._mirrors.items()):
        for result in MIRROR_RESULTS:
            mirrored.add_metric((route, result), stats.counts[result])
        for version, hist in stats.durations.items():
            durations.add_metric((route, version), hist.cumulative(), hist.sum)
    yield mirrored
    yield durations


class HealthCollector(Collector):
    """Upstream health (``dataplane/health.py``), read from the book on scrape: per address of
    each route's version, whether it is in rotation, and the active checks by result."""

    def __init__(self, book: HealthBook) -> None:
        self.book = book

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "splitproxy_upstream_healthy",
            "1 while the address takes traffic; 0 while ejected, probing or failing its checks.",
            labels=("route", "version", "upstream"),
        )
        checks = CounterMetricFamily(
            "splitproxy_health_checks", "Active health checks, by result.",
            labels=("route", "version", "upstream", "result"),
        )  # fmt: skip
        for name, rh in sorted(self.book.routes.items()):
            for backend in (rh.stable, rh.candidate):
                if backend is None:
                    continue
                for address in backend.addresses:
                    labels = (name, backend.version, address.url)
                    healthy.add_metric(labels, 1 if address.state == "healthy" else 0)
                    if backend.tracked:
                        for result in CHECK_RESULTS:
                            checks.add_metric((*labels, result), address.checks.get(result, 0))
        yield healthy
        yield checks


class AccessLogCollector(Collector):
    """``splitproxy_access_log_dropped_total``: access log lines lost because the log's stream
    stalled (its buffer was full) or refused them (``logs.AccessLog.dropped``)."""

    def __init__(self, dropped: Callable[[], int]) -> None:
        self.dropped = dropped

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "splitproxy_access_log_dropped",
            "Access log lines dropped: the log's stream was stalled or broken.",
            value=self.dropped(),
        )
