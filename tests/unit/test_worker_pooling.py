"""Pooling the workers' live windows and metrics: one analyzer sees every worker's traffic."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.mirror_compare import MirrorOutcome, MirrorResult
from splitproxy.dataplane.synthetic import TOKEN_ENV
from splitproxy.metrics import MirrorStats, Recorder
from splitproxy.rollout.messages import Sample
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.samples import samples_for
from splitproxy.rollout.windows import Windows
from splitproxy.workers.counts import PooledRegistry, WorkerCounts
from splitproxy.workers.ipc import Observed
from splitproxy.workers.mirrors import merge_tallies, take_tallies
from splitproxy.workers.pooling import Harvester, Pool, PooledWindows

T0 = 1_700_000_000.0
# offset, candidate?, error?, p, path, sticky user (None: not routed by a sticky key)
Event = tuple[float, bool, bool, float | None, str, int | None]

events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=6.0),
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, 0.1, 0.5]),
        st.sampled_from(["/a", "/b", "/c/1", "/12345"]),
        st.sampled_from([None, 1, 2, 3]),
    ),
    max_size=60,
)


def observe(windows: Windows, evs: list[Event]) -> None:
    for offset, cand, err, p, path, unit in sorted(evs, key=lambda e: e[0]):
        version: Version = CANDIDATE if cand else STABLE
        windows.window("app").observe(T0 + offset, version, 0.01, err, p, path, unit=unit)


def totals(samples: list[Sample]) -> tuple[int, ...]:
    """Per version: requests, errors, errors from sticky users, and those users."""
    n = {STABLE: [0, 0, 0], CANDIDATE: [0, 0, 0]}
    users: dict[str, set[int]] = {STABLE: set(), CANDIDATE: set()}
    for s in samples:
        n[s.version][0] += s.requests
        n[s.version][1] += s.errors
        n[s.version][2] += s.unit_errors
        users[s.version].update(s.units)
    return (*n[STABLE], len(users[STABLE]), *n[CANDIDATE], len(users[CANDIDATE]))


@settings(max_examples=60, deadline=None)
@given(events, events)
def test_the_pool_sees_exactly_what_one_process_would_have_seen(
    first: list[Event], second: list[Event]
) -> None:
    # the same requests, served by one process, or split over a leader and a follower
    alone = Windows()
    observe(alone, first + second)
    leader_windows, follower_windows = PooledWindows(), Windows()
    observe(leader_windows, first)
    observe(follower_windows, second)
    pool = Pool(leader_windows)
    pool.set_members([0, 1])
    now = T0 + 10
    pool.contribute(0, now, Harvester(leader_windows).harvest(["app"], now))
    # over the pipe: what a follower sends is pickled
    shipped = pickle.loads(pickle.dumps(Harvester(follower_windows).harvest(["app"], now)))
    pool.contribute(1, now, shipped)
    pool.release(now)
    pooled = leader_windows.observations("app", 0.0)
    single = alone.observations("app", 0.0)
    # per version: the same requests and errors, per path class and in all
    assert totals(samples_for(pooled)) == totals(samples_for(single))
    for p in (None, 0.1, 0.5):
        assert totals(samples_for(x for x in pooled if x.probability == p)) == totals(
            samples_for(x for x in single if x.probability == p)
        )
    # and the same latencies
    for version in (STABLE, CANDIDATE):
        assert sum(x.version(version).latency.count for x in pooled) == sum(
            x.version(version).latency.count for x in single
        )
    by_class: dict[str, int] = {}
    for x in single:
        for cls in x.path_classes:
            by_class[cls.name] = by_class.get(cls.name, 0) + cls.stable_requests
    pooled_class: dict[str, int] = {}
    for x in pooled:
        for cls in x.path_classes:
            pooled_class[cls.name] = pooled_class.get(cls.name, 0) + cls.stable_requests
    assert pooled_class == by_class


def test_a_second_waits_for_every_member_then_for_no_silent_one() -> None:
    leader, follower = PooledWindows(), Windows()
    follower.window("app").observe(T0 + 0.5, CANDIDATE, 0.01, True, 0.5)
    leader.window("app").observe(T0 + 0.5, CANDIDATE, 0.01, False, 0.5)
    pool = Pool(leader, late_after=2.0)
    pool.set_members([0, 1])
    mine = Harvester(leader)
    pool.contribute(0, T0 + 1.2, mine.harvest(["app"], T0 + 1.2))
    pool.release(T0 + 1.2)
    assert leader.observations("app", 0.0) == []  # the follower has not published past it
    pool.contribute(1, T0 + 1.3, Harvester(follower).harvest(["app"], T0 + 1.3))
    pool.release(T0 + 1.3)
    [second] = leader.observations("app", 0.0)
    assert (second.candidate.requests, second.candidate.errors) == (2, 1)

    # a member that stays silent holds a second back for `late_after` only
    leader.window("app").observe(T0 + 1.5, STABLE, 0.01, False, 0.5)
    pool.contribute(0, T0 + 2.2, mine.harvest(["app"], T0 + 2.2))
    pool.release(T0 + 2.5)
    assert len(leader.observations("app", 0.0)) == 1
    pool.release(T0 + 4.0)
    assert len(leader.observations("app", 0.0)) == 2
    # what it sends for a second already judged is dropped, never judged twice or late
    late = Windows()
    late.window("app").observe(T0 + 1.5, CANDIDATE, 0.01, True, 0.5)
    pool.contribute(1, T0 + 4.1, Harvester(late).harvest(["app"], T0 + 4.1))
    pool.release(T0 + 4.1)
    assert len(leader.observations("app", 0.0)) == 2
    assert pool.dropped == 1
    # a worker that is gone is not waited for
    pool.set_members([0])
    leader.window("app").observe(T0 + 4.5, STABLE, 0.01, False, 0.5)
    pool.contribute(0, T0 + 5.1, mine.harvest(["app"], T0 + 5.1))
    pool.release(T0 + 5.1)
    assert len(leader.observations("app", 0.0)) == 3


def test_status_summary_is_the_sum_of_the_workers() -> None:
    leader = PooledWindows()
    pool = Pool(leader)
    for worker in (0, 1, 2):
        windows = Windows()
        for i in range(10):
            windows.window("app").observe(T0 + i / 10, STABLE, 0.01 * (worker + 1), False, 0.0)
        pool.contribute(worker, T0 + 1, Harvester(windows).harvest(["app"], T0 + 1))
    pool.release(T0 + 1)
    summary = leader.summary("app", T0 + 1, span=60)
    assert summary[STABLE].requests == 30
    p50 = summary[STABLE].p50
    assert p50 is not None
    assert 0.015 < p50 < 0.025  # the three workers' latencies (10, 20, 30 ms) merged


class Fixed(Collector):
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return list(self.families)


def requests(value: float, code: str = "200") -> CounterMetricFamily:
    family = CounterMetricFamily("splitproxy_requests", "Requests.", labels=("route", "code"))
    family.add_metric(("app", code), value)
    return family


def test_metrics_add_the_followers_data_path_and_keep_the_leaders_gauges() -> None:
    inner = CollectorRegistry()
    weight = GaugeMetricFamily("splitproxy_route_weight", "Weight.", labels=("route",))
    weight.add_metric(("app",), 20.0)
    inner.register(Fixed(requests(5), weight))
    counts = WorkerCounts(leader_pid=100)
    counts.set_members({0: 100, 1: 101, 2: 102}, restarts=1)
    follower_weight = GaugeMetricFamily("splitproxy_route_weight", "Weight.", labels=("route",))
    follower_weight.add_metric(("app",), 20.0)
    counts.update(1, 101, pickle.loads(pickle.dumps([requests(7), follower_weight])))
    counts.update(2, 102, [requests(1, "503")])
    counts.update(3, 103, [requests(1000)])  # not a member (gone meanwhile): ignored
    text = generate_latest(PooledRegistry(inner, counts)).decode()
    assert 'splitproxy_requests_total{code="200",route="app"} 12.0' in text
    assert 'splitproxy_requests_total{code="503",route="app"} 1.0' in text
    assert 'splitproxy_route_weight{route="app"} 20.0' in text  # not 40: the leader's
    assert 'splitproxy_worker_requests_total{pid="100",worker="0"} 5.0' in text
    assert 'splitproxy_worker_requests_total{pid="101",worker="1"} 7.0' in text
    assert "splitproxy_workers 3.0" in text
    assert "splitproxy_worker_restarts_total 1.0" in text
    counts.set_members({0: 100, 1: 101}, restarts=1)  # worker 2 is gone: its counts go too
    text = generate_latest(PooledRegistry(inner, counts)).decode()
    assert 'code="503"' not in text


def test_workers_share_the_synthetic_token_their_supervisor_gives_them() -> None:
    # the leader's synthetic requests may be accepted by any worker: all must know them
    code = (
        "import os\n"
        "from splitproxy.dataplane import synthetic\n"
        "print(synthetic.PROCESS_TOKEN, synthetic.TOKEN_ENV in os.environ)\n"
    )
    env = {**os.environ, TOKEN_ENV: "f" * 32}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["f" * 32, "False"]  # and no child process inherits it
    alone = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = alone.stdout.split()[0]
    assert len(token) == 32
    assert token != "f" * 32


def _outcome(i: int) -> MirrorOutcome:
    results: tuple[MirrorResult, ...] = ("match", "diverged", "error")
    result = results[i % 3]
    status = None if result == "error" else (503 if i % 7 == 0 else 200)
    return MirrorOutcome(result, "GET", "/p", 200, status, 0.001, 0.001 * (1 + i % 11))


def test_the_shadow_sees_every_workers_mirrored_answers() -> None:
    outcomes = [_outcome(i) for i in range(60)]
    alone = MirrorTally()
    for o in outcomes:
        alone.add(o)
    leader, follower = MirrorTally(), MirrorTally()
    for i, o in enumerate(outcomes):
        (leader if i % 2 else follower).add(o)
    sent = pickle.loads(pickle.dumps(Observed(1, 10.0, {}, {"shop": follower})))
    leader.merge(sent.mirrors["shop"])
    assert leader.take() == alone.take()


class _MirroringRecorder:
    """The one seam the handover uses: each mirroring route's statistics."""

    def __init__(self, *routes: str) -> None:
        self.stats = {route: MirrorStats() for route in routes}

    def mirror_stats(self, route: str) -> MirrorStats | None:
        return self.stats.get(route)


def test_a_followers_answers_are_handed_over_once_and_counted_once() -> None:
    outcomes = [_outcome(i) for i in range(40)]
    alone = MirrorTally()
    for o in outcomes:
        alone.add(o)
    leader, follower = _MirroringRecorder("shop"), _MirroringRecorder("shop", "gone")
    for i, o in enumerate(outcomes):
        (leader if i % 3 else follower).stats["shop"].tally.add(o)
    follower.stats["gone"].tally.add(outcomes[0])  # a route the leader's reload removed
    handed = take_tallies(cast(Recorder, follower), ["shop", "gone", "quiet"])
    assert set(handed) == {"shop", "gone"}  # a route without answers sends nothing
    assert take_tallies(cast(Recorder, follower), ["shop", "gone"]) == {}  # never twice
    merge_tallies(cast(Recorder, leader), handed)
    assert leader.stats["shop"].tally.take() == alone.take()
