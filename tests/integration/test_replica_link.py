"""Two replicas in this test's event loop on one real redis-server: the leader's routing
state reaches the follower, and a leader frozen past its lease (a long pause, a cut network)
can no longer overwrite what the next leader decided: its late write is refused and it steps
down."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import redis

from splitproxy.replicas.link import ReplicaLink
from splitproxy.server import Server
from tests.conftest import StartProxy
from tests.redis_server import RedisServer

ROUTES: dict[str, Any] = {
    "routes": [{
        "name": "app",
        "stable": {"url": "http://127.0.0.1:9", "revision": "1.0"},
        "candidate": {"url": "http://127.0.0.1:9", "revision": "1.1"},
        "rollout": {"steps": [20, 50], "interval": "1h"},
    }]
}  # fmt: skip


async def until(check: Callable[[], Any], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check() if inspect.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


def link(server: Server) -> ReplicaLink:
    assert server.replica is not None
    return server.replica


async def test_a_frozen_leaders_late_write_is_refused_and_it_steps_down(
    start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    first = await start_proxy(ROUTES, state=redis_server.url)
    second = await start_proxy(ROUTES, state=redis_server.url)
    a, b = link(first), link(second)
    assert (a.leading, b.leading) == (True, False)  # the first to start took the lease
    old_token = a.token
    assert old_token is not None

    # the follower serves the leader's split
    def followed() -> bool:
        snapshot = second.state.snapshot
        return snapshot is not None and snapshot.rollout_weights.get("app") is not None

    await until(followed, "the leader's rollout weight on the follower")
    # freeze the leader: its tasks stop (as in a long pause), its lease runs out
    for task in a._tasks:
        task.cancel()
    raw = redis.Redis.from_url(redis_server.url)
    try:
        raw.delete("splitproxy:leader")  # the ttl, without waiting 6 s for it
        await until(lambda: b.leading, "the follower taking the lease")
        assert b.token is not None
        assert b.token > old_token
        assert second.control is not None
        second.control.command("app", "pause", reason="the new leader decides")
        await second.control.flush()
        saved = raw.hget("splitproxy:state", "app")
        assert saved is not None
        assert b'"paused"' in saved
        # the old leader wakes up and writes what it decided under its old token
        assert first.control is not None
        first.control.command("app", "rollback", reason="a stale decision")
        await first.control.flush()
        assert raw.hget("splitproxy:state", "app") == saved  # refused: the newer decision stands
        assert not a.leading  # and it knows it no longer leads
        assert first.control.leading is False
    finally:
        raw.close()
