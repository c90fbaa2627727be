"""Client side of the data path: HTTP/1.1 connections from users, one exchange at a time.

A `ClientConnection` is an asyncio protocol parsed by httptools' request parser. Each request
becomes an `Exchange`: it picks the route and version (`routing.choose`), takes an upstream
connection from the pool, writes the request head with only the edits a proxy must make, and
streams both bodies with back-pressure (a full write buffer on one side pauses reading on the
other). Pipelined requests wait in order behind the one being served.

What the proxy answers itself: 400 (malformed), 404 (no route), 408 (headers too slow),
413 (body too large), 414/431 (target or headers too large), 502 (upstream refused, reset or
broken), 503 (no upstream can take it, or not ready), 504 (upstream too slow). Each carries the
request id. A request to the candidate that fails before any response byte, and can be
replayed safely, is retried once on stable; the failure still counts against the candidate.
A retry always opens a fresh upstream connection.

Connection rules: a request that ends the connection (``Connection: close``, an upgrade, an
error) stops the parsing of further requests, but the exchanges queued ahead of it keep their
keep-alive answers. When the proxy answers before reading a request body (413, an early
error), it half-closes and discards what the client still sends for a while ("lingering
close"), so the answer is not lost to a reset. A client that half-closes after its request
still gets the answer. Timeouts (checked by the sweeper): ``header_timeout`` from a request's
first byte to the end of its headers (408); ``body_timeout`` between request body bytes, and
for a client that stops taking the response; ``read_timeout`` while waiting on the upstream
(504 before the response, a cut connection after); ``client_idle_timeout`` between requests.
Only WebSocket upgrades are relayed; other upgrades (h2c) are served as plain requests.

Synthetic requests (the proxy's own, from ``traffic.py``) carry ``X-Splitproxy-Synthetic`` with
a per-process marker (``synthetic.py``): the header is always consumed; a valid marker sends the
request to the route and version it names (reason ``synthetic``, ``Exchange.synthetic``), and
the upstream gets ``X-Splitproxy-Synthetic: 1`` in its place; a marker with this process's
token for a route that is gone gets a 404. Any other value is ignored.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Final, Protocol, cast

import httptools

from splitproxy.config.vocabulary import CANDIDATE, Version
from splitproxy.dataplane.http11 import (
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    chunk,
    connection_tokens,
    local_response,
    no_body_status,
    status_line,
    valid_request_id,
)
from splitproxy.dataplane.routing import (
    BackendPlan,
    CompiledRoute,
    Decision,
    choose,
    find_route,
    retry_decision,
    synthetic_decision,
)
from splitproxy.dataplane.state import BASE_WANTED_HEADERS, RuntimeState, Snapshot
from splitproxy.dataplane.synthetic import HEADER_LOWER as SYNTHETIC
from splitproxy.dataplane.synthetic import PROCESS_TOKEN, TARGETS, UPSTREAM_LINE, marker
from splitproxy.dataplane.upstream import (
    PoolExhausted,
    PoolRegistry,
    UpstreamConnection,
    UpstreamPool,
)

logger = logging.getLogger("splitproxy.dataplane.proxy")

# Request headers the proxy consumes or replaces rather than forwards as they came.
_CONSUMED: Final = HOP_BY_HOP | {
    SYNTHETIC,
    b"expect",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_REJECT_MESSAGES: Final = {
    "request_timeout": "the request headers took too long",
    "uri_too_long": "the request target is too long",
    "headers_too_large": "the request headers are too large",
    "body_too_large": "the request body is too large",
    "duplicate_header": "the request repeats Host or Content-Length",
}
_BODY_BUFFER_LIMIT: Final = 256 * 1024  # request bytes held while the upstream connects
# After answering a request whose body was not read (413, an early error), the proxy half-closes
# and reads and discards what the client still sends, for at most this long (nginx's lingering
# close): closing at once with unread bytes would reset the connection and lose the answer.
_LINGER_IDLE: Final = 2.0
_LINGER_MAX: Final = 10.0

# body framing of a request
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
# how the response body is written to the client
RAW: Final = 0  # as received (Content-Length framed, or until close)
RECHUNK: Final = 1  # re-encoded as chunked


class ExchangeObserver(Protocol):
    """Receives every finished exchange (metrics, access log) and every failed attempt."""

    def exchange_started(self, ex: Exchange) -> None: ...
    def exchange_finished(self, ex: Exchange) -> None: ...
    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None: ...


class CoarseClock:
    """``time.monotonic()`` sampled by the sweeper: enough for timeouts and pool idleness.

    (uvloop's ``loop.time()`` has millisecond resolution, too coarse for latency.)"""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


class RequestIds:
    """Request ids unique per process start: a random prefix and a counter."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode()
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return b"%s-%x" % (self._prefix, self._n)


class ProxyContext:
    """What every connection shares. Built by the composition root (`server.py`)."""

    def __init__(
        self,
        state: RuntimeState,
        pools: PoolRegistry,
        observer: ExchangeObserver,
        clock: CoarseClock,
        *,
        header_timeout: float,
        body_timeout: float,
        read_timeout: float,
        client_idle_timeout: float,
        max_header_bytes: int,
        max_headers: int,
        max_body_bytes: int,
        trusted_proxies: tuple[str, ...] = (),
        via: str = "1.1 splitproxy",
        rng: Callable[[int], int] | None = None,
        synthetic_token: str = PROCESS_TOKEN,
    ) -> None:
        self.state = state
        self.pools = pools
        self.observer = observer
        self.clock = clock
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.read_timeout = read_timeout
        self.client_idle_timeout = client_idle_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self.via_line = b"Via: " + via.encode("latin-1") + b"\r\n" if via else b""
        self.getrandbits = rng or random.getrandbits
        self.request_ids = RequestIds()
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.wanted_headers: frozenset[bytes] = BASE_WANTED_HEADERS
        self.synthetic_token = synthetic_token
        self.synthetic_token_bytes = synthetic_token.encode("latin-1")
        # marker -> (route, target) of the current snapshot: see synthetic.py
        self.synthetic_markers: dict[bytes, tuple[CompiledRoute, Version]] = {}
        self._rr: dict[tuple[object, ...], int] = {}
        self.in_flight = 0
        state.subscribe(self._on_snapshot)
        if state.snapshot is not None:
            self._on_snapshot(None, state.snapshot)

    def _on_snapshot(self, old: Snapshot | None, new: Snapshot) -> None:
        wanted = set(BASE_WANTED_HEADERS)
        markers: dict[bytes, tuple[CompiledRoute, Version]] = {}
        for route in new.routes:
            wanted |= route.wanted_headers
            for target in TARGETS:
                value = marker(route.name, target, self.synthetic_token).encode("latin-1")
                markers[value] = (route, target)
        self.wanted_headers = frozenset(wanted)
        self.synthetic_markers = markers
        # round-robin counters only for the URL lists this snapshot still names (reloads
        # that keep changing multi-URL backends would otherwise grow the dict for ever)
        live = {
            plan.targets
            for route in new.routes
            for plan in (route.stable, route.candidate)
            if plan is not None and len(plan.targets) > 1
        }
        self._rr = {key: n for key, n in self._rr.items() if key in live}

    def pick_pool(self, plan: BackendPlan) -> tuple[UpstreamPool, str]:
        """The pool for the next request to ``plan``: round-robin over its URLs."""
        targets = plan.targets
        if len(targets) == 1:
            target = targets[0]
        else:
            key = targets
            n = self._rr.get(key, 0)
            self._rr[key] = n + 1
            target = targets[n % len(targets)]
        return self.pools.get(target.key), target.url

    def is_trusted(self, peer: str) -> bool:
        if not self.trusted or not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def sweep(self, now: float) -> None:
        """Called a few times a second: advance the clock, enforce timeouts, trim pools."""
        self.clock.now = now
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self.pools.sweep()

    def start_draining(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


class _Reject(Exception):
    """Raised inside a parser callback to answer the request with an error status."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class Exchange:
    """One request and its response; the unit that metrics and the access log record."""

    __slots__ = (
        "body_buffer",
        "body_buffered",
        "body_kind",
        "body_received",
        "bytes_out",
        "client_head_sent",
        "conn",
        "connecting",
        "content_length",
        "ctx",
        "decision",
        "duration",
        "error_kind",
        "expect_continue",
        "finished",
        "head_bytes",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "method",
        "path",
        "pool",
        "reject",
        "replayable",
        "req_done",
        "request_id",
        "resp_mode",
        "retried",
        "route",
        "snapshot",
        "started",
        "status",
        "synthetic",
        "target",
        "ttfb",
        "tunnel",
        "up",
        "upgrade",
        "upstream_duration",
        "upstream_sent_at",
        "upstream_status",
        "upstream_url",
        "version",
        "wanted",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.wanted: dict[bytes, bytes] = {}
        self.keep_alive = True
        self.http11 = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.body_kind = NO_BODY
        self.content_length = 0
        self.body_received = 0
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.req_done = False
        self.replayable = False
        self.route: CompiledRoute | None = None
        self.snapshot: Snapshot | None = None
        self.decision: Decision | None = None
        self.version = ""
        self.pool: UpstreamPool | None = None
        self.upstream_url = ""
        self.up: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.head_bytes = b""
        self.request_id = b""
        self.host = ""
        self.path = ""
        self.started = 0.0
        self.upstream_sent_at = 0.0
        self.ttfb = 0.0
        self.duration = 0.0
        self.upstream_duration = 0.0
        self.status = 0
        self.upstream_status = 0
        self.bytes_out = 0
        self.client_head_sent = False
        self.resp_mode = RAW
        self.retried = False
        self.error_kind = ""
        self.finished = False
        self.tunnel = False
        self.synthetic = False  # the proxy's own request (traffic.py), counted apart
        self.reject: tuple[int, str, str] | None = None  # answer this when its turn comes

    # -- request side --------------------------------------------------------------------------
    def start(self) -> None:
        """Route the request and send it upstream (called in arrival order)."""
        ctx = self.ctx
        self.started = monotonic()
        snapshot = self.snapshot = ctx.state.snapshot
        wanted = self.wanted
        rid = wanted.get(b"x-request-id")
        self.request_id = (
            rid if rid is not None and valid_request_id(rid) else ctx.request_ids.next()
        )
        if snapshot is None:
            self.local(503, "not_ready", "no routing config is loaded yet", retry_after=True)
            return
        target = self.target
        if target[:1] != b"/":
            if not self._origin_form():
                return
            target = self.target
        raw_host = wanted.get(b"host")
        if raw_host is None:
            if self.http11:
                self.local(400, "bad_request", "HTTP/1.1 requests need a Host header", close=True)
                return
            raw_host = b""
        host = raw_host.decode("latin-1").lower()
        if host[-1:] != "]":
            host = host.rsplit(":", 1)[0] if ":" in host else host
        self.host = host
        q = target.find(b"?")
        path = (target if q < 0 else target[:q]).decode("latin-1")
        self.path = path
        route = find_route(snapshot.routes, host, path if path != "*" else "/")
        mark = wanted.get(SYNTHETIC)
        forced: Version | None = None
        if mark is not None:
            hit = ctx.synthetic_markers.get(mark)
            if hit is not None:
                route, forced = hit
                self.synthetic = True
            elif hmac.compare_digest(mark.partition(b" ")[0], ctx.synthetic_token_bytes):
                # ours, for a route a reload removed: never let it pass as a user's request
                self.local(404, "no_route", "synthetic traffic for a route that is gone")
                return
        if route is None:
            self.local(404, "no_route", f"no route matches host {host!r} and path {path!r}")
            return
        self.route = route
        limit = ctx.max_body_bytes
        if limit and self.body_kind == LENGTH and self.content_length > limit:
            self.local(
                413, "body_too_large", f"request body is larger than {limit} bytes", close=True
            )
            return
        decision = self.decision = (
            choose(route, wanted, ctx.getrandbits(64))
            if forced is None
            else synthetic_decision(route, forced)
        )
        version = self.version = decision.version
        plan = route.candidate if version == CANDIDATE else route.stable
        assert plan is not None
        self.pool, self.upstream_url = ctx.pick_pool(plan)
        self.replayable = self.body_kind == NO_BODY and self.method in IDEMPOTENT_METHODS
        self.head_bytes = self._request_head(raw_host)
        ctx.in_flight += 1
        ctx.observer.exchange_started(self)
        if self.expect_continue and not self.req_done:
            self.conn.write(_CONTINUE)
        self.dispatch()

    def _origin_form(self) -> bool:
        """Absolute-form (``GET http://h/p``) to origin-form; ``*`` is kept for OPTIONS."""
        target = self.target
        if target == b"*" and self.method == b"OPTIONS":
            return True
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            self.local(400, "bad_request", "invalid request target", close=True)
            return False
        if not url.host:
            self.local(400, "bad_request", "invalid request target", close=True)
            return False
        authority = url.host + (b":%d" % url.port if url.port else b"")
        self.wanted[b"host"] = authority
        self.headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
        self.headers.append((b"Host", authority))
        self.target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        return True

    def _request_head(self, raw_host: bytes) -> bytes:
        """The request head for the upstream: the client's headers less the hop-by-hop ones,
        plus X-Forwarded-*, Via, X-Request-ID and the framing the proxy sends."""
        ctx = self.ctx
        wanted = self.wanted
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        named = wanted.get(b"connection")
        dropped: set[bytes] = set()
        if named is not None:
            dropped = {
                t
                for t in connection_tokens(named)
                if t not in (b"close", b"keep-alive", b"upgrade")
            }
        for name, value in self.headers:
            if dropped and name.lower() in dropped:
                continue
            parts += (name, b": ", value, b"\r\n")
        peer = self.conn.peer_ip
        if ctx.trusted and ctx.is_trusted(peer):
            prior = wanted.get(b"x-forwarded-for")
            xff = prior + b", " + peer.encode() if prior else peer.encode()
            proto = wanted.get(b"x-forwarded-proto") or b"http"
            fhost = wanted.get(b"x-forwarded-host") or raw_host
        else:
            xff, proto, fhost = peer.encode(), b"http", raw_host
        parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
        if fhost:
            parts += (b"X-Forwarded-Host: ", fhost, b"\r\n")
        parts += (ctx.via_line, b"X-Request-ID: ", self.request_id, b"\r\n")
        if self.synthetic:
            parts.append(UPSTREAM_LINE)
        if self.body_kind == CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", self.upgrade, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def dispatch(self) -> None:
        """Send the request on a pooled connection, or open one. A retry opens a new one
        (the connection that failed may not be the only dead one in the pool)."""
        pool = self.pool
        assert pool is not None
        up = pool.take_idle() if not self.retried or pool.at_limit() else None
        if up is not None:
            self._attach(up)
        elif pool.at_limit():
            self.ctx.observer.attempt_failed(self, self.version, "pool")
            self.local(
                503, "upstream_busy", "the upstream's connection limit is reached", retry_after=True
            )
        else:
            self.connecting = self.conn.loop.create_task(self._connect(pool))

    async def _connect(self, pool: UpstreamPool) -> None:
        try:
            up = await pool.connect()
        except TimeoutError:
            self.connecting = None
            self.upstream_failed("timeout", connect=True)
            return
        except PoolExhausted:
            self.connecting = None
            self.ctx.observer.attempt_failed(self, self.version, "pool")
            self.local(
                503, "upstream_busy", "the upstream's connection limit is reached", retry_after=True
            )
            return
        except OSError:
            self.connecting = None
            self.upstream_failed("connect", connect=True)
            return
        self.connecting = None
        if self.finished:
            pool.put_idle(up)  # never used: good for the next request
            return
        self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        self.up = up
        up.bind(self, self.method == b"HEAD")
        if self.conn.client_full:
            up.pause_reading()  # the client has not taken the previous response yet
        self.upstream_sent_at = monotonic()
        if self.body_buffer and self.upgrade is None:
            up.writelines([self.head_bytes, *self.body_buffer])
            self.body_buffer = []
            self.body_buffered = 0
            self.conn.update_reading()
        else:
            up.write(self.head_bytes)  # (early WebSocket bytes wait for the 101)

    def client_body(self, data: bytes) -> None:
        self.body_received += len(data)
        limit = self.ctx.max_body_bytes
        if limit and self.body_received > limit and not self.finished:
            raise _Reject(413, "body_too_large")
        up = self.up
        if self.tunnel:
            if up is not None:
                up.write(data)
            return
        if up is not None and not up.closed:
            if self.body_kind == CHUNKED:
                up.writelines(chunk(data))
            else:
                up.write(data)
        elif not self.finished:
            if self.body_kind == CHUNKED:
                self.body_buffer.extend(chunk(data))
            else:
                self.body_buffer.append(data)
            self.body_buffered += len(data)
            if self.body_buffered > _BODY_BUFFER_LIMIT:
                self.conn.update_reading()

    def client_done(self) -> None:
        self.req_done = True
        if self.body_kind == CHUNKED and not self.finished:
            up = self.up
            if up is not None and not up.closed:
                up.write(LAST_CHUNK)
            else:
                self.body_buffer.append(LAST_CHUNK)

    # -- response side (ResponseSink) ---------------------------------------------------------
    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        now = monotonic()
        self.ttfb = now - self.started
        self.status = self.upstream_status = status
        conn = self.conn
        parts = [status_line(status, reason)]
        chunked = False
        length_at = -1
        has_length = False
        echo_id = True
        dropped: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lname == b"connection":
                    dropped.extend(connection_tokens(value))
                continue
            if lname == b"content-length":
                has_length = True
                length_at = len(parts)
            elif lname == b"x-request-id":
                echo_id = False  # the upstream's own id is echoed instead of ours
            parts += (name, b": ", value, b"\r\n")
        if dropped:
            parts = _without(parts, dropped)
            length_at = -1 if not has_length else _find(parts, b"content-length")
        closing = not self.keep_alive or conn.closing or self.ctx.draining or not self.req_done
        no_body = self.method == b"HEAD" or no_body_status(status)
        if status == 101:
            parts.append(
                b"Connection: Upgrade\r\nUpgrade: " + (self.upgrade or b"websocket") + b"\r\n"
            )
            self.tunnel = True
        elif no_body:
            self.resp_mode = RAW
        elif chunked:
            if length_at >= 0:  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
                parts[length_at : length_at + 4] = []
            if self.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.resp_mode = RECHUNK
            else:
                closing = True
        elif not has_length:
            if self.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.resp_mode = RECHUNK
            else:
                closing = True
        if echo_id:
            parts += (b"X-Request-ID: ", self.request_id, b"\r\n")
        decision = self.decision
        if decision is not None and decision.seed is not None and self.route is not None:
            route = self.route
            parts.append(
                b"Set-Cookie: %s=%s; Max-Age=%d; Path=/; HttpOnly; SameSite=Lax\r\n"
                % (route.sticky_cookie.encode(), decision.seed.encode(), route.sticky_max_age)  # type: ignore[union-attr]
            )
        if status != 101:
            if closing:
                conn.closing = True
                parts.append(b"Connection: close\r\n")
            elif not self.http11:
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.client_head_sent = True
        conn.write(b"".join(parts))

    def upstream_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.resp_mode == RECHUNK:
            self.conn.writelines(chunk(data))
        else:
            self.conn.write(data)

    def upstream_complete(self) -> None:
        if self.finished:
            return
        if self.resp_mode == RECHUNK:
            self.conn.write(LAST_CHUNK)
        up = self.up
        self.up = None
        if up is not None:
            if self.req_done and not self.tunnel:
                up.release()
            else:
                up.close()
        self.finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream switched protocols: from now on bytes flow unparsed both ways."""
        self.conn.start_tunnel(self)
        if rest:
            self.conn.write(rest)

    def upstream_failed(self, kind: str, connect: bool = False) -> None:
        if self.finished:
            return
        ctx = self.ctx
        up = self.up
        self.up = None
        stale = up is not None and up.served > 1 and not up.got_response_bytes and kind == "reset"
        if up is not None:
            up.abort()
        if not self.client_head_sent:
            if self.replayable and not self.retried and (stale or connect or kind == "reset"):
                self.retried = True
                if self.version == CANDIDATE and self.route is not None:
                    # The user should not see the candidate's failure, but the analyzer must.
                    ctx.observer.attempt_failed(self, CANDIDATE, kind)
                    self.decision = retry_decision()
                    self.version = self.decision.version
                    self.pool, self.upstream_url = ctx.pick_pool(self.route.stable)
                elif not stale:
                    ctx.observer.attempt_failed(self, self.version, kind)
                self.dispatch()
                return
            self.error_kind = kind
            if kind == "timeout":
                self.local(504, "upstream_timeout", "the upstream did not answer in time")
            else:
                what = {
                    "connect": "refused the connection",
                    "reset": "closed the connection",
                    "protocol": "sent an invalid response",
                }.get(kind, "failed")
                self.local(502, "bad_gateway", f"the upstream {what}")
            return
        # The response has started: the only honest signal left is to cut the connection.
        self.error_kind = kind
        self.conn.abort()
        self.finish()

    def upstream_writable(self, writable: bool) -> None:
        self.conn.upstream_full = not writable
        self.conn.update_reading()

    # -- endings -------------------------------------------------------------------------------
    def local(
        self,
        status: int,
        code: str,
        message: str,
        *,
        close: bool = False,
        retry_after: bool = False,
    ) -> None:
        """Answer from the proxy itself and finish the exchange."""
        if not self.request_id:
            self.request_id = self.ctx.request_ids.next()
        if self.started == 0.0:
            self.started = monotonic()
        close = (
            close
            or not self.keep_alive
            or self.ctx.draining
            or (not self.req_done and self.body_kind != NO_BODY)
        )
        extra = ((b"Retry-After", b"1"),) if retry_after else ()
        self.status = status
        self.conn.write(
            local_response(
                status,
                code,
                message,
                self.request_id,
                close=close,
                head_only=self.method == b"HEAD",
                extra=extra,
            )
        )
        self.client_head_sent = True
        if close:
            self.conn.closing = True
        if self.error_kind == "" and status >= 500:
            self.error_kind = code
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        now = monotonic()
        self.duration = now - self.started
        if self.upstream_sent_at:
            self.upstream_duration = now - self.upstream_sent_at
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up = self.up
        if up is not None:
            # Answered by the proxy while the upstream was still serving it (413 mid-body,
            # a client error): that connection is half-used, never reuse it.
            self.up = None
            up.abort()
        ctx = self.ctx
        if self.route is not None and self.decision is not None:
            ctx.in_flight -= 1
        ctx.observer.exchange_finished(self)
        if self.tunnel:
            self.conn.close()
        else:
            self.conn.exchange_done(self)

    def client_gone(self) -> None:
        """The client closed the connection before the response was complete (499)."""
        if self.finished:
            return
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        if not self.client_head_sent or self.status == 0:
            self.status = 499
        self.error_kind = self.error_kind or "client_closed"
        self.finish()

    def __repr__(self) -> str:
        return (
            f"<Exchange {self.method.decode()} {self.target.decode('latin-1')} "
            f"route={self.route.name if self.route else None} version={self.version} "
            f"status={self.status}>"
        )


def _without(parts: list[bytes], names: list[bytes]) -> list[bytes]:
    """Drop the header lines (name, ': ', value, CRLF) whose names a Connection header listed."""
    drop = {n for n in names if n not in (b"close", b"keep-alive")}
    if not drop:
        return parts
    out = parts[:1]
    for i in range(1, len(parts), 4):
        if parts[i].lower() not in drop:
            out.extend(parts[i : i + 4])
    return out


def _find(parts: list[bytes], lname: bytes) -> int:
    for i in range(1, len(parts), 4):
        if parts[i].lower() == lname:
            return i
    return -1


class _Feed(Protocol):
    def feed_data(self, data: bytes) -> None: ...


class _Discard:
    """Stands in for the request parser once no more requests are read from a connection."""

    __slots__ = ()

    def feed_data(self, data: bytes) -> None:
        pass


_DISCARD: Final = _Discard()


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests, runs their exchanges in order."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.request_parser = httptools.HttpRequestParser(self)
        self.parser: _Feed = self.request_parser  # _DISCARD once no more requests are read
        self.peer_ip = ""
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.header_bytes = 0
        self.header_count = 0
        self.in_head = False  # between the first byte of a request and the end of its headers
        self.head_seen = -1  # bytes received since then (-1: not counted in the first read)
        self.closing = False  # close after the current exchange
        self.read_done = False  # no more requests are read (one said Connection: close)
        self.closed = False
        self.upstream_full = False  # the upstream's write buffer is full
        self.reading = True
        self.client_full = False  # our write buffer to the client is full
        self.full_since = 0.0
        self.tunnel: Exchange | None = None
        self.upgrading: Exchange | None = None
        self.linger = False  # close with a lingering close (the client may still be sending)
        self.lingering = 0.0  # when the lingering close began (0: not lingering)
        self.request_began = 0.0
        self.last_activity = ctx.clock.now
        self._wanted = ctx.wanted_headers

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.ctx.connections.add(self)
        if self.ctx.draining:
            self.closing = True

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.ctx.clock.now
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.up is not None:
                tunnel.up.write(data)
            return
        parser = self.parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                if self.parser is parser:
                    self._reject(cause.status, cause.code, _REJECT_MESSAGES[cause.code])
            else:
                logger.error("internal error while handling a request", exc_info=cause or exc)
                self._reject(500, "internal_error", "the proxy failed to handle this request")
            return
        except httptools.HttpParserError as exc:
            if self.parser is parser:
                self._reject(400, "bad_request", f"malformed request: {exc}")
            # else: bytes after the connection's last request (Connection: close, an early
            # answer, an upgrade): not parsed any more, ignored
            return
        if self.in_head:
            self._head_progress(len(data))

    def eof_received(self) -> bool:
        """The client half-closed: finish answering what it asked, then close."""
        if self.tunnel is None and self.parsing is None and (self.current or self.queue):
            last = self.queue[-1] if self.queue else self.current
            assert last is not None
            last.keep_alive = False
            self._stop_requests()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        for ex in (self.tunnel, self.current, *self.queue, self.parsing):
            if ex is not None and not ex.finished:
                ex.client_gone()
        self.queue.clear()
        self.current = self.parsing = self.tunnel = self.upgrading = None

    def pause_writing(self) -> None:
        self.client_full = True
        self.full_since = self.ctx.clock.now
        ex = self.current or self.tunnel
        if ex is not None and ex.up is not None:
            ex.up.pause_reading()

    def resume_writing(self) -> None:
        self.client_full = False
        ex = self.current or self.tunnel
        if ex is not None and ex.up is not None:
            ex.up.last_read = self.ctx.clock.now  # the read timeout restarts from here
            ex.up.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.header_bytes = 0
        self.header_count = 0
        self.in_head = True
        self.head_seen = -1
        self.request_began = self.ctx.clock.now
        self._wanted = self.ctx.wanted_headers

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.target = ex.target + url if ex.target else url
        if len(ex.target) > self.ctx.max_header_bytes:
            raise _Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        if (
            self.header_bytes > self.ctx.max_header_bytes
            or self.header_count > self.ctx.max_headers
        ):
            raise _Reject(431, "headers_too_large")
        ex = self.parsing
        assert ex is not None
        lname = name.lower()
        if lname in _CONSUMED:
            prior = ex.wanted.get(lname)
            ex.wanted[lname] = prior + b", " + value if prior is not None else value
            return
        ex.headers.append((name, value))
        if lname in self._wanted:
            prior = ex.wanted.get(lname)
            if prior is None:
                ex.wanted[lname] = value
            elif lname == b"cookie":
                ex.wanted[lname] = prior + b"; " + value
            elif lname == b"host" or lname == b"content-length":
                raise _Reject(400, "duplicate_header")
            else:
                ex.wanted[lname] = prior + b", " + value

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.in_head = False
        parser = self.request_parser
        ex.method = parser.get_method()
        ex.keep_alive = parser.should_keep_alive()
        ex.http11 = parser.get_http_version() == "1.1"
        wanted = ex.wanted
        te = wanted.get(b"transfer-encoding")
        if te is not None:
            ex.body_kind = CHUNKED
        else:
            cl = wanted.get(b"content-length")
            if cl is not None:
                ex.content_length = int(cl)
                ex.body_kind = LENGTH if ex.content_length > 0 else NO_BODY
        if ex.body_kind != NO_BODY:
            expect = wanted.get(b"expect")
            ex.expect_continue = expect is not None and expect.lower() == b"100-continue"
        if parser.should_upgrade():
            # The parser reads no further requests after this one. Only WebSocket is relayed;
            # any other upgrade (h2c, ...) goes upstream as a plain request, Upgrade dropped.
            upgrade = wanted.get(b"upgrade")
            if upgrade is not None and b"websocket" in upgrade.lower():
                ex.upgrade = upgrade
            ex.keep_alive = False
            self.upgrading = ex
        if self.current is None:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.client_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.client_done()
            if not ex.keep_alive:
                # The connection ends after this exchange (its own close decision comes from
                # ex.keep_alive when it is answered: exchanges ahead of it keep theirs).
                self._stop_requests()

    # -- used by exchanges ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    def exchange_done(self, ex: Exchange) -> None:
        if self.current is not ex:
            return
        self.current = None
        if self.closed:
            return
        self.last_activity = self.ctx.clock.now  # the idle timeout counts from here
        if (
            self.closing
            or not ex.keep_alive
            or (not ex.req_done and ex.body_kind != NO_BODY)  # an unread body: cannot go on
        ):
            self.close()
            return
        # (a request without a body answered from on_headers_complete is done reading too:
        # its on_message_complete follows in the same parser call)
        if self.queue:
            nxt = self.current = self.queue.popleft()
            if nxt.reject is not None:
                status, code, message = nxt.reject
                nxt.local(status, code, message, close=True)
                return
            nxt.start()
        self.update_reading()

    def update_reading(self) -> None:
        """Read from the client only when nothing downstream is full or waiting."""
        if self.lingering:
            return
        if self.tunnel is not None:
            want = not self.upstream_full
        else:
            ex = self.current
            want = not (
                self.upstream_full
                or self.queue
                or ((self.closing or self.read_done) and self.parsing is None)
                or (ex is not None and ex.body_buffered > _BODY_BUFFER_LIMIT)
            )
        if want != self.reading and self.transport is not None and not self.closed:
            self.reading = want
            if want:
                self.last_activity = self.ctx.clock.now  # idle time starts when reading does
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def start_tunnel(self, ex: Exchange) -> None:
        """After a 101: relay raw bytes between the client and the upstream connection."""
        self.tunnel = ex
        self.current = None
        self.closing = True
        self.upstream_full = False
        if ex.body_buffer and ex.up is not None:
            ex.up.writelines(ex.body_buffer)
            ex.body_buffer = []
            ex.body_buffered = 0
        self.update_reading()

    def _stop_requests(self) -> None:
        """Read no further requests on this connection."""
        self.read_done = True
        self.parser = _DISCARD
        self.update_reading()

    def _head_progress(self, n: int) -> None:
        """A request head spans reads: bound it before its end arrives (a header line that
        never ends would otherwise grow in the parser's buffer)."""
        if self.head_seen < 0:
            self.head_seen = 0  # the read the request began in is bounded by the read size
            return
        self.head_seen += n
        if self.head_seen > 2 * self.ctx.max_header_bytes + 4096:
            self._reject(431, "headers_too_large", _REJECT_MESSAGES["headers_too_large"])

    def _upgrade_requested(self, rest: bytes) -> None:
        """The parser saw a complete Upgrade request and reads no further: bytes after it
        are early WebSocket data that wait for the 101 (or are dropped if none comes)."""
        ex = self.upgrading
        self.upgrading = None
        self.parsing = None
        self.read_done = True
        self.parser = _DISCARD
        if ex is None:
            self.close()
            return
        if rest and ex.upgrade is not None and not ex.finished:
            ex.body_buffer.append(rest)
        self.update_reading()

    def _reject(self, status: int, code: str, message: str) -> None:
        """The request being parsed is malformed, too large or too slow: answer it in turn,
        read no more requests, and close (lingering) once it is answered."""
        ex = self.parsing
        self.parsing = None
        self.in_head = False
        self.read_done = True
        self.parser = _DISCARD
        self.linger = status != 408  # a client too slow to send headers gets no more time
        if ex is None:
            ex = Exchange(self)
        ex.keep_alive = False
        if ex.finished:
            # Already answered (an early error): nothing more to say.
            if self.current is None:
                self.close()
        elif ex is self.current or self.current is None:
            self.current = ex
            if ex.client_head_sent:
                self.abort()
            else:
                ex.local(status, code, message, close=True)
        else:
            # A pipelined request behind the one being served: answered when its turn comes.
            ex.reject = (status, code, message)
            if ex not in self.queue:
                self.queue.append(ex)
        self.update_reading()

    def check_timeouts(self, now: float) -> None:
        ctx = self.ctx
        if self.lingering:
            if now - self.last_activity > _LINGER_IDLE or now - self.lingering > _LINGER_MAX:
                assert self.transport is not None
                self.transport.close()
            return
        if self.tunnel is not None:
            return
        ex = self.current
        if ex is not None and not ex.finished:
            if self.client_full and now - self.full_since > ctx.body_timeout:
                self.abort()  # the client stopped reading the response
                return
            up = ex.up
            if up is not None and not self.client_full and (ex.req_done or self.upstream_full):
                # Waiting on the upstream: for the response (from the later of the request's
                # last byte and the upstream's last byte), or for it to take the body.
                since = max(up.last_read, ex.upstream_sent_at, self.last_activity)
                if now - since > ctx.read_timeout:
                    ex.upstream_failed("timeout")
                    return
            if not ex.req_done and self.reading and now - self.last_activity > ctx.body_timeout:
                self.abort()
            return
        parsing = self.parsing
        if parsing is not None:
            if now - self.request_began > ctx.header_timeout:
                self._reject(408, "request_timeout", "the request headers took too long")
        elif now - self.last_activity > ctx.client_idle_timeout:
            self.close()

    def drain(self) -> None:
        self.closing = True
        if self.current is None and self.parsing is None and self.tunnel is None:
            self.close()

    def close(self) -> None:
        """Close after what is written; lingering if the client may still be sending."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if (
            not self.lingering
            and (self.linger or (self.parsing is not None and self.parsing.body_kind != NO_BODY))
            and not self.ctx.draining
            and transport.can_write_eof()
        ):
            self.lingering = self.ctx.clock.now or 1e-9
            self.last_activity = self.ctx.clock.now
            self.parser = _DISCARD
            self.read_done = True
            transport.write_eof()
            if not self.reading:
                self.reading = True
                transport.resume_reading()
            return
        transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def __repr__(self) -> str:
        return (
            f"<ClientConnection {self.peer_ip} current={self.current!r} queued={len(self.queue)}>"
        )
