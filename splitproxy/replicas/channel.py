"""What replicas say to each other through Redis besides the state documents (async IO, thin).

*The routing state* (``{ns}:routing``, with ``{ns}:routing_version``): the leader's runtime
weights, rollout weights, reverts and warm backends (`routingwire.encode_routing`), written by one
Lua script that refuses a stale fencing token exactly as the state documents' writes do, and
announced on the ``{ns}:changed`` channel. Followers adopt it onto their own routing file.

*Commands* (``{ns}:commands``): an admin write made on a follower (a weight, a manual command,
a revert) is queued for the leader with an id and a deadline; the leader carries it out as its
own admin API would and pushes the answer to ``{ns}:result:<id>``, which the follower waits
for. A command whose deadline passed is dropped unanswered: a late leader must never carry out
what its caller already gave up on.

*Changes* (``{ns}:changed``): every state and routing write publishes a small JSON note; a
`Changes` subscription wakes the follower's sync at once (it also reads every second anyway,
so a lost message costs at most that).

Every payload read back is bounded and checked: Redis is shared, its content is input.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

logger = logging.getLogger("splitproxy.replicas")

MAX_ROUTING_BYTES: Final = 8 * 1024 * 1024
MAX_COMMAND_BYTES: Final = 64 * 1024
MAX_RESULT_BYTES: Final = 4 * 1024 * 1024
COMMANDS_KEPT: Final = 1000  # queued commands beyond this are refused (no leader for long)
RESULT_TTL: Final = 30  # seconds an answer waits for its caller

# KEYS: fence, routing, routing_version; ARGV: token, document, channel
_WRITE_ROUTING: Final = """
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return -1 end
if token > fence then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[2])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3], cjson.encode({kind = 'routing', version = version}))
return version
"""


class StaleToken(Exception):
    """A write refused because a newer leader's fencing token is on record."""


@dataclass(frozen=True, slots=True)
class Command:
    """An admin write forwarded to the leader: ``action`` is ``weight`` (``payload``
    ``{"weight": n}``), ``clear_weight``, ``revert`` or a rollout command (``{"reason"}``)."""

    id: str
    route: str
    action: str
    payload: dict[str, Any]
    deadline: float  # Unix time after which nobody waits for the answer

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "route": self.route, "action": self.action,
             "payload": self.payload, "deadline": self.deadline}
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes) -> Command | None:
        """The command, or None for anything that is not one (logged by the caller)."""
        if len(raw) > MAX_COMMAND_BYTES:
            return None
        try:
            d = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(d, dict):
            return None
        cid, route, action = d.get("id"), d.get("route"), d.get("action")
        payload, deadline = d.get("payload"), d.get("deadline")
        if not (isinstance(cid, str) and isinstance(route, str) and isinstance(action, str)):
            return None
        if not isinstance(payload, dict) or isinstance(deadline, bool):
            return None
        if not isinstance(deadline, int | float) or len(cid) > 64:
            return None
        return cls(cid, route, action, payload, float(deadline))


@dataclass(frozen=True, slots=True)
class Answer:
    """The leader's answer to a `Command`: an HTTP status and its JSON body."""

    status: int
    body: Any

    @classmethod
    def from_json(cls, raw: bytes) -> Answer | None:
        if len(raw) > MAX_RESULT_BYTES:
            return None
        try:
            d = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(d, dict) or not isinstance(d.get("status"), int):
            return None
        status = d["status"]
        if isinstance(status, bool) or not 200 <= status <= 599:
            return None
        return cls(status, d.get("body"))


class Channel:
    """The routing state, the command queue and the change notes of one namespace."""

    def __init__(self, client: Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.changes_channel = f"{namespace}:changed"
        self._fence = f"{namespace}:fence"
        self._routing = f"{namespace}:routing"
        self._routing_version = f"{namespace}:routing_version"
        self._commands = f"{namespace}:commands"
        self._write = client.register_script(_WRITE_ROUTING)

    # -- the routing state ------------------------------------------------------------------
    async def write_routing(self, document: dict[str, Any], token: int) -> int:
        """Store the leader's routing state; its new version. Raises `StaleToken`."""
        text = json.dumps(document, separators=(",", ":"))
        keys = [self._fence, self._routing, self._routing_version]
        version = int(await self._write(keys=keys, args=[token, text, self.changes_channel]))
        if version < 0:
            raise StaleToken(f"fencing token {token} is older than the one on record")
        return version

    async def routing_version(self) -> int:
        raw = await self.client.get(self._routing_version)
        return int(raw) if raw is not None and raw.isdigit() else 0

    async def read_routing(self) -> tuple[int, Any] | None:
        """(version, the decoded JSON) of the routing state, or None when there is none.
        Raises ValueError for a value too big or not JSON."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self._routing_version)
            pipe.strlen(self._routing)
            version_raw, size = await pipe.execute()
        if not size:
            return None
        if size > MAX_ROUTING_BYTES:
            raise ValueError(f"the routing state is {size} bytes, over {MAX_ROUTING_BYTES}")
        raw = await self.client.get(self._routing)
        if raw is None:
            return None
        version = int(version_raw) if version_raw is not None and version_raw.isdigit() else 0
        return version, json.loads(raw)

    # -- commands ---------------------------------------------------------------------------
    async def send(self, route: str, action: str, payload: dict[str, Any], wait: float) -> Answer:
        """Queue a command for the leader and wait up to ``wait`` seconds for its answer.
        Raises TimeoutError when none came."""
        command = Command(secrets.token_hex(8), route, action, payload, time.time() + wait)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self._commands)
            pipe.rpush(self._commands, command.to_json())
            queued, _ = await pipe.execute()
        if queued >= COMMANDS_KEPT:
            await self.client.ltrim(self._commands, -COMMANDS_KEPT, -1)
        key = f"{self.namespace}:result:{command.id}"
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            got = await self.client.blpop([key], timeout=max(0.1, min(1.0, left)))
            if got is not None:
                answer = Answer.from_json(_raw(got[1]))
                if answer is None:
                    raise ValueError("the leader's answer is not an answer")
                return answer
        raise TimeoutError(f"no answer from the leader within {wait:g}s")

    async def next_command(self, block: float) -> Command | None:
        """The next command still awaited (older ones dropped), waiting up to ``block``."""
        got = await self.client.blpop([self._commands], timeout=block)
        if got is None:
            return None
        command = Command.from_json(_raw(got[1]))
        if command is None:
            logger.warning("dropped a queued command that is not one (%d bytes)", len(got[1]))
            return None
        if command.deadline < time.time():
            logger.warning("dropped %s of route %r: its caller stopped waiting",
                           command.action, command.route)  # fmt: skip
            return None
        return command

    async def answer(self, command: Command, status: int, body: Any) -> None:
        key = f"{self.namespace}:result:{command.id}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps({"status": status, "body": body}))
            pipe.expire(key, RESULT_TTL)
            await pipe.execute()

    # -- change notes -----------------------------------------------------------------------
    async def subscribe(self) -> PubSub:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.changes_channel)
        return pubsub


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


__all__ = ["Answer", "Channel", "Command", "StaleToken"]
