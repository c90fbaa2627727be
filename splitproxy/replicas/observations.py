"""Replicas' live-window buckets through one Redis stream, and who is alive (async IO, thin).

*Publishing.* Four times a second a replica publishes its harvest (`wire.Harvest`: the
buckets that closed since its previous one, its mirrored copies' answers and its A/B events,
or the leader's word on the A/B tests, complete up to a watermark) as one entry of the stream
``{ns}:observed``: field ``replica`` (its id) and field ``harvest`` (`wire.encode_harvest`
JSON). The stream is trimmed to about `STREAM_MAXLEN`
entries (approximate trimming, which Redis does in whole nodes, cheaply).

*The watermark rides in the stream, always.* An empty harvest is still published, as a small
entry with the watermark alone (about 80 bytes): a reader must learn that a replica without
traffic has nothing more to say about a second, or its pool would wait `LATE_AFTER` seconds
for every second. Carrying it in the stream, rather than beside it, keeps it in order with the
buckets it vouches for: a reader never sees a watermark before the buckets it covers.

*Heartbeats.* Each publish also sets the replica's score in the sorted set ``{ns}:replicas``
to its watermark (the caller's Unix time); `members` reads who was heard from lately. So the
hosts' clocks must agree to well within ``stale_after`` (NTP does).

*A harvest too big for one entry* (over `wire.MAX_HARVEST_BYTES`: many thousands of busy
routes) is split by route over several entries; all but the last carry the previous
watermark, so no reader releases a second before it has the whole harvest.

*Reading.* `read` returns the other replicas' entries since the previous read; the first read
starts at the stream's end ("from now"). An entry that cannot be decoded is dropped and
counted in `dropped`, with one warning per kind of fault (`wire.WireError.kind`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from splitproxy.dataplane.abpool import AbEvents, AbLead
from splitproxy.replicas.wire import (
    MAX_HARVEST_BYTES,
    Harvest,
    WireError,
    decode_harvest,
    dumps,
    encode_harvest,
    loads,
)
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.windows import Period

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("splitproxy.replicas")

STREAM_MAXLEN: Final = 20_000  # entries kept (about): 4 per second per replica
READ_COUNT: Final = 500  # entries per XREAD
READ_PAGES: Final = 20  # XREADs per `read` at most: a reader far behind catches up over calls


class ObservationStream:
    """One replica's end of the ``{ns}:observed`` stream (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        namespace: str,
        replica_id: str,
        *,
        maxlen: int = STREAM_MAXLEN,
        entry_limit: int = MAX_HARVEST_BYTES,
    ) -> None:
        if not replica_id:
            raise ValueError("a replica needs an id")
        self.client = client
        self.replica_id = replica_id
        self.stream = f"{namespace}:observed"
        self.heartbeats = f"{namespace}:replicas"
        self.maxlen = maxlen
        self.entry_limit = entry_limit
        self.dropped = 0  # entries that could not be decoded
        self._last_id: bytes | None = None  # the last entry read; None: not read yet
        self._warned: set[str] = set()
        self._published = 0.0  # the watermark of the last harvest published whole

    # -- publishing ----------------------------------------------------------------------------
    async def publish(
        self,
        watermark: float,
        periods: Mapping[str, list[Period]],
        mirrors: Mapping[str, MirrorTally],
        ab: Mapping[str, AbEvents] | None = None,
        lead: AbLead | None = None,
    ) -> None:
        """Publish a harvest complete up to ``watermark`` (Unix time) and heartbeat; with a
        follower's A/B events (``ab``) or the leader's word on the A/B tests (``lead``)."""
        documents = self._documents(watermark, periods, mirrors, ab or {}, lead)
        async with self.client.pipeline(transaction=False) as pipe:
            for text in documents:
                pipe.xadd(
                    self.stream,
                    {"replica": self.replica_id, "harvest": text},
                    maxlen=self.maxlen,
                    approximate=True,
                )
            pipe.zadd(self.heartbeats, {self.replica_id: watermark})
            await pipe.execute()
        self._published = max(self._published, watermark)

    def _documents(
        self,
        watermark: float,
        periods: Mapping[str, list[Period]],
        mirrors: Mapping[str, MirrorTally],
        ab: Mapping[str, AbEvents],
        lead: AbLead | None,
    ) -> list[str]:
        """The harvest as one JSON document, or several when it is over the entry limit."""
        whole = dumps(encode_harvest(watermark, periods, mirrors, ab, lead))
        if len(whole) <= self.entry_limit:
            return [whole]
        out: list[str] = []
        chunk: dict[str, list[Period]] = {}
        size = 0
        for route, buckets in periods.items():
            one = len(dumps(encode_harvest(self._published, {route: buckets}, {})))
            if one > self.entry_limit:
                logger.error("the buckets of route %s are %d bytes: not published", route, one)
                continue
            if chunk and size + one > self.entry_limit:
                out.append(dumps(encode_harvest(self._published, chunk, {})))
                chunk, size = {}, 0
            chunk[route] = buckets
            size += one
        out.append(dumps(encode_harvest(self._published, chunk, {})))
        # the tallies and A/B events are bounded per route (few routes test): they go with
        # the watermark, after the buckets
        out.append(dumps(encode_harvest(watermark, {}, mirrors, ab, lead)))
        return out

    # -- reading -------------------------------------------------------------------------------
    async def read(self, block: float | None = None) -> list[Harvest]:
        """The other replicas' harvests since the previous read, oldest first. With ``block``
        (seconds), wait that long for one when there is none yet; None or 0: do not wait."""
        if self._last_id is None:
            self._last_id = await self._end()
        out: list[Harvest] = []
        wait = None if not block or block <= 0 else max(1, round(block * 1000))
        for _ in range(READ_PAGES):
            answer: Any = await self.client.xread(
                {self.stream: self._last_id}, count=READ_COUNT, block=wait
            )
            entries = _entries(answer)
            for entry_id, fields in entries:
                self._last_id = entry_id
                harvest = self._decode(fields or {})
                if harvest is not None:
                    out.append(harvest)
            if len(entries) < READ_COUNT:
                break
            wait = None  # more pages: take what is there, never wait again
        return out

    async def _end(self) -> bytes:
        """The id of the stream's newest entry ("0-0" without one): where a new reader starts.
        (XREAD's ``$`` would do for one blocking read, but not for the reads that follow.)"""
        newest: Any = await self.client.xrevrange(self.stream, count=1)
        return bytes(newest[0][0]) if newest else b"0-0"

    def _decode(self, fields: dict[bytes, bytes]) -> Harvest | None:
        raw_id = fields.get(b"replica")
        if raw_id == self.replica_id.encode():
            return None
        try:
            if raw_id is None:
                raise WireError("an entry without a replica id")
            replica = raw_id.decode("utf-8", "strict")
            raw = fields.get(b"harvest")
            if raw is None:
                raise WireError(f"an entry of {replica[:64]!r} without a harvest")
            return decode_harvest(replica, loads(raw, self.entry_limit))
        except (WireError, UnicodeDecodeError) as exc:
            self.dropped += 1
            kind = exc.kind if isinstance(exc, WireError) else "json"
            if kind not in self._warned:
                self._warned.add(kind)
                logger.warning(
                    "dropped an observation entry of %s (%s); further entries dropped for "
                    "this kind of fault are counted, not logged", self.stream, exc,
                )  # fmt: skip
            return None

    # -- who is alive ----------------------------------------------------------------------------
    async def members(self, now: float, stale_after: float = 3.0) -> set[str]:
        """The replicas (this one included, once it published) heard from within
        ``stale_after`` seconds of ``now`` (Unix time); older ones are removed from the set."""
        since = now - stale_after
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.heartbeats, "-inf", f"({since!r}")
            pipe.zrangebyscore(self.heartbeats, since, "+inf")
            _, names = await pipe.execute()
        out = set()
        for raw in names:
            try:
                out.add(raw.decode("utf-8", "strict") if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                continue  # not a replica of ours: it never publishes, so no one waits for it
        return out


def _entries(answer: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of one stream's XREAD answer (a list of ``[stream, entries]`` pairs over
    RESP2, a mapping stream -> entries over RESP3; None when nothing came)."""
    if not answer:
        return []
    if isinstance(answer, dict):
        return [entry for entries in answer.values() for entry in entries]
    return [entry for _, entries in answer for entry in entries]


__all__ = ["STREAM_MAXLEN", "Harvest", "ObservationStream"]
