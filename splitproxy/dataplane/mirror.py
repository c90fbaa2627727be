"""Traffic mirroring: copies of a route's user requests sent to its candidate, never felt.

Theory of operation
-------------------
`Mirror` is built and stopped by the composition root and follows the config snapshots: each
route with ``mirror:`` (``config/mirror.py``) and a candidate gets a `Lane`, a bounded queue
(``queue``) drained by ``concurrency`` worker tasks over their own aiohttp session (own
connector, no cookie jar, no decompression, no automatic headers). A lane is kept across
snapshots while its settings and the candidate's URLs stay the same.

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
the answer, discards it (``Set-Cookie`` included) and reports a `MirrorOutcome` to the
observer (the recorder). Copies are never user traffic: they never enter the live windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
from yarl import URL

from splitproxy.config.mirror import HEADER
from splitproxy.config.mirror import Mirror as MirrorSettings
from splitproxy.config.vocabulary import STABLE
from splitproxy.dataplane.http11 import LENGTH, NO_BODY, connection_tokens
from splitproxy.dataplane.mirror_compare import (
    JSON_LIMIT,
    Answer,
    MirrorOutcome,
    MirrorResult,
    compare,
    new_digest,
)
from splitproxy.dataplane.state import Snapshot

if TYPE_CHECKING:
    from splitproxy.dataplane.exchange import Exchange

logger = logging.getLogger("splitproxy.dataplane.mirror")

# never copied as the client sent them: the copy's framing and marker are the proxy's own
_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding", HEADER.lower().encode()})
# aiohttp adds these unless told not to: the copy must carry the client's, or none
_SKIP_AUTO: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_READ: Final = 64 * 1024


class MirrorObserver(Protocol):
    """Counts what happened to each copy (the recorder implements it)."""

    def mirror_result(self, route: str, result: MirrorResult) -> None: ...
    def mirror_compared(self, route: str, outcome: MirrorOutcome) -> None: ...


@dataclass(frozen=True, slots=True)
class Copy:
    """One request to send to the candidate, and the user's answer to compare with."""

    method: str
    target: str  # origin-form, as the client sent it
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    primary: Answer
    primary_latency: float


class Lane:
    """One route's copies: the bounded queue, its workers and their HTTP session."""

    def __init__(
        self,
        route: str,
        settings: MirrorSettings,
        urls: tuple[str, ...],
        observer: MirrorObserver,
        monotonic: Callable[[], float],
    ) -> None:
        self.route = route
        self.settings = settings
        self.urls = urls
        self.observer = observer
        self.monotonic = monotonic
        self.methods = frozenset(m.encode() for m in settings.methods)
        self.percent = settings.percent
        self.max_body = settings.max_body
        self.hash_body = settings.compare.body == "hash"
        self.keep_small = bool(settings.compare.json_ignore)
        self.extra = tuple(settings.headers.items())
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(settings.queue)
        self._turn = 0
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.concurrency),
            cookie_jar=aiohttp.DummyCookieJar(),  # a mirror's Set-Cookie reaches no one
            auto_decompress=False,  # hash the bytes as sent, like the user's
            skip_auto_headers=_SKIP_AUTO,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
        )
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self._work()) for _ in range(settings.concurrency)]

    def same(self, settings: MirrorSettings, urls: tuple[str, ...]) -> bool:
        return settings == self.settings and urls == self.urls

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
        urls = self.urls
        base = urls[self._turn % len(urls)]
        self._turn += 1
        started = self.monotonic()
        digest = new_digest() if self.hash_body else None
        small: bytearray | None = bytearray() if self.keep_small else None
        size = 0
        try:
            async with self.session.request(
                copy.method,
                URL(base + copy.target, encoded=True),
                headers=copy.headers,
                data=copy.body,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                async for data in resp.content.iter_chunked(_READ):
                    size += len(data)
                    if digest is not None:
                        digest.update(data)
                    if small is not None and size <= JSON_LIMIT:
                        small += data
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            latency = self.monotonic() - started
            what = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return self._outcome(copy, "error", None, latency, f"error: {what}")
        latency = self.monotonic() - started
        answer = Answer(
            status,
            digest.digest() if digest is not None else None,
            bytes(small) if small is not None and size <= JSON_LIMIT else None,
            size,
        )
        differed = compare(copy.primary, answer, self.settings.compare)
        if differed is None:
            return self._outcome(copy, "match", status, latency, "")
        return self._outcome(copy, "diverged", status, latency, differed)

    @staticmethod
    def _outcome(
        copy: Copy, result: MirrorResult, status: int | None, latency: float, differed: str
    ) -> MirrorOutcome:
        return MirrorOutcome(
            result, copy.method, copy.path, copy.primary.status, status,
            copy.primary_latency, latency, differed,
        )  # fmt: skip

    async def close(self) -> None:
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.session.close()


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
        target = ex.target.decode("latin-1")
        lane.offer(
            Copy(
                ex.method.decode("latin-1"),
                target,
                ex.path,
                copy_headers(ex, lane.extra),
                b"".join(self.body) if ex.body_kind is not NO_BODY else None,
                primary,
                ex.duration,
            )
        )


def copy_headers(ex: Exchange, extra: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The copy's headers: the client's end-to-end ones (less any ``Connection`` names, the
    framing and a marker the client sent), the request id, the client's address, the marker
    and the route's own ``headers``."""
    named = ex.wanted.get(b"connection")
    drop = _DROPPED | frozenset(connection_tokens(named)) if named else _DROPPED
    replaced = {name.lower() for name, _ in extra}
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in ex.headers
        if name.lower() not in drop and name.decode("latin-1").lower() not in replaced
    ]
    out.append(("X-Request-Id", ex.request_id.decode("latin-1")))
    peer = ex.conn.peer_ip
    if peer:
        out.append(("X-Forwarded-For", peer))
    out.append((HEADER, "1"))
    out.extend(extra)
    return tuple(out)


class Mirror:
    """Every route's lane; picks the requests to copy. Built by the composition root, which
    subscribes `on_swap` to the snapshots and awaits `stop` at shutdown."""

    def __init__(
        self,
        observer: MirrorObserver,
        *,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.observer = observer
        self.rng = rng
        self.monotonic = monotonic
        self.lanes: dict[str, Lane] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: a lane per route that mirrors; changed ones start afresh."""
        lanes: dict[str, Lane] = {}
        for route in new.routes:
            model = new.config.route(route.name)
            settings = model.mirror if model is not None else None
            if settings is None or route.candidate is None:
                continue
            urls = tuple(t.url for t in route.candidate.targets)
            lane = self.lanes.pop(route.name, None)
            if lane is not None and not lane.same(settings, urls):
                self._close(lane)
                lane = None
            lanes[route.name] = lane or Lane(
                route.name, settings, urls, self.observer, self.monotonic
            )
        for lane in self.lanes.values():
            self._close(lane)
        self.lanes = lanes

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
