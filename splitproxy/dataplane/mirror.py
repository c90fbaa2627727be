"""Traffic mirroring: copies of a route's user requests sent to its candidate, never felt.

Theory of operation
-------------------
`Mirror` is built and stopped by the composition root and follows the config snapshots: each
route with ``mirror:`` (``config/mirror.py``) and a candidate, or whose rollout is in its
shadow phase (the snapshot's rollout weight says so), gets a `Lane`, a bounded queue
(``queue``) drained by ``concurrency`` worker tasks over the proxy's own HTTP/1.1 upstream
connections (``upstream.py``: its limits on the answer hold), in pools of the lane's own, at
most ``concurrency`` connections: never the pools users' requests take. A lane is kept
across snapshots while its settings and the candidate's addresses stay the same.

On the hot path, `Mirror.tap` (from ``Exchange.start``) picks the request or returns None
after a dict look-up: only user requests routed to stable, of a listed method, never an
Upgrade, drawn at ``percent``. A picked request gets a `MirrorTap` that copies its body (up
to ``max_body``; a larger one is ``skipped``) and hashes the user's response body as it
streams (``compare: {body: hash}``), without holding it (only a small one, `JSON_LIMIT`, for
``json_ignore``). When the exchange ends, `MirrorTap.done` builds an immutable `Copy` and
offers it to the lane without waiting: a full queue drops it (``dropped``). Nothing here is
awaited by the exchange, and the user's upstream connection is never touched.

A worker sends the copy to the candidate with the client's end-to-end headers (hop-by-hop ones
and those ``Connection`` names dropped, the proxy's own framing), ``X-Request-Id``,
``X-Forwarded-For`` and ``X-Splitproxy-Mirror: 1``, bounded by ``timeout``; reads and hashes
the answer, discards it (``Set-Cookie`` included; no cookie is ever kept) and reports a
`MirrorOutcome` to the observer (the recorder). Copies are never user traffic: they never
enter the live windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from splitproxy.config.mirror import HEADER, SHADOW_MIRROR
from splitproxy.config.mirror import Mirror as MirrorSettings
from splitproxy.config.vocabulary import STABLE, FailureKind
from splitproxy.dataplane.http11 import LENGTH, NO_BODY, connection_tokens
from splitproxy.dataplane.mirror_compare import (
    JSON_LIMIT,
    Answer,
    MirrorOutcome,
    MirrorResult,
    compare,
    new_digest,
)
from splitproxy.dataplane.pools import Clock, PoolExhausted, UpstreamPool
from splitproxy.dataplane.routing import Target
from splitproxy.dataplane.state import Snapshot
from splitproxy.dataplane.swapdiff import changed_routes
from splitproxy.dataplane.upstream import UpstreamConnection

if TYPE_CHECKING:
    from splitproxy.dataplane.exchange import Exchange

logger = logging.getLogger("splitproxy.dataplane.mirror")

_IDLE_TIMEOUT: Final = 30.0  # a lane's idle connection to the candidate, at most

# never copied as the client sent them: the copy's framing and marker are the proxy's own
_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding", HEADER.lower().encode()})
_MARK: Final = HEADER.encode() + b": 1\r\n"


class MirrorObserver(Protocol):
    """Counts what happened to each copy (the recorder implements it)."""

    def mirror_result(self, route: str, result: MirrorResult) -> None: ...
    def mirror_compared(self, route: str, outcome: MirrorOutcome) -> None: ...


@dataclass(frozen=True, slots=True)
class Copy:
    """One request to send to the candidate, and the user's answer to compare with."""

    method: bytes
    path: str
    head: bytes  # the request head as the candidate gets it, framing included
    body: bytes | None
    primary: Answer
    primary_latency: float


class _Reply:
    """The candidate's answer to one copy, as its upstream connection reports it (a
    `upstream.ResponseSink`): the status, the body hashed (and kept when small), then done."""

    __slots__ = ("digest", "done", "failure", "size", "small", "status")

    def __init__(self, done: asyncio.Future[None], hash_body: bool, keep_small: bool) -> None:
        self.done = done
        self.status = 0
        self.failure = ""
        self.size = 0
        self.digest: Any = new_digest() if hash_body else None
        self.small: list[bytes] | None = [] if keep_small else None

    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.status = status  # the headers (Set-Cookie included) go nowhere
        if status == 101:  # no copy asks to switch protocols: the upstream is out of step
            self.upstream_failed("protocol")

    def upstream_body(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.digest is not None:
            self.digest.update(data)
        small = self.small
        if small is not None:
            if self.size <= JSON_LIMIT:
                small.append(bytes(data))  # (a view would keep the whole read it came in)
            else:
                self.small = None

    def upstream_read_done(self) -> None:
        pass  # nothing is held between reads

    def upstream_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def upstream_upgraded(self, rest: bytes) -> None:
        self.upstream_failed("protocol")

    def upstream_failed(self, kind: FailureKind) -> None:
        self.failure = self.failure or kind
        if not self.done.done():
            self.done.set_result(None)

    def upstream_writable(self, writable: bool) -> None:
        pass  # a copy's body (at most ``max_body``) is written at once

    def answer(self) -> Answer:
        digest, small = self.digest, self.small
        return Answer(
            self.status,
            digest.digest() if digest is not None else None,
            b"".join(small) if small is not None else None,
            self.size,
        )


class Lane:
    """One route's copies: the bounded queue, its workers and their own connection pools
    (the proxy's HTTP/1.1 upstream connections, never the pools users' requests take)."""

    def __init__(
        self,
        route: str,
        settings: MirrorSettings,
        targets: tuple[Target, ...],
        observer: MirrorObserver,
        clock: Clock,
        monotonic: Callable[[], float],
    ) -> None:
        self.route = route
        self.settings = settings
        self.targets = targets
        self.observer = observer
        self.monotonic = monotonic
        self.methods = frozenset(m.encode() for m in settings.methods)
        self.percent = settings.percent
        self.max_body = settings.max_body
        self.timeout = settings.timeout
        self.hash_body = settings.compare.body == "hash"
        self.keep_small = bool(settings.compare.json_ignore)
        self.extra = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode())
                              for n, v in settings.headers.items())  # fmt: skip
        self.replaced = frozenset(n.lower().encode() for n in settings.headers)
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(settings.queue)
        self._turn = 0
        self.pools = [
            UpstreamPool(
                t.host, t.port, clock, connect_timeout=settings.timeout,
                idle_timeout=_IDLE_TIMEOUT, max_connections=settings.concurrency,
            )
            for t in targets
        ]  # fmt: skip
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self._work()) for _ in range(settings.concurrency)]

    def same(self, settings: MirrorSettings, targets: tuple[Target, ...]) -> bool:
        return settings == self.settings and targets == self.targets

    def result(self, result: MirrorResult) -> None:
        self.observer.mirror_result(self.route, result)

    def offer(self, copy: Copy) -> None:
        """Queue ``copy`` without waiting; a full queue drops it."""
        try:
            self.queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.result("dropped")

    async def _work(self) -> None:
        while True:
            copy = await self.queue.get()
            try:
                outcome = await self._send(copy)
            except Exception:  # a worker must outlive any copy; counted, never raised
                logger.exception("mirror copy for route %s failed", self.route)
                continue
            self.observer.mirror_compared(self.route, outcome)

    async def _send(self, copy: Copy) -> MirrorOutcome:
        pool = self.pools[self._turn % len(self.pools)]
        self._turn += 1
        started = self.monotonic()
        reply = _Reply(asyncio.get_running_loop().create_future(), self.hash_body,
                       self.keep_small)  # fmt: skip
        up: UpstreamConnection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                up = pool.take_idle()
                if up is None:
                    up = await pool.connect()
                up.bind(reply, copy.method == b"HEAD")
                if copy.body:
                    up.writelines([copy.head, copy.body])
                else:
                    up.write(copy.head)
                await reply.done
        except TimeoutError:
            reply.failure = "timeout"
        except (OSError, PoolExhausted):
            reply.failure = "connect"
        finally:
            if up is not None:
                if reply.failure or not reply.done.done():  # (cancelled: the lane stops)
                    up.abort()
                else:
                    up.release()
        latency = self.monotonic() - started
        if reply.failure:
            return self._outcome(copy, "error", None, latency, f"error: {reply.failure}")
        answer = reply.answer()
        differed = compare(copy.primary, answer, self.settings.compare)
        if differed is None:
            return self._outcome(copy, "match", answer.status, latency, "")
        return self._outcome(copy, "diverged", answer.status, latency, differed)

    @staticmethod
    def _outcome(
        copy: Copy, result: MirrorResult, status: int | None, latency: float, differed: str
    ) -> MirrorOutcome:
        return MirrorOutcome(
            result, copy.method.decode("latin-1"), copy.path, copy.primary.status, status,
            copy.primary_latency, latency, differed,
        )  # fmt: skip

    async def close(self) -> None:
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pool in self.pools:
            pool.abort_all()


class MirrorTap:
    """One picked request: its body copied, the user's response body hashed as it streams."""

    __slots__ = ("body", "digest", "lane", "over", "sent", "size", "small")

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.body: list[bytes] = []
        self.size = 0
        self.over = False  # the request body is larger than ``max_body``: not mirrored
        self.digest: Any = new_digest() if lane.hash_body else None
        self.small: list[bytes] | None = [] if lane.keep_small else None
        self.sent = 0  # response body bytes seen

    def request_body(self, data: bytes) -> None:
        if self.over:
            return
        self.size += len(data)
        if self.size > self.lane.max_body:
            self.over = True
            self.body = []
        else:
            self.body.append(data)

    def response_body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.digest is not None:
            self.digest.update(data)
        small = self.small
        if small is not None:
            if self.sent <= JSON_LIMIT:
                small.append(data)
            else:
                self.small = None  # too large to parse: compared by its digest

    def done(self, ex: Exchange) -> None:
        """The exchange ended: offer its copy, unless the request was not whole."""
        lane = self.lane
        status = ex.status
        if self.over or not ex.req_done or status == 499 or status == 0:
            lane.result("skipped")  # too large, or cut short: the copy would not be the same
            return
        small = self.small
        primary = Answer(
            status,
            self.digest.digest() if self.digest is not None else None,
            b"".join(small) if small is not None else None,
            self.sent,
        )
        body = b"".join(self.body) if ex.body_kind is not NO_BODY else None
        lane.offer(Copy(ex.method, ex.path, copy_head(ex, lane, body), body, primary, ex.duration))


def copy_head(ex: Exchange, lane: Lane, body: bytes | None) -> bytes:
    """The copy's request head: the client's request line and end-to-end headers (less any
    ``Connection`` names, the framing and a marker the client sent, and those the route's
    ``headers`` replace), the request id, the client's address, the marker, the route's
    ``headers`` and the proxy's own framing (``Content-Length``)."""
    named = ex.wanted.get(b"connection")
    drop = _DROPPED | frozenset(connection_tokens(named)) if named else _DROPPED
    if lane.replaced:
        drop = drop | lane.replaced
    parts = [b"%s %s HTTP/1.1\r\n" % (ex.method, ex.target)]
    parts += [b"%s: %s\r\n" % (n, v) for n, v in ex.headers if n.lower() not in drop]
    parts.append(b"X-Request-Id: %s\r\n" % ex.request_id)
    peer = ex.conn.peer_ip
    if peer:
        parts.append(b"X-Forwarded-For: %s\r\n" % peer.encode("latin-1"))
    parts += [_MARK, lane.extra]
    if body is not None:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    return b"".join(parts)


class Mirror:
    """Every route's lane; picks the requests to copy. Built by the composition root, which
    subscribes `on_swap` to the snapshots and awaits `stop` at shutdown."""

    def __init__(
        self,
        observer: MirrorObserver,
        clock: Clock,
        *,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.observer = observer
        self.clock = clock  # the coarse clock the connections stamp activity with
        self.rng = rng
        self.monotonic = monotonic
        self.lanes: dict[str, Lane] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._followed: Snapshot | None = None  # the snapshot `lanes` follows

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: a lane per route that mirrors (its ``mirror:``, or while
        its rollout is in the shadow phase, `SHADOW_MIRROR`); changed ones start afresh.

        Only routes the swap changed (`swapdiff.changed_routes`, and those whose rollout
        entered or left its shadow phase) are looked at again; the lanes of the others stay
        as they are, which is what looking at them again would give."""
        if old is None or old is not self._followed:
            names: Iterable[str] = [route.name for route in new.routes]
            removed = [name for name in self.lanes if new.route(name) is None]
        else:
            diff = changed_routes(old, new)
            names = {*diff.changed, *_shadow_changes(old, new)}
            removed = list(diff.removed)
        for name in removed:
            gone = self.lanes.pop(name, None)
            if gone is not None:
                self._close(gone)
        for name in names:
            self._follow(new, name)
        self._followed = new

    def _follow(self, new: Snapshot, name: str) -> None:
        """``name``'s lane in ``new``: kept when its settings and targets are the same."""
        route = new.route(name)
        model = new.config.route(name)
        settings = model.mirror if model is not None else None
        driven = new.rollout_weights.get(name)
        if settings is None and driven is not None and driven.shadow:
            settings = SHADOW_MIRROR  # the rollout's shadow phase, on a route without one
        lane = self.lanes.pop(name, None)
        if route is None or settings is None or route.candidate is None:
            if lane is not None:
                self._close(lane)
            return
        targets = route.candidate.targets
        if lane is not None and not lane.same(settings, targets):
            self._close(lane)
            lane = None
        self.lanes[name] = lane or Lane(
            name, settings, targets, self.observer, self.clock, self.monotonic
        )

    def _close(self, lane: Lane) -> None:
        task = asyncio.get_running_loop().create_task(lane.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def tap(self, ex: Exchange) -> MirrorTap | None:
        """A tap on ``ex`` if it is to be copied, else None (called once the route and
        version are chosen). Copies only user requests served by stable, never an Upgrade, and
        nothing while the queue is full (``dropped``)."""
        route = ex.route
        lane = self.lanes.get(route.name) if route is not None else None
        if lane is None or ex.method not in lane.methods or route is None or route.closed:
            return None  # (closed: the rollout rolled the candidate back, nothing reaches it)
        decision = ex.decision
        if (
            ex.preview
            or ex.synthetic
            or decision is None
            or decision.version != STABLE
            or b"upgrade" in ex.wanted
            or ex.target[:1] != b"/"
        ):
            return None
        if lane.percent < 100.0 and self.rng() * 100.0 >= lane.percent:
            return None
        if (ex.body_kind is LENGTH and ex.content_length > lane.max_body) or ex.body_received:
            lane.result("skipped")  # too large (or its first bytes already went by)
            return None
        if lane.queue.full():  # the candidate is behind: spare this request the tap's work
            lane.result("dropped")
            return None
        return MirrorTap(lane)

    async def stop(self) -> None:
        """Stop every lane: queued copies are not sent."""
        for lane in self.lanes.values():
            self._close(lane)
        self.lanes = {}
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _shadow_changes(old: Snapshot, new: Snapshot) -> list[str]:
    """Routes whose rollout entered or left its shadow phase (a weight, not a definition)."""
    before, after = old.rollout_weights, new.rollout_weights
    if before is after:
        return []
    out = []
    for name in before.keys() | after.keys():
        was, now = before.get(name), after.get(name)
        if (was is not None and was.shadow) != (now is not None and now.shadow):
            out.append(name)
    return out
