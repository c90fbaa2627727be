"""The Redis state backend against a real ``redis-server``: documents and their versions,
fencing, the verdict record, a rollout saved by one controller and resumed by another, Redis
going away and coming back, hostile documents, and the leader lease."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
import redis
import yaml

from splitproxy.config import Rollout, parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.metrics import Recorder
from splitproxy.replicas.connection import async_client
from splitproxy.replicas.lease import RedisLease
from splitproxy.replicas.redisstore import RedisStateStore, state_backend
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.controller import Controller
from splitproxy.rollout.persistence import Persistence, Rejected, Restored
from splitproxy.rollout.store import (
    COMPACT_AFTER,
    Fenced,
    StateStore,
    StateUnavailable,
    VerdictEntry,
)
from tests.conftest import StartProxy
from tests.redis_server import RedisServer

NS = "test"
SPEC = Rollout.model_validate({"steps": [20, 50]})
T0 = 1_700_000_000.0


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStateStore]:
    s = RedisStateStore(redis_server.url, NS)
    yield s
    s.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client: what a human (or an attacker) with access to the Redis can do."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
async def leases(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLease]]:
    clients: list[Any] = []

    def lease(replica: str, ttl: float = 6.0) -> RedisLease:
        client = async_client(redis_server.url)
        clients.append(client)
        return RedisLease(client, NS, replica, ttl=ttl)

    yield lease
    for client in clients:
        await client.aclose()


async def until(check: Callable[[], Any], what: str) -> None:
    for _ in range(400):
        if await check() if inspect.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


# --- documents ----------------------------------------------------------------------------------


def test_a_document_is_saved_read_back_versioned_and_announced(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    changes = raw.pubsub()
    changes.subscribe(f"{NS}:changed")
    assert changes.get_message(timeout=2)["type"] == "subscribe"
    store.save("shop", {"phase": "progressing", "weight": 20.0}, token=1)
    store.save("shop", {"phase": "waiting", "weight": 20.0}, token=1)
    store.save("api", {"phase": "idle"}, token=1)
    assert store.load("shop") == {"phase": "waiting", "weight": 20.0}
    assert store.load("nothing") is None
    assert store.versions() == {"shop": 2, "api": 1}
    assert store.routes() == ["api", "shop"]
    assert store.where("shop") == f"{store.location} key {NS}:state shop"
    announced = []
    for _ in range(3):
        message = changes.get_message(timeout=2)
        assert message is not None
        announced.append(json.loads(message["data"]))
    assert announced == [
        {"kind": "state", "route": "shop", "version": 1},
        {"kind": "state", "route": "shop", "version": 2},
        {"kind": "state", "route": "api", "version": 1},
    ]
    changes.close()
    store.delete("api")
    assert (store.routes(), store.versions()) == (["shop"], {"shop": 2})


def test_a_write_with_an_older_token_is_refused_and_the_newer_one_stands(
    store: RedisStateStore,
) -> None:
    store.save("shop", {"by": "leader 5"}, token=5)
    with pytest.raises(Fenced) as caught:
        store.save("shop", {"by": "leader 4"}, token=4)
    assert (caught.value.token, caught.value.fence) == (4, 5)
    assert not isinstance(caught.value, OSError)  # never retried as an outage would be
    with pytest.raises(Fenced):
        store.verdicts().append([VerdictEntry("shop", "v1", "promoted", 1.0)], token=4)
    assert store.load("shop") == {"by": "leader 5"}
    assert store.verdicts().load() == {}
    assert store.versions() == {"shop": 1}
    store.save("shop", {"by": "leader 6"}, token=6)
    with pytest.raises(Fenced):
        store.save("shop", {"by": "leader 5 again"}, token=5)
    with pytest.raises(ValueError, match="needs a fencing token"):
        store.save("shop", {"by": "nobody"})


def test_the_verdict_record_folds_to_the_latest_per_revision_and_stays_bounded(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    record = store.verdicts()
    record.append(
        [
            VerdictEntry("shop", "v1", "rolled_back", 1.0, "errors"),
            VerdictEntry("shop", "v2", "promoted", 2.0),
            VerdictEntry("api", "a1", "promoted", 3.0),
        ],
        token=1,
    )
    raw.rpush(f"{NS}:verdicts", b"{not an entry")  # a hand edit
    record.append([VerdictEntry("shop", "v1", "retried", 4.0)], token=1)
    latest = store.verdicts().load()
    assert {route: sorted(revs) for route, revs in latest.items()} == {
        "shop": ["v2"],
        "api": ["a1"],
    }
    assert latest["shop"]["v2"].verdict == "promoted"

    many = [VerdictEntry("busy", f"r{i}", "promoted", 10.0 + i) for i in range(COMPACT_AFTER)]
    record.append(many, token=1)
    before = store.verdicts().load()  # over COMPACT_AFTER lines: rewritten compacted
    assert raw.llen(f"{NS}:verdicts") == 64 + 2  # the newest 64 of "busy", shop v2, api a1
    after = store.verdicts().load()
    assert (after["shop"], after["api"]) == (before["shop"], before["api"])
    assert after["busy"] == dict(list(before["busy"].items())[-64:])


# --- a rollout saved by one controller, resumed by another -------------------------------------


def routing(steps: list[Any]) -> dict[str, Any]:
    rollout = {"steps": steps, "interval": "2s", "min_requests": 10,
               "checks": [{"metric": "error_rate", "max": 0.05}]}  # fmt: skip
    return {"routes": [{
        "name": "shop",
        "stable": "http://stable:80",
        "candidate": {"url": "http://candidate:80", "revision": "v2"},
        "weight": 5,
        "rollout": rollout,
    }]}  # fmt: skip


class Replica:
    """A controller over a real state and recorder, its clock moved by hand, saving to Redis."""

    def __init__(self, config: dict[str, Any], store: RedisStateStore, now: float) -> None:
        self.now = now
        self.state = RuntimeState()
        text = yaml.safe_dump(config, sort_keys=False)
        self.state.load(parse_routing(text), content_hash(text), self.now)
        self.recorder = Recorder(self.state, clock=lambda: self.now)
        self.control = Controller(
            self.state,
            self.recorder,
            store=cast(StateStore, store),  # until Controller is typed against StateBackend
            clock=lambda: self.now,
        )
        for follower in (self.recorder.on_swap, self.control.on_swap):
            self.state.subscribe(follower)

    @property
    def analyzer(self) -> Analyzer:
        return self.control.analyzers()["shop"]

    def second(self) -> None:
        weight = self.analyzer.weight or 0.0
        p = weight / 100
        for i in range(100):
            version: Version = CANDIDATE if i < round(100 * p) else STABLE
            self.recorder.windows.window("shop").observe(self.now + 0.5, version, 0.02, False, p)
        self.now += 1
        self.control.tick()


async def test_a_rollout_saved_by_the_leader_is_resumed_by_the_next_one(
    store: RedisStateStore, leases: Callable[..., RedisLease]
) -> None:
    steps: list[Any] = [20, {"pause": True}, 50]
    first = Replica(routing(steps), store, T0)
    token = await leases("a").acquire()
    assert token == 1
    first.control.persistence.token = token
    first.control.tick()
    for _ in range(60):
        first.second()
        if first.analyzer.phase == "waiting":
            break
    assert (first.analyzer.phase, first.analyzer.weight) == ("waiting", 20.0)
    await first.control.flush()
    assert store.versions()["shop"] >= 1

    # a follower adopts the leader's document without writing anything
    follower = Persistence(store)
    doc = store.load("shop")
    assert doc is not None
    spec = first.analyzer.spec
    adopted = follower.resume("shop", spec, (), 0, doc, store.where("shop"))
    assert isinstance(adopted, Restored)
    assert (adopted.analyzer.phase, adopted.analyzer.weight) == ("waiting", 20.0)

    second = Replica(routing(steps), store, first.now + 30)
    second.control.tick()
    assert (second.analyzer.phase, second.analyzer.weight, second.analyzer.step_index) == (
        "waiting",
        20.0,
        1,
    )
    history = second.control.events("shop")
    assert history[-1]["kind"] == "state_restored"
    assert "from Redis" in history[-1]["message"]
    assert second.control.summary()["backend"] == "redis"


# --- Redis away and back -----------------------------------------------------------------------


async def test_redis_out_of_reach_is_unavailable_and_the_write_goes_out_when_it_is_back(
    redis_server: RedisServer, store: RedisStateStore
) -> None:
    persistence = Persistence(store, retry=0.05)
    persistence.token = 1
    redis_server.stop()
    with pytest.raises(StateUnavailable):
        store.load("shop")
    persistence.mark("shop", Analyzer("shop", SPEC), [{"kind": "started"}], 1.0)
    persistence.verdict("shop", "v0", "promoted", 1.0)
    await persistence.flush()
    assert persistence.last_error is not None
    assert "Connection refused" in persistence.last_error
    assert persistence.summary()["last_error"] == persistence.last_error

    redis_server.start()
    persistence.start()  # the writer retries what is still queued
    await until(lambda: store.versions().get("shop") == 1, "the document written")
    await persistence.close()
    saved = store.load("shop")
    assert saved is not None
    assert saved["ledger"] == [{"kind": "started"}]
    assert "v0" in store.verdicts().load()["shop"]
    assert persistence.last_error is None


# --- hostile documents -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": 1, "route": "shop", "analyzer": {"pha', "not valid JSON"),
        (b"[1, 2, 3]", "a JSON list, not an object"),
        (b"x" * 2000, "2000 bytes, more than the 1000 allowed"),
        (b'{"format": 1, "route": "other", "analyzer": {}}', "route: 'other' is not 'shop'"),
    ],
)
def test_a_hostile_document_is_rejected_with_the_reason_and_set_aside(
    store: RedisStateStore,
    raw: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    reason: str,
) -> None:
    monkeypatch.setattr("splitproxy.replicas.redisstore.MAX_STATE_BYTES", 1000)
    raw.hset(f"{NS}:state", "shop", content)
    rejected = Persistence(store).restore("shop", SPEC, (), 0)
    assert isinstance(rejected, Rejected)
    assert rejected.path == store.where("shop")
    assert rejected.reason.startswith(reason), rejected.reason
    assert rejected.kept == f"{store.location} key {NS}:rejected shop"
    assert raw.hget(f"{NS}:rejected", "shop") == content


def test_a_state_key_of_another_type_is_rejected_not_a_crash(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    raw.set(f"{NS}:state", "not a hash")
    rejected = Persistence(store).restore("shop", SPEC, (), 0)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == f"{NS}:state is not a hash"


def test_the_state_setting_chooses_the_backend(redis_server: RedisServer, tmp_path: Any) -> None:
    files = state_backend(tmp_path / "state")
    assert (files.fenced, files.location) == (False, str(tmp_path / "state"))
    shared = state_backend(redis_server.url, "shop")
    assert isinstance(shared, RedisStateStore)
    assert (shared.fenced, shared.keys.state) == (True, "shop:state")
    shared.close()
    with pytest.raises(ValueError, match=r"redis://:\*\*\*@127.0.0.1:1/x"):
        state_backend("redis://:pw@127.0.0.1:1/x")


async def test_the_status_says_the_state_is_in_redis(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    routes = {
        "routes": [{"name": "shop", "stable": "http://127.0.0.1:9", "rollout": {"steps": [20]}}]
    }
    server = await start_proxy(routes, state=redis_server.url, state_namespace=NS)
    assert server.control is not None
    assert server.control.summary() == {
        "backend": "redis",
        "location": redis_server.url,
        "state_dir": None,
        "persistent": True,
        "last_error": None,
    }


# --- the leader lease --------------------------------------------------------------------------


async def test_one_replica_holds_the_lease_and_a_stale_leader_cannot_write(
    store: RedisStateStore, leases: Callable[..., RedisLease]
) -> None:
    a, b = leases("a", ttl=0.3), leases("b", ttl=0.3)
    first = await a.acquire()
    assert first is not None
    assert await b.acquire() is None
    assert await a.acquire() == first  # already ours: renewed, same token
    assert await a.renew()
    assert not await b.renew()
    assert await b.holder() == "a"
    store.save("shop", {"by": "a"}, token=first)

    # a stops renewing (a pause, a partition): its lease expires and b takes over
    await until(b.acquire, "b takes the expired lease")
    second = b.token
    assert second is not None
    assert second > first
    assert not await a.renew()
    store.save("shop", {"by": "b"}, token=second)
    with pytest.raises(Fenced):
        store.save("shop", {"by": "a, unaware"}, token=first)
    assert store.load("shop") == {"by": "b"}

    await a.release()  # not a's: nothing happens
    assert await b.holder() == "b"
    await b.release()
    assert await b.holder() is None
    third = await a.acquire()
    assert third is not None
    assert third > second


async def test_a_lost_epoch_never_hands_out_a_token_below_the_fence(
    store: RedisStateStore, raw: redis.Redis, leases: Callable[..., RedisLease]
) -> None:
    store.save("shop", {"by": "leader 7"}, token=7)
    raw.delete(f"{NS}:epoch")  # lost or deleted by hand
    token = await leases("a").acquire()
    assert token == 8
    store.save("shop", {"by": "leader 8"}, token=token)


async def test_the_lease_out_of_reach_is_unavailable(
    redis_server: RedisServer, leases: Callable[..., RedisLease]
) -> None:
    lease = leases("a")
    redis_server.stop()
    with pytest.raises(StateUnavailable, match="the leader lease"):
        await lease.acquire()
