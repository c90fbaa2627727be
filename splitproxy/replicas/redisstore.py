"""`RedisStateStore`: the rollout state of replicas in one shared Redis (a `StateBackend`).

Under the namespace prefix (`keys.Keys`): the hash ``state`` (route -> its document, the JSON
the file backend keeps in ``<route>.json``), the hash ``versions`` (route -> a counter each
write increments: what followers poll), the list ``verdicts`` (the verdict record, one JSON
line per entry, bounded), the hash ``rejected`` (copies of unreadable documents) and ``fence``
(the highest fencing token a write has carried).

*Fenced writes.* Every write is one Lua script, so Redis runs it whole and alone: it refuses
a token below ``fence`` (raised here as `Fenced`), raises the fence to the token otherwise,
writes, and for a document bumps its version and publishes ``{"kind": "state", "route",
"version"}`` on the ``changed`` channel. A leader that lost its lease without noticing (a
pause, a partition) therefore cannot overwrite what a newer leader decided.

*Reading is input handling*, as with files: a document is read only when its size is within
`MAX_STATE_BYTES` (checked in Redis before it is sent), and must be a JSON object.

The client is the synchronous one: `persistence.Persistence` calls the store from its writer
thread. Redis out of reach raises `StateUnavailable` (an OSError: the write is tried again at
the next flush) within the client's short timeouts (`connection`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import redis

from splitproxy.replicas.connection import is_redis_url, redact, sync_client
from splitproxy.replicas.keys import Keys
from splitproxy.rollout.store import (
    COMPACT_AFTER,
    MAX_STATE_BYTES,
    Fenced,
    StateBackend,
    StateStore,
    StateUnavailable,
    StateUnreadable,
    VerdictEntry,
    by_route,
    compacted,
    entry_line,
    fold_verdicts,
    parse_document,
)

logger = logging.getLogger("splitproxy.replicas.redisstore")

# the verdict list is trimmed to this many lines at each append, and compacted to the latest
# entry per revision when a read finds more than `COMPACT_AFTER`
MAX_VERDICT_LINES: Final = 4 * COMPACT_AFTER

# KEYS: fence, state, versions; ARGV: token, route, document, channel
_SAVE: Final = """
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return {0, fence} end
if token > fence then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local version = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('PUBLISH', ARGV[4], cjson.encode({kind = 'state', route = ARGV[2], version = version}))
return {1, version}
"""

# KEYS: fence, verdicts; ARGV: token, lines kept, line...
_APPEND: Final = """
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return {0, fence} end
if token > fence then redis.call('SET', KEYS[1], ARGV[1]) end
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return {1, 0}
"""

# KEYS: verdicts; ARGV: the length read, the last line read, line... (only if unchanged since)
_COMPACT: Final = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return 1
"""

# KEYS: state; ARGV: route, byte limit. The size when over the limit, else the document.
_LOAD: Final = """
local size = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if size > tonumber(ARGV[2]) then return size end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# KEYS: state, rejected; ARGV: route
_SET_ASIDE: Final = """
local doc = redis.call('HGET', KEYS[1], ARGV[1])
if doc then redis.call('HSET', KEYS[2], ARGV[1], doc) return 1 end
return 0
"""

# KEYS: state, versions; ARGV: route, channel
_DELETE: Final = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({kind = 'state', route = ARGV[1], version = 0}))
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@contextlib.contextmanager
def reaching(location: str) -> Iterator[None]:
    """Redis errors as the state backend's: out of reach -> `StateUnavailable` (retried)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateUnavailable(f"{location}: {exc}") from None
    except redis.RedisError as exc:  # an error reply (out of memory, a key of another type)
        raise StateUnavailable(f"{location}: {exc}") from None


def _fenced_write(result: Any, token: int) -> int:
    """The reply of a fenced script: the version written, or `Fenced`."""
    ok, value = int(result[0]), int(result[1])
    if not ok:
        raise Fenced(token, value)
    return value


class RedisStateStore:
    """The rollout state in Redis under ``namespace`` (see the module docstring)."""

    fenced: Final = True

    def __init__(self, url: str, namespace: str = "splitproxy") -> None:
        self.keys = Keys(namespace)
        self.client = sync_client(url)  # ValueError naming the (redacted) URL
        self._location = redact(url)
        self._save = self.client.register_script(_SAVE)
        self._load = self.client.register_script(_LOAD)
        self._set_aside = self.client.register_script(_SET_ASIDE)
        self._delete = self.client.register_script(_DELETE)
        self._record: RedisVerdictRecord | None = None

    @property
    def location(self) -> str:
        return self._location

    def where(self, route: str) -> str:
        return f"{self._location} key {self.keys.state} {route}"

    def load(self, route: str) -> dict[str, Any] | None:
        """``route``'s document; `StateUnreadable` for one over `MAX_STATE_BYTES` (never
        sent), not JSON, or not an object; `StateUnavailable` when Redis is out of reach."""
        where = self.where(route)
        with reaching(self._location):
            try:
                reply = self._load(keys=[self.keys.state], args=[route, MAX_STATE_BYTES])
            except redis.ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                raise StateUnreadable(where, f"{self.keys.state} is not a hash") from None
        if reply is None:
            return None
        if isinstance(reply, int):
            raise StateUnreadable(where, f"{reply} bytes, more than the {MAX_STATE_BYTES} allowed")
        return parse_document(bytes(reply), where)

    def save(self, route: str, data: dict[str, Any], token: int | None = None) -> None:
        """Replace ``route``'s document if ``token`` is not older than the fence (`Fenced`
        otherwise); bump its version and announce it on the ``changed`` channel."""
        if token is None:
            raise ValueError("a write to the Redis state needs a fencing token")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        with reaching(self._location):
            reply = self._save(
                keys=[self.keys.fence, self.keys.state, self.keys.versions],
                args=[token, route, text, self.keys.changed],
            )
        _fenced_write(reply, token)

    def delete(self, route: str) -> None:
        with reaching(self._location):
            self._delete(
                keys=[self.keys.state, self.keys.versions], args=[route, self.keys.changed]
            )

    def routes(self) -> list[str]:
        with reaching(self._location):
            names = self.client.hkeys(self.keys.state)
        return sorted(_text(n) for n in names)

    def versions(self) -> dict[str, int]:
        """Route -> its document's version (what followers poll to see what changed)."""
        with reaching(self._location):
            raw = self.client.hgetall(self.keys.versions)
        out: dict[str, int] = {}
        for route, version in raw.items():
            with contextlib.suppress(ValueError):
                out[_text(route)] = int(version)
        return out

    def set_aside(self, route: str) -> str:
        """Copy ``route``'s document into the ``rejected`` hash (inside Redis: a document too
        big to read is copied all the same)."""
        with reaching(self._location):
            self._set_aside(keys=[self.keys.state, self.keys.rejected], args=[route])
        return f"{self._location} key {self.keys.rejected} {route}"

    def verdicts(self) -> RedisVerdictRecord:
        if self._record is None:
            self._record = RedisVerdictRecord(self)
        return self._record

    def close(self) -> None:
        self.client.close()


class RedisVerdictRecord:
    """The verdict record as the Redis list ``verdicts`` (the file record's lines, fenced)."""

    def __init__(self, store: RedisStateStore) -> None:
        self.store = store
        self.skipped = 0
        client = store.client
        self._append = client.register_script(_APPEND)
        self._compact = client.register_script(_COMPACT)

    @property
    def where(self) -> str:
        return f"{self.store.location} key {self.store.keys.verdicts}"

    def append(self, entries: Iterable[VerdictEntry], token: int | None = None) -> None:
        """Add ``entries`` at the end if ``token`` is not older than the fence (`Fenced`)."""
        lines = [entry_line(e) for e in entries]
        if not lines:
            return
        if token is None:
            raise ValueError("a write to the Redis state needs a fencing token")
        keys = self.store.keys
        with reaching(self.store.location):
            reply = self._append(
                keys=[keys.fence, keys.verdicts], args=[token, MAX_VERDICT_LINES, *lines]
            )
        _fenced_write(reply, token)

    def load(self) -> dict[str, dict[str, VerdictEntry]]:
        """Route -> revision -> its latest entry (``retried`` ones left out); lines that are
        not entries are skipped and counted. A long record is compacted (only if no write
        came in between: it keeps the same verdicts, whoever does it)."""
        with reaching(self.store.location):
            try:
                raw = self.store.client.lrange(self.store.keys.verdicts, -MAX_VERDICT_LINES, -1)
            except redis.ResponseError as exc:  # a key of another type
                raise StateUnreadable(self.where, str(exc)) from None
        lines = [line if isinstance(line, bytes) else line.encode() for line in raw]
        latest, count, self.skipped = fold_verdicts(lines)
        if self.skipped:
            logger.warning("%s: skipped %d lines that are not verdicts", self.where, self.skipped)
        if count > COMPACT_AFTER:
            kept = [entry_line(e) for e in compacted(latest.values())]
            try:
                with reaching(self.store.location):
                    self._compact(
                        keys=[self.store.keys.verdicts], args=[len(lines), lines[-1], *kept]
                    )
            except StateUnavailable as exc:
                logger.warning("could not compact %s: %s", self.where, exc)
        return by_route(latest)


def state_backend(setting: str | Path, namespace: str = "splitproxy") -> StateBackend:
    """The backend a ``state`` setting names: a ``redis://``/``rediss://`` URL, or a
    directory for files."""
    if is_redis_url(setting):
        return RedisStateStore(str(setting), namespace)
    return StateStore(Path(setting))


__all__ = [
    "MAX_VERDICT_LINES",
    "RedisStateStore",
    "RedisVerdictRecord",
    "reaching",
    "state_backend",
]
