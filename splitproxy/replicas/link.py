"""A replica's link to the others through Redis: one leader decides, every replica serves.

Several ``splitproxy serve`` processes (on one host or several) given the same routing file
and ``--state redis://...`` act as one (`server.Server` builds a `ReplicaLink` for them):

*The lease.* Every second each replica either renews the leader's lease (the leader) or tries
to take it (`lease.RedisLease`; a lease lives ``lease_ttl`` seconds). Taking it yields a
fencing token, and every state write of the leader carries it: a stale leader (paused, cut
off, slow) cannot overwrite what a newer one decided, its writes are refused (`Fenced`,
`channel.StaleToken`) and it steps down. A leader also steps down by itself once its lease
may have lapsed (``lease_ttl`` minus a margin after its last renewal, by its own clock), so
two replicas never decide at once.

*The leader* ticks the analyzers (`Controller.lead`), writes the rollout state documents
(`RedisStateStore`, fenced) and publishes its routing state: the runtime weights, rollout
weights, reverts and warm backends (`channel.Channel.write_routing`). It carries out the admin
writes the other replicas forward (`forward` on their side, `_commands` on its side).

*A follower* serves its own routing file with the leader's routing state adopted on top
(`routingwire.RoutingState.apply_to`), and adopts the leader's state documents into its controller
(`Controller.adopt`): status on any replica shows the same phase, and a replica that takes
over resumes at the same step. A change note on ``{ns}:changed`` wakes it at once; it also
reads every ``sync_every`` seconds, in case a note was lost.

*Pooled observations.* Every replica harvests its closed 1 s buckets four times a second
(`workers.pooling.Harvester`), adds them to its own `workers.pooling.Pool` and publishes them
(`observations.ObservationStream`); it reads the others' from the stream. So every replica
holds the sum of all replicas' traffic in its `PooledWindows`: the leader judges it, and a
follower that takes over has the same recent past. A second is released once every replica
heard from in the last few seconds has published past it; a replica that disappears stops
being waited for, and one without traffic adds nothing. A follower's harvest also carries
its A/B tests' events, the leader's its word on the tests: the leader counts every replica's
users once (`dataplane.abpool`).

*Redis unreachable.* Routing never waits on Redis: each replica keeps serving its last
known weights. The leader cannot renew its lease and steps down when it may have lapsed, so
no promotion or rollback is decided blind; the rollout resumes when a replica takes the lease
again (and adopts the last states written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from splitproxy.dataplane.state import RuntimeState, SharedState, Snapshot
from splitproxy.metrics import Recorder
from splitproxy.replicas.brake import Brake, Trip
from splitproxy.replicas.channel import Channel, StaleToken
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.phases import ACTIVE
from splitproxy.rollout.windows import Period
from splitproxy.views import ReplicaView
from splitproxy.workers.counts import LateBucketsCollector
from splitproxy.workers.mirrors import merge_tallies, take_tallies
from splitproxy.workers.pooling import Harvester, Pool, PooledWindows

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from splitproxy.admin import AdminContext
    from splitproxy.dataplane.abgoals import AbBook
    from splitproxy.dataplane.abpool import AbEvents
    from splitproxy.replicas.lease import RedisLease
    from splitproxy.replicas.observations import ObservationStream
    from splitproxy.replicas.redisstore import RedisStateStore
    from splitproxy.rollout.controller import Controller
    from splitproxy.server import Server

logger = logging.getLogger("splitproxy.replicas")

LEASE_MARGIN: Final = 1.5  # seconds before its lease could lapse that a leader steps down


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Timing of the link (the defaults suit production; tests may shorten them)."""

    lease_ttl: float = 6.0  # seconds a lease lives without renewal
    elect_every: float = 1.0  # seconds between two renewals (or attempts to take the lease)
    harvest_every: float = 0.25  # seconds between two publications of the closed buckets
    sync_every: float = 1.0  # a follower reads the leader's state at least this often
    forward_wait: float = 5.0  # seconds a forwarded admin write waits for the leader
    stale_after: float = 3.0  # a replica not heard from this long is no longer waited for


def replica_name() -> str:
    """A name among the replicas: host, pid and a random part (two replicas must never share
    a name, or each would take the other's lease for its own and skip its observations: a
    container's pid is often 1 on every host, and tests run several in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ReplicaLink:
    """One replica's link to the others (see the module docstring)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        name: str | None = None,
        options: ReplicaOptions | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.name = name or replica_name()
        self.options = options or ReplicaOptions()
        self.clock = clock
        self.monotonic = monotonic
        self.windows = PooledWindows()
        self.pool = Pool(self.windows)
        self._harvester = Harvester(self.windows)
        self.leading = False
        self.token: int | None = None
        self.reachable = True  # Redis answered the last call
        self.routing_version = 0  # the routing state adopted (a follower's)
        self._lease_until = 0.0  # monotonic time before which the lease is surely ours
        self._doc_versions: dict[str, int] = {}  # route -> the state version adopted
        self._routing_due = asyncio.Event()
        self._published: str | None = None  # the routing state last written
        self._server: Server | None = None
        self._client: Redis | None = None
        self._channel: Channel | None = None
        self._lease: RedisLease | None = None
        self._stream: ObservationStream | None = None
        self._store: RedisStateStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.admin: AdminContext | None = None  # set by the server once its admin API runs
        self.brake = Brake()  # this replica's own guard while the store is unreachable
        self._back = asyncio.Event()  # the store answers again: report the brake's trips
        self._ab_events: dict[str, AbEvents] = {}  # A/B events drained, not yet published

    # -- what the server asks ------------------------------------------------------------------
    def recorder(self, state: RuntimeState) -> Recorder:
        """The replica's recorder: its data path writes its own buckets, every read (the
        controller's, status's) sees the pool of every replica's."""
        recorder = Recorder(state, windows=self.windows)
        recorder.ab.share()  # every replica's users counted once, by the leader (abpool)
        pool = self.pool
        recorder.registry.register(LateBucketsCollector(lambda: pool.dropped))
        return recorder

    async def begin(self, server: Server, store: RedisStateStore) -> None:
        """Before the controller starts: connect and try the lease once, so a replica alone
        leads from its first tick; one that does not lead starts as a follower."""
        from splitproxy.replicas.connection import async_client
        from splitproxy.replicas.lease import RedisLease
        from splitproxy.replicas.observations import ObservationStream

        self._server = server
        self._store = store
        client = self._client = async_client(self.url)
        self._channel = Channel(client, self.namespace)
        self._lease = RedisLease(client, self.namespace, self.name, ttl=self.options.lease_ttl)
        self._stream = ObservationStream(client, self.namespace, self.name)
        control = self._control()
        control.persistence.on_fenced = lambda: self._step_down(
            "a newer leader's state is on record"
        )
        control.lead(False)
        try:
            token = await self._lease.acquire()
        except Exception as exc:
            self._unreachable(exc)
            token = None
        if token is not None:
            self._became_leader(token)
        server.state.subscribe(self._on_swap)

    async def started(self) -> None:
        """After the controller started: a follower adopts the leader's state, then every
        task runs."""
        if not self.leading:
            with contextlib.suppress(Exception):
                await self.sync()
        loop = asyncio.get_running_loop()
        jobs = (self._elect, self._observe, self._follow, self._commands, self._publish,
                self._report)  # fmt: skip
        for job in jobs:
            self._tasks.append(loop.create_task(job(), name=f"splitproxy-replica-{job.__name__}"))
        role = f"leads (fencing token {self.token})" if self.leading else "follows"
        logger.info("replica %s %s; state in %s", self.name, role, self._where())

    async def close(self) -> None:
        """Stop the tasks; a leader hands its lease back so another takes over at once."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.leading and self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.release()
        self.leading = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- admin writes ----------------------------------------------------------------------------
    async def forward(
        self, route: str, action: str, payload: dict[str, Any]
    ) -> tuple[int, Any] | None:
        """`admin.AdminContext.forward`: None when this replica leads (it carries the write
        out itself); otherwise the leader's answer, or a 503 saying why there is none."""
        if self.leading:
            return None
        assert self._channel is not None
        try:
            answer = await self._channel.send(route, action, payload, self.options.forward_wait)
        except TimeoutError:
            return 503, _error("no_leader", "no replica leads the rollouts now (none answered "
                               f"within {self.options.forward_wait:g}s); try again")  # fmt: skip
        except Exception as exc:
            self._unreachable(exc)
            return 503, _error("state_unavailable", f"the state store is unreachable: {exc}")
        if answer.status == 200:
            with contextlib.suppress(Exception):  # this replica shows the change from now on
                await self.sync()
        return answer.status, answer.body

    async def _commands(self) -> None:
        """The leader carries out the admin writes other replicas forward."""
        from splitproxy.admin import carry_out, refusal_of

        while True:
            if not self.leading or self.admin is None or self._channel is None:
                await asyncio.sleep(0.2)
                continue
            try:
                command = await self._channel.next_command(block=1.0)
            except Exception as exc:
                self._unreachable(exc)
                await asyncio.sleep(1.0)
                continue
            if command is None:
                continue
            status: int
            body: Any
            try:
                if not self.leading:
                    raise RuntimeError("this replica stopped leading")
                status, body = 200, await carry_out(self.admin, command.route, command.action,
                                                    command.payload)  # fmt: skip
                await self._publish_now()  # the caller's next read shows it
            except Exception as exc:
                refused = refusal_of(exc)
                if refused is None:
                    logger.exception(
                        "forwarded %s of route %r failed", command.action, command.route
                    )
                    refused = 500, _error("internal", f"the leader failed: {exc!r}")
                status, body = refused
            with contextlib.suppress(Exception):
                await self._channel.answer(command, status, body)

    # -- the lease -----------------------------------------------------------------------------
    async def _elect(self) -> None:
        while True:
            await asyncio.sleep(self.options.elect_every)
            assert self._lease is not None
            try:
                if self.leading:
                    if await self._lease.renew():
                        self._lease_until = self.monotonic() + self.options.lease_ttl - LEASE_MARGIN
                    else:
                        self._step_down("another replica holds the lease")
                else:
                    token = await self._lease.acquire()
                    if token is not None:
                        await self._take_over(token)
                self._reachable()
            except Exception as exc:
                self._unreachable(exc)
            if self.leading and self.monotonic() >= self._lease_until:
                self._step_down("its lease may have lapsed (the state store is unreachable)")

    async def _take_over(self, token: int) -> None:
        """Take the lead: write what this replica still owes (with the token it was decided
        under: refused if a newer leader wrote since), adopt the newest states, then decide."""
        control = self._control()
        await control.persistence.flush()
        await self.sync(force=True)
        self._became_leader(token)
        logger.warning("replica %s takes the lead (fencing token %d)", self.name, token)

    def _became_leader(self, token: int) -> None:
        self.token = token
        self.leading = True
        self._lease_until = self.monotonic() + self.options.lease_ttl - LEASE_MARGIN
        control = self._control()
        control.persistence.token = token
        control.persistence.refresh_verdicts()
        control.lead(True)
        self._ab().lead(True)  # an empty global table of A/B users (docs/abtesting.md)
        self._published = None
        self._routing_due.set()

    def _step_down(self, why: str) -> None:
        if not self.leading:
            return
        logger.warning("replica %s stops leading: %s", self.name, why)
        self.leading = False
        self.token = None
        control = self._control()
        control.persistence.token = None
        control.lead(False)
        self._ab().lead(False)
        self._doc_versions.clear()  # adopt the next leader's states afresh

    # -- the routing state ---------------------------------------------------------------------
    def _on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        if self.leading:
            self._routing_due.set()

    async def _publish(self) -> None:
        while True:
            await self._routing_due.wait()
            self._routing_due.clear()
            try:
                await self._publish_now()
            except Exception as exc:
                self._unreachable(exc)
                await asyncio.sleep(0.5)
                self._routing_due.set()  # try again

    async def _publish_now(self) -> None:
        from splitproxy.replicas.routingwire import encode_routing

        server, channel, token = self._server, self._channel, self.token
        snapshot = server.state.snapshot if server is not None else None
        if not self.leading or token is None or snapshot is None or channel is None:
            return
        document = encode_routing(SharedState.of(snapshot))
        text = repr(sorted(document.items()))
        if text == self._published:
            return
        try:
            self.routing_version = await channel.write_routing(document, token)
        except StaleToken:
            self._step_down("a newer leader's routing state is on record")
            return
        self._published = text

    # -- following -------------------------------------------------------------------------------
    async def sync(self, *, force: bool = False) -> None:
        """Adopt the leader's routing state and the state documents that changed (all of them
        with ``force``)."""
        from splitproxy.replicas.routingwire import decode_routing
        from splitproxy.replicas.wire import WireError

        server, channel, store = self._server, self._channel, self._store
        assert server is not None
        assert channel is not None
        assert store is not None
        assert self._client
        version = await channel.routing_version()
        if force or version != self.routing_version:
            got = await channel.read_routing()
            snapshot = server.state.snapshot
            if got is not None and snapshot is not None:
                version, document = got
                try:
                    routing = decode_routing(document)
                except WireError as exc:
                    logger.error("the routing state in %s cannot be used: %s", self._where(), exc)
                else:
                    server.state.adopt(
                        routing.apply_to(snapshot.config, snapshot.content_hash, snapshot.loaded_at)
                    )
            self.routing_version = version
        versions = await asyncio.to_thread(store.versions)
        control = self._control()
        for route, seen in versions.items():
            if not force and self._doc_versions.get(route) == seen:
                continue
            data = await asyncio.to_thread(store.load, route)
            if data is not None and control.adopt(route, data, store.where(route)):
                self._doc_versions[route] = seen
        self._hold_brakes()
        self._reachable()

    async def _follow(self) -> None:
        while True:
            channel = self._channel
            assert channel is not None
            try:
                pubsub = await channel.subscribe()
            except Exception as exc:
                self._unreachable(exc)
                await asyncio.sleep(self.options.sync_every)
                continue
            try:
                while True:
                    # any note, or a second without one: read what changed
                    await pubsub.get_message(timeout=self.options.sync_every)
                    if not self.leading:
                        await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unreachable(exc)
                await asyncio.sleep(self.options.sync_every)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- pooled observations -----------------------------------------------------------------
    async def _observe(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            await asyncio.sleep(self.options.harvest_every)
            now = self.clock()
            periods = self._harvester.harvest(self._routes(), now)
            self.pool.contribute(self.name, now, periods)
            if not self.reachable:
                self._judge_locally(periods, now)
            members = {self.name}
            book = self._ab()
            token = self.token
            lead = book.lead_info(token) if self.leading and token is not None else None
            try:
                if self.leading:
                    await stream.publish(now, periods, {}, lead=lead if book.routes else None)
                else:
                    events = self._ab_events
                    if not events:  # not published yet (Redis away): kept, in order
                        events = self._ab_events = book.drain()
                    await stream.publish(now, periods, self._take_mirrors(), events)
                    self._ab_events = {}
                for harvest in await stream.read(block=None):
                    self.pool.contribute(harvest.replica, harvest.watermark, harvest.periods)
                    if self.leading:
                        if self._server is not None:
                            merge_tallies(self._server.recorder, harvest.mirrors)
                        book.absorb(harvest.ab)  # each replica's entries in its order
                    elif harvest.lead is not None:
                        book.follow_leader(harvest.lead)
                members |= await stream.members(now, stale_after=self.options.stale_after)
                self._reachable()
            except Exception as exc:
                self._unreachable(exc)
            self.pool.set_members(members)
            self.pool.release(now)

    def _ab(self) -> AbBook:
        server = self._server
        assert server is not None
        return server.recorder.ab

    def _routes(self) -> list[str]:
        server = self._server
        snapshot = server.state.snapshot if server is not None else None
        return [r.name for r in snapshot.routes] if snapshot is not None else []

    def _take_mirrors(self) -> dict[str, MirrorTally]:
        server = self._server
        return take_tallies(server.recorder, self._routes()) if server is not None else {}

    # -- the brake (the store unreachable) ---------------------------------------------------
    def _judge_locally(self, periods: dict[str, list[Period]], now: float) -> None:
        """This replica's own buckets through each running rollout's guard (`brake.Brake`)."""
        for route, analyzer in self._control().analyzers().items():
            guard, revision = analyzer.spec.guard, analyzer.revision
            if analyzer.phase not in ACTIVE or guard is None or revision is None:
                continue
            bar = 1 / analyzer.evidence.alpha.guard
            trip = self.brake.judge(route, revision, guard.error_rate, bar, periods.get(route, ()))
            if trip is not None:
                logger.error(
                    "replica %s: route %s: %s; no traffic from this replica goes to its "
                    "candidate %s", self.name, route, trip.reason, revision,
                )  # fmt: skip
                self._close(trip, now)

    def _close(self, trip: Trip, now: float) -> None:
        server = self._server
        assert server is not None
        have = (
            server.state.snapshot.rollout_weights.get(trip.route) if server.state.snapshot else None
        )
        if have is None or have.percent or not have.closed:
            server.state.set_rollout_weight(trip.route, 0.0, now, trip.revision, closed=True)

    def _hold_brakes(self) -> None:
        """After adopting the leader's state: a tripped brake stays on while the leader still
        runs that candidate, and comes off once it does not."""
        analyzers = self._control().analyzers()
        for route, trip in list(self.brake.tripped.items()):
            a = analyzers.get(route)
            if a is None or a.revision != trip.revision or a.phase not in ACTIVE:
                self.brake.release(route)
            else:
                self._close(trip, self.clock())

    async def _report(self) -> None:
        """Once the store answers again, ask the leader to roll back what the brake stopped."""
        while True:
            await self._back.wait()
            self._back.clear()
            for route, trip in list(self.brake.tripped.items()):
                payload = {"reason": trip.reason[:500]}
                if self.leading and self.admin is not None:
                    from splitproxy.admin import carry_out

                    with contextlib.suppress(Exception):
                        await carry_out(self.admin, route, "rollback", payload)
                    continue
                answered = await self.forward(route, "rollback", payload)
                if answered is not None and answered[0] >= 500:
                    self._back.set()  # no leader yet: try again
                    await asyncio.sleep(self.options.elect_every)

    # -- helpers -------------------------------------------------------------------------------
    def _control(self) -> Controller:
        server = self._server
        assert server is not None
        assert server.control is not None
        return server.control

    def _where(self) -> str:
        return self._store.location if self._store is not None else self.url

    def _reachable(self) -> None:
        if not self.reachable:
            logger.warning("replica %s: the state store answers again", self.name)
            self.brake.reset()
            self._back.set()
        self.reachable = True

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            logger.error(
                "replica %s: the state store is unreachable (%s); serving the last known "
                "weights, deciding nothing until it is back", self.name, exc,
            )  # fmt: skip
        self.reachable = False

    def status(self) -> ReplicaView:
        """The replica part of the status: who this is, whether it leads, who it pools."""
        return {
            "name": self.name,
            "leading": self.leading,
            "fencing_token": self.token,
            "state_store_reachable": self.reachable,
            "routing_version": self.routing_version,
            "pooled_replicas": sorted(str(m) for m in self.pool.members),
            "late_buckets_dropped": self.pool.dropped,
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


__all__ = ["ReplicaLink", "ReplicaOptions", "replica_name"]
