"""The rollout metric families: read from the analyzers at scrape time, counted as rollouts end.

`RolloutMetrics` is a prometheus-client collector the composition root registers next to the
data path's (``splitproxy/metrics.py``). Gauges (phase, step, each check's value, bound and
verdict) are read from the live analyzers when ``/metrics`` is scraped; counters (rollouts
that ended and how long they took, hook notifications dropped) are plain numbers the
controller and its hook dispatcher bump as things happen.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.phases import PHASES

# Seconds a rollout took, from its (re)start to promotion or rollback: 10 s to a day.
ROLLOUT_DURATION_BUCKETS: Final = (
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0,
)  # fmt: skip
ROLLOUT_RESULTS: Final = ("promoted", "rolled_back")
# splitproxy_check_verdict: 1 pass, 0 fail, -1 no data yet
VERDICT_VALUES: Final = {"pass": 1.0, "fail": 0.0, "no_data": -1.0}


class DurationHistogram:
    """Rollout durations: a histogram off the hot path, with its own buckets."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(ROLLOUT_DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(ROLLOUT_DURATION_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        bounds = (*(repr(b) for b in ROLLOUT_DURATION_BUCKETS), "+Inf")
        for le, count in zip(bounds, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


class RolloutSource(Protocol):
    """What the gauges are read from at scrape time (`controller.Controller`)."""

    def analyzers(self) -> Mapping[str, Analyzer]: ...


class RolloutMetrics(Collector):
    """The rollout families; see the module docstring.

    ``source`` gives the live analyzers (None: no rollout gauges). `rollout_ended` and
    `notification_dropped` are the controller's and the dispatcher's verbs."""

    def __init__(self, source: RolloutSource | None = None) -> None:
        self.source = source
        self.ended: dict[tuple[str, str], int] = {}  # (route, result) -> rollouts
        self.durations: dict[tuple[str, str], DurationHistogram] = {}
        self.dropped_notifications = 0

    def rollout_ended(self, route: str, result: str, seconds: float) -> None:
        """A rollout of ``route`` ended ``promoted`` or ``rolled_back`` after ``seconds``."""
        key = (route, result)
        self.ended[key] = self.ended.get(key, 0) + 1
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = DurationHistogram()
        hist.observe(max(0.0, seconds))

    def notification_dropped(self) -> None:
        """A hook notification was dropped: the queue of notifications to send was full."""
        self.dropped_notifications += 1

    def collect(self) -> Iterator[Metric]:
        analyzers = dict(self.source.analyzers()) if self.source is not None else {}
        yield from _gauges(analyzers)
        yield from _ab_families(analyzers)
        ended = CounterMetricFamily(
            "splitproxy_rollouts", "Rollouts that ended, by result.", labels=("route", "result")
        )
        durations = HistogramMetricFamily(
            "splitproxy_rollout_duration_seconds",
            "From a rollout's (re)start to its promotion or rollback.",
            labels=("route", "result"),
        )
        names = sorted(set(analyzers) | {route for route, _ in self.ended})
        for name in names:  # series at zero from the start: increase() needs that
            for result in ROLLOUT_RESULTS:
                ended.add_metric((name, result), self.ended.get((name, result), 0))
                hist = self.durations.get((name, result)) or DurationHistogram()
                durations.add_metric((name, result), hist.cumulative(), hist.sum)
        yield ended
        yield durations
        yield CounterMetricFamily(
            "splitproxy_hook_notifications_dropped",
            "Rollout hook notifications dropped because too many were waiting to be sent.",
            value=self.dropped_notifications,
        )


def _gauges(analyzers: Mapping[str, Analyzer]) -> Iterator[Metric]:
    """Phase, step and each check's value, bound and verdict, read from the analyzers now."""
    phase = GaugeMetricFamily(
        "splitproxy_rollout_phase", "1 for the rollout's current phase, 0 for the others.",
        labels=("route", "phase"),
    )  # fmt: skip
    step = GaugeMetricFamily(
        "splitproxy_rollout_step", "The rollout's current step, 1-based (0 before the first).",
        labels=("route",),
    )  # fmt: skip
    value = GaugeMetricFamily(
        "splitproxy_check_value",
        "A check's last value (a rate, seconds, requests per second, or an e-value).",
        labels=("route", "check"),
    )
    threshold = GaugeMetricFamily(
        "splitproxy_check_threshold", "A check's bound: the value must stay within it.",
        labels=("route", "check", "bound"),
    )  # fmt: skip
    verdict = GaugeMetricFamily(
        "splitproxy_check_verdict", "A check's verdict: 1 pass, 0 fail, -1 no data yet.",
        labels=("route", "check"),
    )  # fmt: skip
    for name, analyzer in sorted(analyzers.items()):
        for p in PHASES:
            phase.add_metric((name, p), 1.0 if analyzer.phase == p else 0.0)
        step.add_metric((name,), float(max(0, analyzer.step_index + 1)))
        for check in analyzer.checks:
            if check.value is not None:
                value.add_metric((name, check.name), check.value)
            for bound, limit in (("min", check.min), ("max", check.max)):
                if limit is not None:
                    threshold.add_metric((name, check.name, bound), limit)
            verdict.add_metric((name, check.name), VERDICT_VALUES[check.verdict])
    yield phase
    yield step
    yield value
    yield threshold
    yield verdict


def _ab_families(analyzers: Mapping[str, Analyzer]) -> Iterator[Metric]:
    """A/B tests (``strategy: ab``): the running or latest test's counts, e-values and lifts
    (they start again from zero with each new test)."""
    users = CounterMetricFamily(
        "splitproxy_ab_users", "Users exposed to each variant of the route's A/B test.",
        labels=("route", "version"),
    )  # fmt: skip
    conversions = CounterMetricFamily(
        "splitproxy_ab_conversions",
        "Users of each variant converted on a goal of the route's A/B test (first time only).",
        labels=("route", "version", "goal"),
    )
    e_value = GaugeMetricFamily(
        "splitproxy_ab_e_value",
        "The A/B test's e-value on a goal (the primary decides at 1/alpha of its share).",
        labels=("route", "goal"),
    )
    lift = GaugeMetricFamily(
        "splitproxy_ab_lift",
        "The candidate's relative difference in conversion rate on a goal (0.05 = +5 %).",
        labels=("route", "goal"),
    )
    srm = GaugeMetricFamily(
        "splitproxy_ab_srm_e_value", "The A/B test's sample-ratio-mismatch e-value.",
        labels=("route",),
    )  # fmt: skip
    for name, analyzer in sorted(analyzers.items()):
        spec, state = analyzer.spec.ab, analyzer.ab_state
        if spec is None or state is None:
            continue
        users.add_metric((name, "stable"), state.srm.stable_users)
        users.add_metric((name, "candidate"), state.srm.candidate_users)
        srm.add_metric((name,), min(state.srm.e_value, 1e300))
        for goal, test in zip(spec.goals, state.goals, strict=True):
            conversions.add_metric((name, "stable", goal.name), test.stable.converted)
            conversions.add_metric((name, "candidate", goal.name), test.candidate.converted)
            e_value.add_metric((name, goal.name), min(test.e_value, 1e300))
            if test.lift is not None and math.isfinite(test.lift):
                lift.add_metric((name, goal.name), test.lift)
    yield users
    yield conversions
    yield e_value
    yield lift
    yield srm


__all__ = [
    "ROLLOUT_DURATION_BUCKETS",
    "ROLLOUT_RESULTS",
    "VERDICT_VALUES",
    "DurationHistogram",
    "RolloutMetrics",
    "RolloutSource",
]
