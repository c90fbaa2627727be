"""What the supervisor and its workers say to each other, and the pipe they say it over.

Each worker has one anonymous socketpair with its supervisor (a `Channel`). The supervisor
relays: what the leader (worker 0) publishes goes to every other worker, what the others
publish goes to the leader. Messages, by direction:

- supervisor -> worker: `Hello` (who it is, the settings), then, to a follower, the leader's
  latest `StateUpdate`; to the leader, `Members` whenever a worker comes or goes;
- leader -> followers: `StateUpdate` after every change of its snapshot (a reload, a weight
  the admin API set, a rollout step, a rollback, a revert); `Checked`, its active health
  checks' results, four times a second when there are any (`checks.py`);
- follower -> leader: `Observed` (closed live-window buckets, the tallies of mirrored
  copies' answers and the A/B tests' events) four times a second, and
  `Counted` (its metric families to sum) once a second;
- worker -> supervisor: `Ready` once it serves.

Frames are a 4-byte big-endian length and a pickle. Pickle is acceptable here and only here:
both ends are processes of this one program, started by the supervisor, talking over a
socketpair that no other process can open. Nothing that crosses a host or a file uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from prometheus_client.core import Metric

from splitproxy.config.vocabulary import Version
from splitproxy.dataplane.abpool import AbEvents, AbLead
from splitproxy.dataplane.health import CheckResult
from splitproxy.dataplane.state import SharedState
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.workers.pooling import Periods

if TYPE_CHECKING:  # only composition roots read the settings; a worker receives them whole
    from splitproxy.settings import Settings

logger = logging.getLogger("splitproxy.workers")

MAX_FRAME: Final = 64 * 1024 * 1024
# Above this much unsent data to a peer, observations and counts are dropped (the peer is
# stuck); state updates are always queued, the newest wins at the peer anyway.
SEND_LIMIT: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Hello:
    """The supervisor to a new worker: its index (0 is the leader) and the settings."""

    worker: int
    leader: bool
    settings: Settings


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker serves (its listeners are open)."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """The leader's config and weights, for followers to serve exactly as it does, and its
    word on the A/B tests (`dataplane.abpool.AbLead`: who leads, each test's start; sent again
    when a test starts)."""

    state: SharedState
    ab: AbLead | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """A follower's live-window buckets that closed since its previous message; it has
    published everything up to ``watermark`` (Unix time)."""

    worker: int
    watermark: float
    periods: Periods
    # the candidate's answers to mirrored copies since the previous message, by route (a
    # shadow phase judges them; `rollout.mirrored`)
    mirrors: dict[str, MirrorTally] = field(default_factory=dict)
    # the A/B tests' events since the previous message, by route (the leader counts every
    # worker's users once; `dataplane.abpool`)
    ab: dict[str, AbEvents] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Counted:
    """A follower's metric families to add to the leader's ``/metrics``."""

    worker: int
    pid: int
    families: list[Metric]


# an active health check's result: route, version, address, result (dataplane.health)
CheckedResult = tuple[str, Version, str, CheckResult]
# where an address stands by the checks: route, version, address, in rotation, ready,
# consecutive passes, consecutive failures, the last result
Standing = tuple[str, Version, str, bool, bool, int, int, CheckResult | None]


@dataclass(frozen=True, slots=True)
class Checked:
    """The leader's active health check results since its previous message, in order, and
    when due (a worker came or went) every checked address's standing (`workers.checks`)."""

    results: tuple[CheckedResult, ...]
    standing: tuple[Standing, ...] | None = None


@dataclass(frozen=True, slots=True)
class Members:
    """The supervisor to the leader: the live workers (index -> pid), and how many times a
    worker was restarted since the supervisor started."""

    pids: dict[int, int]
    restarts: int


class Channel:
    """Framed messages over one end of a socketpair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    def send(self, message: object, *, droppable: bool = False) -> bool:
        """Queue ``message``; False when the channel is closed or (``droppable``) the peer is
        too far behind."""
        writer = self._writer
        if writer.is_closing():
            return False
        if droppable and writer.transport.get_write_buffer_size() > SEND_LIMIT:
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        writer.write(len(data).to_bytes(4, "big") + data)
        return True

    async def receive(self) -> object | None:
        """The next message; None when the peer closed its end (or sent garbage)."""
        try:
            head = await self._reader.readexactly(4)
            size = int.from_bytes(head, "big")
            if size > MAX_FRAME:
                logger.error("a worker message of %d bytes: closing the channel", size)
                return None
            message: object = pickle.loads(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message

    async def close(self) -> None:
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
