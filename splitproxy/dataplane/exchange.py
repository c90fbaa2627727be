"""One request and its response through the proxy: the unit metrics and the access log record.

An `Exchange` is made by its `ClientConnection` when a request's first byte arrives and is
started in arrival order. It picks the route and version (`routing.choose`), takes an upstream
connection from the pool, writes the request head (`heads.request_head`) and streams both
bodies; the upstream connection reports the response to it (`upstream.ResponseSink`), and it
writes the response head (`heads.response_head`) and body to the client.

What the proxy answers itself: 400 (malformed), 404 (no route), 408 (headers too slow),
413 (body too large), 414/431 (target or headers too large), 502 (upstream refused, reset or
broken), 503 (no upstream can take it, or not ready), 504 (upstream too slow). Each carries the
request id. A request to the candidate that fails before any response byte, and can be
replayed safely (`retry.may_retry`), is retried once on stable; the failure still counts
against the candidate. A retry always opens a fresh upstream connection.

Synthetic requests (the proxy's own, from ``traffic.py``) carry ``X-Splitproxy-Synthetic`` with
a per-process marker (``synthetic.py``): the header is always consumed; a valid marker sends the
request to the route and version it names (reason ``synthetic``, ``Exchange.synthetic``), and
the upstream gets ``X-Splitproxy-Synthetic: 1`` in its place; a marker with this process's
token for a route that is gone gets a 404. Any other value is ignored.

Preview requests (``Exchange.preview``, from the preview listener) go to the candidate
(`routing.preview_decision`): no marker is honoured, no failure replayed on stable.

A route with ``mirror:`` copies some of its user requests to the candidate (``mirror.py``):
the exchange only feeds its `MirrorTap` the body bytes and hands it over when it ends.
"""

from __future__ import annotations

import errno
from typing import Final

from splitproxy.config.vocabulary import CANDIDATE, FailureKind, Version
from splitproxy.dataplane.client_state import CLOSED as CLIENT_CLOSED
from splitproxy.dataplane.exchange_record import ExchangeRecord
from splitproxy.dataplane.heads import (
    Fields,
    host_name,
    origin_form,
    request_head,
    response_head,
    seed_cookie,
)
from splitproxy.dataplane.http11 import (
    CHUNKED,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    RAW,
    RECHUNK,
    chunk,
    local_response,
    valid_request_id,
)
from splitproxy.dataplane.pools import PoolExhausted, UpstreamPool
from splitproxy.dataplane.replay import attempt_failed
from splitproxy.dataplane.routing import choose, preview_decision, synthetic_decision
from splitproxy.dataplane.synthetic import HEADER_LOWER as SYNTHETIC
from splitproxy.dataplane.synthetic import read_marker
from splitproxy.dataplane.upstream import CLOSED, UpstreamConnection

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
BODY_BUFFER_LIMIT: Final = 256 * 1024  # request bytes held while the upstream connects
OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})  # the proxy's limit, not upstream


class Reject(Exception):
    """Raised inside a parser callback to answer the request with an error status."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class Exchange(ExchangeRecord):
    """One request and its response; the unit that metrics and the access log record (its
    fields and their defaults: `exchange_record.ExchangeRecord`)."""

    __slots__ = ()

    # -- request side --------------------------------------------------------------------------
    def start(self) -> None:
        """Route the request and send it upstream (called in arrival order)."""
        ctx = self.ctx
        self.started = ctx.monotonic()
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
            wanted = self.wanted  # (a new one, with the target's Host)
        raw_host = wanted.get(b"host")
        if raw_host is None:
            if self.http11:
                self.local(400, "bad_request", "HTTP/1.1 requests need a Host header", close=True)
                return
            raw_host = b""
        conn = self.conn
        if raw_host == conn.raw_host:  # a connection's requests name one host, nearly always
            host = conn.host
        else:
            host = conn.host = host_name(raw_host)
            conn.raw_host = raw_host
            conn.found = None
        self.host = host
        if target == conn.target:  # (a client asking for the same target again: its path)
            path = conn.path
        else:
            q = target.find(b"?")
            path = conn.path = (target if q < 0 else target[:q]).decode("latin-1")
            conn.target = target
            conn.found = None
        self.path = path
        table = snapshot.table  # (`Snapshot.find`, inline: every request runs it)
        assert table is not None
        found = conn.found  # (what this table found for this host and path before)
        if found is not None and found[0] is table:
            route = found[1]
        else:
            route = table.find(host, path if path != "*" else "/")
            conn.found = (table, route)
        # the preview listener is the candidate's address: no marker redirects it
        mark = wanted.get(SYNTHETIC) if not self.preview else None
        forced: Version | None = None
        if mark is not None:
            ours, name, forced = read_marker(mark, ctx.synthetic_token_bytes)
            if ours:
                route = snapshot.route(name) if forced is not None else None
                if route is None:
                    # ours, for a route a reload removed (or garbled): never let it pass as
                    # a user's request
                    self.local(404, "no_route", "synthetic traffic for a route that is gone")
                    return
                self.synthetic = True
        if route is None:
            self.local(404, "no_route", f"no route matches host {host!r} and path {path!r}")
            return
        self.route = route
        limit = ctx.max_body_bytes
        if limit and self.body_kind is LENGTH and self.content_length > limit:
            self.local(
                413, "body_too_large", f"request body is larger than {limit} bytes", close=True
            )
            return
        rh = ctx.health.routes.get(route.name)
        if self.preview:
            decision = self.decision = preview_decision(route)
        else:
            decision = self.decision = (
                choose(route, wanted, ctx.getrandbits(64), rh is None or rh.candidate_up)
                if forced is None
                else synthetic_decision(route, forced)
            )
        version = self.version = decision.version
        plan = route.candidate if version == CANDIDATE else route.stable
        assert plan is not None
        bh = None if rh is None else rh.candidate if version == CANDIDATE else rh.stable
        self.backend_health = bh
        targets = plan.targets
        pool = None
        if len(targets) == 1 and (bh is None or bh.clean):
            # (`ProxyContext.pick_pool`'s answer for one address with nothing on record,
            # inline: its pool is known once a request has gone there)
            target_ = targets[0]
            pool = ctx.pools.pools.get(target_.key)
            self.upstream_url = target_.url
        if pool is None:
            pool, self.upstream_url = ctx.pick_pool(plan, bh)
        self.pool = pool
        body_kind = self.body_kind
        method = self.method
        self.replayable = body_kind is NO_BODY and method in IDEMPOTENT_METHODS
        peer = conn.peer_ip
        trusted = ctx.is_trusted(peer) if ctx.trusted else False
        fw = self.forwarding
        if (fw is not None and fw.via is ctx.via_line and fw.trusted is trusted
                and not self.synthetic and self.upgrade is None):  # fmt: skip
            # (`request_head` from a kept head's parts, inline: a repeated head's way)
            self.head_bytes = b"".join((method, b" ", self.target, fw.before_peer,
                conn.peer_bytes, fw.before_id, self.request_id, fw.end))  # fmt: skip
        else:  # (positional: a call by keywords matches each name)
            self.head_bytes = request_head(
                method, self.target, self.headers, wanted, peer, trusted, raw_host, ctx.via_line,
                self.request_id, self.synthetic, body_kind is CHUNKED,
                self.content_length if b"content-length" in wanted else None, self.upgrade, fw,
            )  # fmt: skip
        ctx.in_flight += 1
        ctx.observer.exchange_started(self)
        mirror = ctx.mirror
        # (`Mirror.tap` finds nothing to copy for a route without a lane: not asked then)
        self.mirror = (
            mirror.tap(self) if mirror is not None and route.name in mirror.lanes else None
        )
        if self.expect_continue and not self.req_done:
            conn.write(_CONTINUE)
        up = pool.take_idle()  # (`dispatch`'s first step, inline: a first try, never retried)
        if up is not None:
            self._attach(up)
        else:
            self.dispatch()

    def _origin_form(self) -> bool:
        """Absolute-form (``GET http://h/p``) to origin-form; ``*`` is kept for OPTIONS."""
        if self.target == b"*" and self.method == b"OPTIONS":
            return True
        parts = origin_form(self.target)
        if parts is None:
            self.local(400, "bad_request", "invalid request target", close=True)
            return False
        authority, self.target = parts
        self.forwarding = None  # (its Host and headers change: not the kept head's any more)
        # new ones: a kept head's are shared by the requests that repeat it (`request_head`)
        self.wanted = {**self.wanted, b"host": authority}
        self.headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
        self.headers.append((b"Host", authority))
        return True

    def dispatch(self) -> None:
        """Send the request on a pooled connection, or open one. A retry opens a new one
        (the connection that failed may not be the only dead one in the pool)."""
        pool = self.pool
        assert pool is not None
        up = pool.take_idle() if not self.retried or pool.at_limit() else None
        if up is not None:
            self._attach(up)
        elif pool.at_limit():
            self._pool_exhausted()
        else:
            self.connecting = self.conn.loop.create_task(self._connect(pool))

    def _pool_exhausted(self) -> None:
        assert self.decision is not None
        self.ctx.observer.attempt_failed(self, self.decision.version, "pool")
        self.local(
            503, "upstream_busy", "the upstream's connection limit is reached", retry_after=True
        )

    async def _connect(self, pool: UpstreamPool) -> None:
        try:
            up = await pool.connect()
        except TimeoutError:
            self.connecting = None
            self.upstream_failed("timeout", connect=True)
            return
        except PoolExhausted:
            self.connecting = None
            self._pool_exhausted()
            return
        except OSError as exc:
            self.connecting = None
            if exc.errno not in OUT_OF_FDS:
                self.upstream_failed("connect", connect=True)
            else:  # the proxy's own fd limit: a 503, never the upstream's failure
                self.ctx.out_of_fds()
                self.local(503, "proxy_overloaded", "out of file descriptors", retry_after=True)
            return
        self.connecting = None
        if self.finished:
            pool.put_idle(up)  # never used: good for the next request
            return
        self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        self.up = up
        up.bind(self, self.method == b"HEAD")
        conn = self.conn
        if conn.flow.client_full:  # (`FlowControl.upstream_attached`, inline)
            up.pause_reading()  # the client has not taken the previous response yet
        self.upstream_sent_at = self.ctx.monotonic()
        if self.body_buffer and self.upgrade is None:
            up.writelines([self.head_bytes, *self.body_buffer])
            self.body_buffer = []
            self.body_buffered = 0
            conn.update_reading()
        else:  # (`up.write`, inline; early WebSocket bytes wait for the 101)
            transport = up.transport
            if transport is not None:
                transport.write(self.head_bytes)

    def client_body(self, data: bytes) -> None:
        if self.mirror is not None:
            self.mirror.request_body(data)
        self.body_received += len(data)
        limit = self.ctx.max_body_bytes
        if limit and self.body_received > limit and not self.finished:
            raise Reject(413, "body_too_large")
        up = self.up
        if self.tunnel:
            if up is not None:
                up.write(data)
            return
        if up is not None and up.state is not CLOSED:
            if self.body_kind is CHUNKED:
                up.writelines(chunk(data))
            else:
                up.write(data)
        elif not self.finished:
            if self.body_kind is CHUNKED:
                self.body_buffer.extend(chunk(data))
            else:
                self.body_buffer.append(data)
            self.body_buffered += len(data)
            if self.body_buffered > BODY_BUFFER_LIMIT:
                self.conn.update_reading()

    def client_done(self) -> None:
        self.req_done = True
        if self.body_kind is CHUNKED and not self.finished:
            up = self.up
            if up is not None and up.state is not CLOSED:
                up.write(LAST_CHUNK)
            else:
                self.body_buffer.append(LAST_CHUNK)

    # -- response side (ResponseSink) ---------------------------------------------------------
    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.ttfb = self.ctx.monotonic() - self.started
        if status == 101 and self.upgrade is None:
            # Switching protocols on a request that asked for no upgrade: relaying it would
            # turn the client connection into a tunnel nobody asked for.
            self.upstream_failed("protocol")
            return
        self.status = self.upstream_status = status
        if self.route is not None and self.route.ab is not None:  # an A/B test's goals
            self.ctx.ab.response(self, status, headers)
        bh = self.backend_health
        if bh is not None and not bh.clean:  # a failure on record, or an address out
            self.ctx.health.succeeded(bh, self.upstream_url)
        conn = self.conn
        decision = self.decision
        cookie = (
            seed_cookie(self.route, decision.seed)
            if decision is not None and decision.seed is not None and self.route is not None
            else b""
        )
        # (`http11.no_body_status`, inline: this runs for every response)
        no_body = self.method == b"HEAD" or status < 200 or status == 204 or status == 304
        closing = not self.keep_alive or conn.closing or self.ctx.draining or not self.req_done
        prepared = headers.prepared if type(headers) is Fields else None
        if (prepared is not None and prepared.framed is not None and not closing
                and not cookie and self.http11 and prepared.status == status
                and prepared.reason is reason):  # fmt: skip
            # (`response_head`'s answer for the usual response, inline: `Prepared.framed`)
            head = b"".join((prepared.framed, self.request_id, b"\r\n\r\n"))
            self.resp_mode = RAW
        else:
            head, self.resp_mode, closing = response_head(
                status, reason, headers, self.request_id, self.http11, no_body, closing,
                self.upgrade, cookie,
            )  # fmt: skip
        if status == 101:
            self.tunnel = True
        if closing:
            conn.closing = True
        self.client_head_sent = True
        if no_body or status == 101:
            conn.write(head)
        else:  # held: written with the body's first bytes, or at the end of this read
            self.held = head

    def upstream_body(self, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        if self.mirror is not None:  # (it may keep what it gets: a copy, not a view of a read)
            self.mirror.response_body(data if isinstance(data, bytes) else bytes(data))
        held = self.held
        if self.resp_mode is RECHUNK:
            self.conn.writelines([held, *chunk(data)] if held else chunk(data))
        elif held:  # one call, uncopied (joining them measured no cheaper, even for 1 KB)
            conn = self.conn  # (`conn.writelines`, inline: the usual response's one write)
            transport = conn.transport
            if transport is not None and conn.state is not CLIENT_CLOSED:
                transport.writelines([held, data])
        else:
            self.conn.write(data)
        self.held = b""

    def upstream_read_done(self) -> None:
        """The end of a read that left the response unfinished: a head held waiting for its
        body goes out now (a head is never held past the read that brought it)."""
        if self.held:
            self.conn.write(self.held)
            self.held = b""

    def upstream_complete(self) -> None:
        if self.finished:
            return
        if self.held:  # a head held for a body that was empty (`upstream_read_done`)
            self.conn.write(self.held)
            self.held = b""
        if self.resp_mode is RECHUNK:
            self.conn.write(LAST_CHUNK)
        up = self.up
        self.up = None
        if up is not None:
            # An upgrade answered without 101 may leave bytes the client sent for the tunnel
            # unread on that connection: never reuse it.
            if self.req_done and not self.tunnel and self.upgrade is None:
                up.release()
            else:
                up.close()
        self.finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream switched protocols: from now on bytes flow unparsed both ways."""
        if self.finished or not self.tunnel:
            return
        self.conn.start_tunnel(self)
        if rest:
            self.conn.write(rest)

    def upstream_failed(self, kind: FailureKind, connect: bool = False) -> None:
        """The attempt failed (``connect``: while opening the connection): replay it on
        stable if `retry.may_retry` allows, else answer 502/504, or cut a started response
        (`replay.attempt_failed`)."""
        if not self.finished:
            attempt_failed(self, kind, connect)

    def upstream_writable(self, writable: bool) -> None:
        self.conn.flow.upstream_write_paused(not writable)
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
            self.started = self.ctx.monotonic()
        close = (
            close
            or not self.keep_alive
            or self.ctx.draining
            or (not self.req_done and self.body_kind is not NO_BODY)
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
        now = self.ctx.monotonic()
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
        log = ctx.log
        if log is not None:
            log(self)
        mirror = self.mirror
        if mirror is not None:  # hands a copy to the mirror's queue; never waits
            mirror.done(self)
            # The access log keeps the finished exchange until its batch is formatted (up to
            # 128 of them for 50 ms): not the copy's body pieces (up to `max_body` each)
            self.mirror = None
        if self.body_buffer:  # (request bytes of an upstream that never took them)
            self.body_buffer = []
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
