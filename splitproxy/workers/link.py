"""A worker's side of the pool: what `server.Server` asks of it, and the tasks that publish.

`server.Server` takes an optional `WorkerLink` (None: a process alone, as without workers) and
asks it four things: the `Recorder` to count with (`recorder`), whether this worker leads
(`leader`), the listening sockets the supervisor opened (`listener`) and, for a follower, the
leader's state to start from (`adopt_first`). Once the server serves, `begin` starts the link's
tasks, and `close` stops them.

*The leader* (worker 0) runs the one rollout controller, the admin API, the reloader and the
state directory, as a single process does. Its windows are `pooling.PooledWindows`: its data
path writes its own requests, the controller and status read the pool. It publishes its
snapshot (`dataplane.state.SharedState`) after every swap, takes the followers' buckets into
the `pooling.Pool`, their counts into `counts.WorkerCounts` and their A/B tests' events into
its global tables of users (`dataplane.abpool`: each user counted once, whichever workers
their requests reach).

*A follower* serves the same listener with the leader's config and weights (`RuntimeState.adopt`
on each `StateUpdate`: a reload, a runtime weight, a rollout step, a rollback or a manual
command reach it as soon as the leader's snapshot changes), and publishes its closed buckets
and A/B events (4 times a second) and its data-path counts (once a second). It runs no
controller, no admin API, no reloader and no active health checks (it follows the leader's,
`checks.py`): nothing in it decides anything.

`Backplane` is the seam for another transport (a shared store, for replicas on several hosts):
the link only ever sends and receives the messages of `ipc.py` through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal, Protocol

from splitproxy.dataplane.abpool import AbLead
from splitproxy.dataplane.state import RuntimeState, SharedState, Snapshot
from splitproxy.metrics import Recorder
from splitproxy.rollout.windows import Windows
from splitproxy.workers.checks import SharedChecks, follow
from splitproxy.workers.counts import (
    LateBucketsCollector,
    PooledRegistry,
    WorkerCounts,
    data_path_families,
)
from splitproxy.workers.ipc import Checked, Counted, Members, Observed, Ready, StateUpdate
from splitproxy.workers.mirrors import merge_tallies, take_tallies
from splitproxy.workers.pooling import Harvester, Pool, PooledWindows

if TYPE_CHECKING:
    from splitproxy.server import Server

logger = logging.getLogger("splitproxy.workers")

HARVEST_EVERY: Final = 0.25  # seconds between two harvests of the live windows
COUNT_EVERY: Final = 1.0  # seconds between two sends of a follower's counts

Listener = Literal["proxy", "preview", "admin"]
LISTENERS: Final[tuple[Listener, ...]] = ("proxy", "preview", "admin")


class Backplane(Protocol):
    """How a worker reaches the others: send a message, receive the next (None: gone)."""

    def send(self, message: object, *, droppable: bool = False) -> bool: ...

    async def receive(self) -> object | None: ...


class WorkerLink:
    """One worker's link to the others (see the module docstring)."""

    def __init__(
        self,
        worker: int,
        backplane: Backplane,
        listeners: dict[Listener, socket.socket],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.worker = worker
        self.leader = worker == 0
        self.backplane = backplane
        self.clock = clock
        self._listeners = listeners
        self.windows: Windows = PooledWindows() if self.leader else Windows()
        self.pool = Pool(self.windows) if isinstance(self.windows, PooledWindows) else None
        self.counts = WorkerCounts()
        self.first: SharedState | None = None  # a follower's state to start from
        self._harvester = Harvester(self.windows)
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ab_sent: AbLead | None = None  # the leader's last word on the A/B tests
        self._checks: SharedChecks | None = None  # the leader's active checks, to share
        self.gone = asyncio.Event()  # the supervisor went away: the worker should stop

    # -- what the server asks ----------------------------------------------------------------
    def recorder(self, state: RuntimeState) -> Recorder:
        """The worker's recorder: the leader's reads the pool, and its scrape sums workers."""
        recorder = Recorder(state, windows=self.windows)
        recorder.ab.share()  # every worker's users counted once, by the leader (abpool)
        recorder.ab.lead(self.leader)
        if self.leader:
            pool = self.pool
            recorder.registry.register(LateBucketsCollector(lambda: pool.dropped if pool else 0))
            recorder.registry = PooledRegistry(recorder.registry, self.counts)
        return recorder

    def listener(self, name: Listener) -> socket.socket | None:
        """The listening socket the supervisor opened for ``name`` (each worker accepts from
        the same one), or None."""
        return self._listeners.get(name)

    def adopt_first(self, state: RuntimeState) -> None:
        """A follower starts from the leader's config and weights."""
        if self.first is None:
            raise RuntimeError("a follower starts only after the leader's state arrived")
        state.adopt(self.first)

    # -- lifecycle ---------------------------------------------------------------------------
    def begin(self, server: Server) -> None:
        """Publish and receive from now on; tell the supervisor this worker serves."""
        self._server = server
        loop = asyncio.get_running_loop()
        if self.leader:
            server.state.subscribe(self._publish_state)
            self._checks = SharedChecks(server.health)
        else:
            self._tasks.append(loop.create_task(self._send_counts()))
        self._tasks.append(loop.create_task(self._harvest()))
        self._tasks.append(loop.create_task(self._receive()))
        self.backplane.send(Ready(self.worker, os.getpid()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- the leader -------------------------------------------------------------------------
    def _publish_state(self, old: Snapshot | None, new: Snapshot) -> None:
        self.backplane.send(StateUpdate(SharedState.of(new), self._ab_lead()))

    def _ab_lead(self) -> AbLead | None:
        """The leader's word on the A/B tests (None: no route tests), remembered as sent."""
        server = self._server
        if server is None or not server.recorder.ab.routes:
            self._ab_sent = None
            return None
        self._ab_sent = server.recorder.ab.lead_info(os.getpid())
        return self._ab_sent

    def _publish_tests(self) -> None:
        """The leader: when an A/B test started (or restarted) since the last word, say so (the
        followers start their tables afresh for it)."""
        server = self._server
        snapshot = server.state.snapshot if server is not None else None
        if server is None or snapshot is None or not server.recorder.ab.routes:
            return
        sent = self._ab_sent
        if sent is None or sent.tests != server.recorder.ab.tests:
            self.backplane.send(StateUpdate(SharedState.of(snapshot), self._ab_lead()))

    def _routes(self) -> list[str]:
        server = self._server
        snapshot = server.state.snapshot if server is not None else None
        return [r.name for r in snapshot.routes] if snapshot is not None else []

    async def _harvest(self) -> None:
        while True:
            await asyncio.sleep(HARVEST_EVERY)
            now = self.clock()
            periods = self._harvester.harvest(self._routes(), now)
            if self.pool is not None:
                self.pool.contribute(self.worker, now, periods)
                self.pool.release(now)
                self._publish_tests()
                checked = self._checks.take() if self._checks is not None else None
                if checked is not None:
                    self.backplane.send(checked)
            else:
                server = self._server
                mirrors = take_tallies(server.recorder, self._routes()) if server else {}
                events = server.recorder.ab.drain() if server is not None else {}
                message = Observed(self.worker, now, periods, mirrors, events)
                self.backplane.send(message, droppable=True)

    async def _send_counts(self) -> None:
        while True:
            await asyncio.sleep(COUNT_EVERY)
            server = self._server
            if server is not None:
                families = data_path_families(server.recorder.registry)
                self.backplane.send(Counted(self.worker, os.getpid(), families), droppable=True)

    async def _receive(self) -> None:
        while True:
            message = await self.backplane.receive()
            if message is None:
                logger.warning("worker %d: the supervisor is gone; stopping", self.worker)
                self.gone.set()
                return
            self.handle(message)

    def handle(self, message: object) -> None:
        """One message from the others (see `ipc.py` for who sends what)."""
        if isinstance(message, StateUpdate):
            if not self.leader and self._server is not None:
                self._server.state.adopt(message.state)
                if message.ab is not None:
                    self._server.recorder.ab.follow_leader(message.ab)
        elif isinstance(message, Observed):
            if self.pool is not None:
                self.pool.contribute(message.worker, message.watermark, message.periods)
            server = self._server
            if self.leader and server is not None and message.ab:
                server.recorder.ab.absorb(message.ab)  # in the order the follower sent them
            if server is not None:
                merge_tallies(server.recorder, message.mirrors)
        elif isinstance(message, Counted):
            self.counts.update(message.worker, message.pid, message.families)
        elif isinstance(message, Checked):
            if not self.leader and self._server is not None:
                follow(self._server.health, message)
        elif isinstance(message, Members):
            if self._checks is not None:
                self._checks.members_changed()
            if self.pool is not None:
                self.pool.set_members(message.pids)
            self.counts.set_members(message.pids, message.restarts)
