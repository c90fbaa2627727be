"""Replicas pool their live-window buckets through a real redis-server: each second reaches
the analyzer once, summed over every live replica, and nothing another process leaves in the
stream breaks a reader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.replicas.observations import ObservationStream
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import Windows
from splitproxy.workers.pooling import Harvester, Pool, PooledWindows
from tests.redis_server import RedisServer

T0 = 1_700_000_000.0  # the replicas' clock, passed in: no test waits for real seconds
NS = "t"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=2.0)
    yield redis
    await redis.aclose()


class Replica:
    """A replica's data path (its own live windows) and its end of the stream."""

    def __init__(self, client: Redis, name: str) -> None:
        self.windows = Windows()
        self.harvester = Harvester(self.windows)
        self.stream = ObservationStream(client, NS, name)

    def serve(
        self, at: float, latency: float, *, candidate: bool = False, error: bool = False,
        unit: int | None = None,
    ) -> None:  # fmt: skip
        version: Version = CANDIDATE if candidate else STABLE
        self.windows.window("shop").observe(at, version, latency, error, 0.2, "/cart", unit=unit)

    async def publish(self, now: float, mirrors: dict[str, MirrorTally] | None = None) -> None:
        await self.stream.publish(now, self.harvester.harvest(["shop"], now), mirrors or {})


class Reader:
    """What the leader does with the stream four times a second: read, learn who is alive,
    release the complete seconds into its pooled windows."""

    def __init__(self, client: Redis, late_after: float = 60.0) -> None:
        self.stream = ObservationStream(client, NS, "reader")
        self.pool = Pool(PooledWindows(), late_after=late_after)
        self.mirrors: dict[str, MirrorTally] = {}

    async def poll(self, now: float, stale_after: float = 3.0) -> None:
        for harvest in await self.stream.read():
            self.pool.contribute(harvest.replica, harvest.watermark, harvest.periods)
            for route, tally in harvest.mirrors.items():
                self.mirrors.setdefault(route, MirrorTally()).merge(tally)
        self.pool.set_members(await self.stream.members(now, stale_after))
        self.pool.release(now)

    def seconds(self) -> list[float]:
        return [p.start for p in self.pool.windows.observations("shop", 0.0)]


async def test_each_second_is_released_once_every_replica_published_past_it(
    client: Redis,
) -> None:
    reader = Reader(client)
    await reader.poll(T0)  # starts reading from now
    a, b, c = (Replica(client, name) for name in "abc")
    latencies = {"a": [0.010, 0.020], "b": [0.030, 0.400], "c": [0.050]}
    for replica, name in ((a, "a"), (b, "b"), (c, "c")):
        for i, latency in enumerate(latencies[name]):
            replica.serve(T0 + 0.1 + i / 10, latency)
    a.serve(T0 + 0.5, 0.2, candidate=True, error=True, unit=7)
    b.serve(T0 + 0.5, 0.3, candidate=True, error=True, unit=7)  # the same user, seen by two
    c.serve(T0 + 0.6, 0.3, candidate=True, error=True, unit=9)

    await a.publish(T0 + 1.25)
    await b.publish(T0 + 1.25)
    await c.publish(T0 + 0.75)  # c has not closed its second yet
    await reader.poll(T0 + 1.25)
    assert reader.pool.members == {"a", "b", "c"}
    assert reader.seconds() == []  # c's part of the second is still to come

    await c.publish(T0 + 1.25)
    await reader.poll(T0 + 1.25)
    assert reader.seconds() == [T0]
    (second,) = reader.pool.windows.observations("shop", 0.0)
    assert second.stable.requests == 5
    assert second.candidate.requests == 3
    assert second.candidate.errors == 3
    every = LatencySketch()
    for value in [x for xs in latencies.values() for x in xs]:
        every.add(value)
    for q in (0.5, 0.95, 0.99):
        assert second.stable.latency.quantile(q) == every.quantile(q)
    (cart,) = second.path_classes
    assert cart.candidate_unit_errors == 3
    assert sorted(cart.candidate_units) == [7, 9]  # each user once

    await a.publish(T0 + 1.5)  # nothing new: a watermark alone, and no second twice
    await reader.poll(T0 + 1.5)
    assert reader.seconds() == [T0]
    assert reader.pool.dropped == 0
    assert reader.stream.dropped == 0


async def test_a_replica_gone_silent_is_no_longer_waited_for(client: Redis) -> None:
    reader = Reader(client)
    await reader.poll(T0)
    a, b, c = (Replica(client, name) for name in "abc")
    for at in (T0, T0 + 1.25):
        for replica in (a, b, c):
            await replica.publish(at)
    a.serve(T0 + 2.1, 0.01)
    b.serve(T0 + 2.2, 0.01)
    await a.publish(T0 + 3.25)
    await b.publish(T0 + 3.25)  # c stopped at T0 + 1.25
    await reader.poll(T0 + 3.25)
    assert reader.pool.members == {"a", "b", "c"}  # heard from 2 s ago: still waited for
    assert reader.seconds() == []

    await a.publish(T0 + 4.5)
    await b.publish(T0 + 4.5)
    await reader.poll(T0 + 4.5)  # c last heard 3.25 s ago
    assert reader.pool.members == {"a", "b"}
    assert reader.seconds() == [T0 + 2]
    (second,) = reader.pool.windows.observations("shop", 0.0)
    assert second.stable.requests == 2
    assert await client.zscore(f"{NS}:replicas", "c") is None  # forgotten for every reader


async def test_mirrored_answers_reach_the_reader(client: Redis) -> None:
    reader = Reader(client)
    await reader.poll(T0)
    tally = MirrorTally()
    tally.answered, tally.errors, tally.compared, tally.diverged = 4, 1, 3, 2
    for latency in (0.01, 0.02, 0.03, 0.5):
        tally.latency.add(latency)
    await Replica(client, "a").publish(T0 + 0.25, {"shop": tally})
    await reader.poll(T0 + 0.25)
    got = reader.mirrors["shop"]
    assert (got.answered, got.errors, got.compared, got.diverged) == (4, 1, 3, 2)
    assert got.latency.quantile(0.99) == tally.latency.quantile(0.99)


async def test_entries_another_process_left_are_dropped_and_counted(
    client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    reader = Reader(client)
    await reader.poll(T0)
    stream = f"{NS}:observed"
    bad = [
        {"replica": "x", "harvest": "not json"},
        {"replica": "x", "harvest": '{"v": 99, "watermark": 1}'},
        {"harvest": '{"v": 1, "watermark": 1}'},
        {"replica": "x", "harvest": '{"v": 1, "watermark": -5}'},
        {"replica": "x", "harvest": '{"v": 1, "watermark": 1, "periods": {"shop": 7}}'},
        {"replica": b"\xff\xfe", "harvest": '{"v": 1, "watermark": 1}'},
    ]
    for fields in bad:
        await client.xadd(stream, fields)  # type: ignore[arg-type]
    a = Replica(client, "a")
    a.serve(T0 + 0.5, 0.01)
    await a.publish(T0 + 1.25)
    with caplog.at_level(logging.WARNING, logger="splitproxy.replicas"):
        await reader.poll(T0 + 1.25)
    assert reader.stream.dropped == len(bad)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per kind of fault: not JSON, another format, invalid
    assert any("format 99" in r.getMessage() for r in warnings)
    assert reader.seconds() == [T0]  # the good entry after them still counts
    assert reader.pool.windows.observations("shop", 0.0)[0].stable.requests == 1


async def test_a_reader_starts_from_now_and_skips_its_own_entries(client: Redis) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    a.serve(T0 + 0.5, 0.01)
    await a.publish(T0 + 1.25)  # before b ever read
    assert await b.stream.read() == []
    a.serve(T0 + 1.5, 0.01)
    await a.publish(T0 + 2.25)
    await b.publish(T0 + 2.25)
    got = await b.stream.read()
    assert [(h.replica, h.watermark) for h in got] == [("a", T0 + 2.25)]
    assert [p.start for p in got[0].periods["shop"]] == [T0 + 1]
    assert await a.stream.read() == []  # a started reading after b's entry; its own: skipped
    await b.publish(T0 + 2.5)
    assert [h.replica for h in await a.stream.read()] == ["b"]


async def test_a_blocking_read_wakes_for_a_new_entry(client: Redis) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    assert await b.stream.read() == []

    async def later() -> None:
        await asyncio.sleep(0.1)
        await a.publish(T0 + 0.25)

    task = asyncio.create_task(later())
    got = await b.stream.read(block=1.5)
    await task
    assert [h.replica for h in got] == ["a"]


async def test_a_harvest_too_big_for_one_entry_is_split_and_still_adds_up(
    client: Redis,
) -> None:
    reader = Reader(client)
    await reader.poll(T0)
    routes = [f"r{i}" for i in range(40)]
    windows = Windows()
    for route in routes:
        for i in range(3):
            windows.window(route).observe(T0 + i / 10, STABLE, 0.001 * (i + 1), False, None)
    stream = ObservationStream(client, NS, "a", entry_limit=2_000)
    await stream.publish(T0 + 0.5, {}, {})  # the watermark the split parts carry
    await stream.publish(T0 + 1.25, Harvester(windows).harvest(routes, T0 + 1.25), {})
    assert await client.xlen(f"{NS}:observed") > 3
    got = await reader.stream.read()
    assert {h.watermark for h in got[1:-1]} == {T0 + 0.5}  # no second released half-read
    assert got[-1].watermark == T0 + 1.25
    for harvest in got:
        reader.pool.contribute(harvest.replica, harvest.watermark, harvest.periods)
    reader.pool.set_members({"a"})
    reader.pool.release(T0 + 1.25)
    for route in routes:
        (second,) = reader.pool.windows.observations(route, 0.0)
        assert second.stable.requests == 3


async def test_the_stream_is_trimmed(client: Redis) -> None:
    stream = ObservationStream(client, NS, "a", maxlen=100)
    for i in range(1000):
        await stream.publish(T0 + i / 4, {}, {})
    # approximate trimming cuts whole nodes of the stream: about maxlen are kept, not all
    assert await client.xlen(f"{NS}:observed") < 500
