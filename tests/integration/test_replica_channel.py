"""The replicas' channel through a real redis-server: the routing state's fenced writes, the
admin writes forwarded to the leader, and hostile values left in Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from splitproxy.replicas.channel import Channel, Command, StaleToken
from tests.redis_server import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=2.0)
    yield redis
    await redis.aclose()


async def test_a_routing_state_written_under_an_older_token_is_refused(client: Redis) -> None:
    channel = Channel(client, "t")
    assert await channel.read_routing() is None
    first = await channel.write_routing({"overrides": {"a": 1}}, token=3)
    assert await channel.read_routing() == (first, {"overrides": {"a": 1}})
    with pytest.raises(StaleToken):
        await channel.write_routing({"overrides": {"a": 2}}, token=2)
    second = await channel.write_routing({"overrides": {"a": 3}}, token=4)
    assert second == first + 1
    assert await channel.read_routing() == (second, {"overrides": {"a": 3}})
    assert await channel.routing_version() == second


async def test_a_write_announces_itself_on_the_changes_channel(client: Redis) -> None:
    channel = Channel(client, "t")
    pubsub = await channel.subscribe()
    try:
        version = await channel.write_routing({"x": 1}, token=1)
        note = None
        for _ in range(20):
            note = await pubsub.get_message(timeout=0.25)
            if note is not None:
                break
        assert note is not None
        assert json.loads(note["data"]) == {"kind": "routing", "version": version}
    finally:
        await pubsub.aclose()


async def test_a_forwarded_command_gets_the_leaders_answer(client: Redis) -> None:
    follower, leader = Channel(client, "t"), Channel(client, "t")

    async def lead() -> None:
        command = await leader.next_command(block=2.0)
        assert command is not None
        assert (command.route, command.action, command.payload) == ("app", "weight", {"weight": 25})
        await leader.answer(command, 200, {"name": "app", "weight": 25})

    task = asyncio.create_task(lead())
    answer = await follower.send("app", "weight", {"weight": 25}, wait=3.0)
    await task
    assert (answer.status, answer.body) == (200, {"name": "app", "weight": 25})


async def test_without_a_leader_the_caller_gives_up_and_a_late_leader_drops_it(
    client: Redis,
) -> None:
    channel = Channel(client, "t")
    with pytest.raises(TimeoutError):
        await channel.send("app", "pause", {"reason": ""}, wait=0.3)
    # the command is still queued, but nobody waits for it any more: never carried out
    assert await channel.next_command(block=0.5) is None


async def test_hostile_values_in_redis_are_refused_not_trusted(client: Redis) -> None:
    channel = Channel(client, "t")
    await client.rpush("t:commands", b"not json", json.dumps({"id": 1}))
    assert await channel.next_command(block=0.5) is None
    assert await channel.next_command(block=0.5) is None
    await client.set("t:routing", b"{broken")
    with pytest.raises(json.JSONDecodeError):
        await channel.read_routing()
    await client.set("t:routing", b"x" * (9 * 1024 * 1024))
    with pytest.raises(ValueError, match="bytes"):
        await channel.read_routing()


def test_a_command_survives_its_json_and_refuses_anything_else() -> None:
    command = Command("abc", "app", "rollback", {"reason": "bad"}, time.time() + 5)
    assert Command.from_json(command.to_json().encode()) == command
    for raw in (b"[]", b'{"id": "a"}', b'{"id":"a","route":"r","action":"x","payload":{},'
                b'"deadline":true}', b"x" * 70000):  # fmt: skip
        assert Command.from_json(raw) is None
