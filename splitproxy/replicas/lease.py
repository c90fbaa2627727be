"""The leader lease: which replica decides, for how long, and with which fencing token.

`LeaseClock` is the pure part: told (in monotonic seconds) when an acquire or a renew was
*sent* and whether it succeeded, it says whether this replica may act as leader now and when
the next renew is due. It leads until ``last success + ttl - margin``: Redis counts the ttl
from when it ran the command, which is after we sent it, so timing from the send (and a
margin for clock rates and pauses) means we step down before Redis lets another replica in.

`RedisLease` is the IO: Lua scripts on the shared Redis. The lease is the key ``leader``
(value: the replica id, PX ttl). Taking it takes a fencing token (``INCR epoch``, kept in
``leader_token``); every state write carries the token and Redis refuses one older than the
newest written (`redisstore`), so a leader that lost the lease without noticing cannot undo a
newer leader's decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio

from splitproxy.replicas.keys import Keys
from splitproxy.rollout.store import StateUnavailable

DEFAULT_TTL: Final = 6.0


@dataclass(slots=True)
class LeaseClock:
    """When this replica leads and when to renew (see the module docstring); no IO, no clock:
    every method takes the monotonic time it is about."""

    ttl: float = DEFAULT_TTL
    margin: float = 1.0  # stepped down this long before the lease can expire in Redis
    _success: float | None = field(default=None, init=False)  # last acquire/renew that held
    _attempt: float | None = field(default=None, init=False)  # last acquire/renew sent

    def __post_init__(self) -> None:
        if not 0 <= self.margin < self.ttl:
            raise ValueError(f"margin {self.margin} must be at least 0 and below ttl {self.ttl}")

    @property
    def interval(self) -> float:
        """Seconds between renews: three tries before the lease runs out."""
        return self.ttl / 3

    def succeeded(self, sent: float) -> None:
        """An acquire or renew sent at ``sent`` holds the lease."""
        self._success = sent if self._success is None else max(self._success, sent)
        self._attempt = sent

    def failed(self, sent: float) -> None:
        """An acquire or renew sent at ``sent`` got no answer (Redis out of reach): we still
        lead until the last success runs out; renew again sooner."""
        self._attempt = sent

    def lost(self, sent: float) -> None:
        """Redis answered that another replica holds the lease: we do not lead, from now."""
        self._success = None
        self._attempt = sent

    def leading(self, now: float) -> bool:
        return self._success is not None and now < self._success + self.ttl - self.margin

    def until(self) -> float | None:
        """The monotonic time leading ends (None: not leading since the last loss)."""
        return None if self._success is None else self._success + self.ttl - self.margin

    def renew_due(self, now: float) -> bool:
        """True when a leader should renew now: `interval` after the last success, and after
        a failure each `interval` / 4 (still several tries before the lease runs out)."""
        if not self.leading(now) or self._attempt is None or self._success is None:
            return False
        if self._attempt > self._success:  # the last try failed
            return now >= self._attempt + self.interval / 4
        return now >= self._success + self.interval


# KEYS: leader, epoch, leader_token, fence; ARGV: replica id, ttl in ms
_ACQUIRE: Final = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if owner then
  local token = redis.call('GET', KEYS[3])
  if token then return tonumber(token) end
end
local token = redis.call('INCR', KEYS[2])
local fence = tonumber(redis.call('GET', KEYS[4]) or '0')
if token <= fence then
  token = fence + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[3], token)
return token
"""

# KEYS: leader; ARGV: replica id, ttl in ms
_RENEW: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: leader; ARGV: replica id
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisLease:
    """The lease on the shared Redis for ``replica_id`` (see the module docstring).

    Redis out of reach raises `StateUnavailable` (within the client's timeouts)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        namespace: str,
        replica_id: str,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be above 0, got {ttl}")
        self.client = client
        self.keys = Keys(namespace)
        self.replica_id = replica_id
        self.ttl = ttl
        self.token: int | None = None  # the fencing token of the lease we hold, if any
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def _px(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StateUnavailable(f"the leader lease: {exc}") from None

    async def acquire(self) -> int | None:
        """Take the lease if it is free (or renew it if it is ours): its fencing token; None
        when another replica holds it."""
        k = self.keys
        reply = await self._run(
            self._acquire, [k.leader, k.epoch, k.leader_token, k.fence], [self.replica_id, self._px]
        )
        self.token = None if reply is None else int(reply)
        return self.token

    async def renew(self) -> bool:
        """Extend the lease if it is still ours; False when it is not (it expired, another
        replica took it): stop leading at once."""
        reply = await self._run(self._renew, [self.keys.leader], [self.replica_id, self._px])
        held = bool(int(reply))
        if not held:
            self.token = None
        return held

    async def release(self) -> None:
        """Give the lease up if it is ours (shutting down: another replica need not wait for
        the ttl)."""
        await self._run(self._release, [self.keys.leader], [self.replica_id])
        self.token = None

    async def holder(self) -> str | None:
        """The replica id holding the lease now, if any (for the status)."""
        try:
            value = await self.client.get(self.keys.leader)
        except redis.RedisError as exc:
            raise StateUnavailable(f"the leader lease: {exc}") from None
        if value is None:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


__all__ = ["DEFAULT_TTL", "LeaseClock", "RedisLease"]
