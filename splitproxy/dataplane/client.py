"""Client side of the data path: HTTP/1.1 connections from users, one exchange at a time.

A `ClientConnection` is an asyncio protocol parsed by httptools' request parser. Each request
becomes an `Exchange` (`exchange.py`), started in arrival order: pipelined requests wait behind
the one being served. Back-pressure between the client and the upstream is `flow.FlowControl`.

The connection's `ClientState`::

    OPEN --a request ends the connection / an answer before its body--> LAST_REQUEST
    LAST_REQUEST --after a 101--> TUNNEL
    OPEN, LAST_REQUEST --answered while the client may still send--> LINGERING
    any --the transport is lost--> CLOSED

Connection rules: a request that ends the connection (``Connection: close``, an upgrade, an
error) stops the parsing of further requests (LAST_REQUEST), but the exchanges queued ahead of
it keep their keep-alive answers. When the proxy answers before reading a request body (413,
an early error), it half-closes and discards what the client still sends for a while
(LINGERING, "lingering close"), so the answer is not lost to a reset. A client that
half-closes after its request still gets the answer. Timeouts (`check_timeouts`, called by
the sweeper with its clock): ``header_timeout`` from a request's first byte to the end of its
headers (408); ``body_timeout`` between request body bytes, and for a client that stops taking
the response; ``read_timeout`` while waiting on the upstream (504 before the response, a cut
connection after); ``client_idle_timeout`` between requests. Only WebSocket upgrades are
relayed; other upgrades (h2c) are served as plain requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools

from splitproxy.dataplane.client_state import (
    CLOSED,
    DISCARD,
    LAST_REQUEST,
    LINGERING,
    OPEN,
    TUNNEL,
    Feed,
    check_timeouts,
    head_progress,
)
from splitproxy.dataplane.client_state import ClientState as ClientState  # (re-exported)
from splitproxy.dataplane.exchange import BODY_BUFFER_LIMIT, Exchange, Reject
from splitproxy.dataplane.flow import FlowControl
from splitproxy.dataplane.http11 import CHUNKED, LENGTH, NO_BODY
from splitproxy.dataplane.request_head import (
    KEPT,
    REJECT_MESSAGES,
    PerHeader,
    read_request_head,
    surely_http11,
)

if TYPE_CHECKING:
    from splitproxy.dataplane.context import ProxyContext
    from splitproxy.dataplane.lookup import RouteTable
    from splitproxy.dataplane.routing import CompiledRoute

logger = logging.getLogger("splitproxy.dataplane.client")

_CRLF: Final = (13, 10)
_BLANK: Final = b"\r\n\r\n"  # where a head ends


_SPENT_PARSER: Final = httptools.HttpRequestParser(DISCARD)  # a closed connection's: never fed


# what a parser's feed_data raises (an upgrade is not an HttpParserError)
_FAILED: Final = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _Stopped(Exception):
    """Raised in a parser callback to stop reading requests the connection will not answer."""


class _TakeOver(Exception):
    """Raised once a chunked request's head is read: `PerHeader` parses on from its body."""


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests, runs their exchanges in order."""

    # Slots: one of these lives as long as its connection, idle keep-alive ones included
    # (thousands at once); a __dict__ would cost a few hundred bytes more each.
    __slots__ = (
        "at", "blank_since", "closing", "ctx", "current", "flow", "found", "head_at", "head_seen",
        "host", "in_head", "last_activity", "linger", "linger_began", "loop", "next_at", "parser",
        "parsing", "path", "peer_bytes", "peer_ip", "preview", "queue", "raw_host", "read",
        "request_began", "request_parser", "slow", "state", "target", "transport", "tunnel",
        "upgrading", "wanted_names",
    )  # fmt: skip

    def __init__(self, ctx: ProxyContext, *, preview: bool = False) -> None:
        self.ctx = ctx
        # accepted by the preview listener: every request goes to its route's candidate
        self.preview = preview
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        # No on_url nor on_header: a head is read from the read that completes it, where it
        # began at ``at`` (``next_at``: after a body framed by length, in the next read). The
        # per-header path (`request_head.PerHeader`, ``slow``) parses what cannot be read so
        # (a head spanning reads, a refused head, a chunked body) until a read ends between
        # requests.
        self.request_parser = httptools.HttpRequestParser(self)
        self.parser: Feed = self.request_parser  # DISCARD once no more requests are read
        self.slow: PerHeader | None = None
        self.read = b""
        self.at = 0
        self.head_at = 0
        self.next_at = 0
        self.peer_ip = ""
        self.peer_bytes = b""  # (encoded once: the upstream head names it in every request)
        # The last request's Host header and host (`heads.host_name`), target and path, and the
        # route a table found for them (`found`; None: ask): a connection's requests name one
        # host, and often the same target, each made and looked up once.
        self.raw_host, self.host, self.target, self.path = b"", "", b"", ""
        self.found: tuple[RouteTable, CompiledRoute | None] | None = None
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        # Pipelined requests behind `current`: almost always empty, and a list costs 56 bytes
        # where an empty deque costs 760 (its first block); popping its head is O(n) over a
        # handful of entries at most.
        self.queue: list[Exchange] = []
        self.in_head = False  # between the first byte of a request and the end of its headers
        self.head_seen = -1  # bytes received since then (-1: not counted in the first read)
        self.state = OPEN
        # Close after the current exchange: a decision about the connection's future (a
        # response said Connection: close, or the proxy drains), not a state it is in yet.
        self.closing = False
        self.flow = FlowControl()
        self.tunnel: Exchange | None = None  # the exchange relayed (TUNNEL)
        self.upgrading: Exchange | None = None
        self.linger = False  # close with a lingering close (the client may still be sending)
        self.linger_began = 0.0  # when LINGERING began
        self.request_began = 0.0
        # When empty lines began to arrive between requests (0: none): they start no request,
        # so without this a client sending CRLF forever would never meet a timeout.
        self.blank_since = 0.0
        self.last_activity = ctx.clock.now
        self.wanted_names = ctx.wanted_headers

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)  # (uvloop)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.peer_bytes = self.peer_ip.encode()
        ctx = self.ctx
        if ctx.max_connections and len(ctx.connections) >= ctx.max_connections:
            self.state = CLOSED
            self.parser = DISCARD
            ctx.refuse_connection(self.transport)
            return
        ctx.connections.add(self)
        if ctx.draining:
            self.closing = True

    def data_received(self, data: bytes) -> None:
        now = self.last_activity = self.ctx.clock.now
        if (
            self.parsing is None
            and self.current is None
            and not self.blank_since
            and self.state is OPEN
            and data[0] in _CRLF  # a request's first byte is a letter: no copy made for it
            and not data.strip(b"\r\n")
        ):
            self.blank_since = now
        if self.state is TUNNEL:
            tunnel = self.tunnel
            if tunnel is not None and tunnel.up is not None:
                tunnel.up.write(data)
            return
        parser = self.parser
        if parser is self.request_parser:
            self.read = data
            self.at = self.next_at
            try:  # (`_feed`, inline: the parser refuses almost no read)
                parser.feed_data(data)
            except _FAILED as exc:
                failed: Exception | None = exc
            else:
                failed = None
            if failed is not None:
                self._failed(parser, data, failed)
            self.read = b""
            left = self.at - len(data)  # (a body that goes on in the next read)
            self.next_at = left if left > 0 else 0  # (no `max`: a builtin call, every read)
            if self.in_head and self.parser is parser:
                # The head goes on in the next read: the per-header path takes it from its
                # start, so that its limits hold before its end arrives.
                self._per_header(data[self.at :])
        else:
            self._feed(parser, data)
        slow = self.slow
        if slow is not None and self.parsing is None and self.parser is slow.parser:
            # between requests: the next head is read from its bytes again
            self.slow = None
            self.parser = self.request_parser = httptools.HttpRequestParser(self)
            self.next_at = 0
        if self.in_head:
            head_progress(self, len(data))

    def _feed(self, parser: Feed, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except _FAILED as exc:
            failed: Exception = exc
        else:
            return
        # (out of the handler: an exception raised in it would take this one as its context)
        self._failed(parser, data, failed)

    def _failed(self, parser: Feed, data: bytes, exc: Exception) -> None:
        """``parser`` raised ``exc`` on ``data``: an upgrade, a callback's exception, or a
        refused request."""
        refused: Exception | None = None
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._upgrade_requested(data[exc.args[0] :])
            return
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, _Stopped):
                return
            if isinstance(cause, Reject):
                if self.parser is parser:
                    self._reject(cause.status, cause.code, REJECT_MESSAGES[cause.code])
                return
            if not isinstance(cause, _TakeOver):
                logger.error("internal error while handling a request", exc_info=cause or exc)
                self._reject(500, "internal_error", "the proxy failed to handle this request")
                return
        else:
            if self.parser is not parser:
                # bytes after the connection's last request (Connection: close, an early
                # answer, an upgrade): not parsed any more, ignored
                return
            refused = exc
        if refused is None:  # a chunked request: its head again, muted, then its body
            slow = self.slow
            assert slow is not None
            if self.parser is parser:
                self.parser = slow.parser
            self._feed(slow.parser, data[self.head_at :])
            return
        if self.in_head and parser is self.request_parser:
            # a refusal of the per-header path may come before llhttp's error
            slow = self._per_header(data[self.at :])
            if self.parser is not slow.parser:
                return
        self._reject(400, "bad_request", f"malformed request: {refused}")

    def _per_header(self, data: bytes) -> PerHeader:
        """Hand the request under way to the per-header path (``data``: it from its start)."""
        slow = self.slow = PerHeader(self, skip_begin=True, mute=False)
        if self.parser is self.request_parser:
            self.parser = slow.parser
        if data:
            self._feed(slow.parser, data)
        return slow

    def eof_received(self) -> bool:
        """The client half-closed: finish answering what it asked, then close."""
        if self.state is not TUNNEL and self.parsing is None and (self.current or self.queue):
            last = self.queue[-1] if self.queue else self.current
            assert last is not None
            last.keep_alive = False
            self._stop_requests()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.ctx.connections.discard(self)
        for ex in (self.tunnel, self.current, *self.queue, self.parsing):
            if ex is not None and not ex.finished:
                ex.client_gone()
        self.queue.clear()
        self.current = self.parsing = self.tunnel = self.upgrading = self.slow = None
        # Nothing of a closed connection is used again: without its parser (our bound callbacks)
        # and transport, refcounting frees it; frozen (`heap`), a cycle would be kept for good.
        self.parser = DISCARD
        self.request_parser = _SPENT_PARSER
        self.transport = self.flow.transport = None

    def pause_writing(self) -> None:
        ex = self.current or self.tunnel
        self.flow.client_write_paused(self.ctx.clock.now, ex.up if ex is not None else None)

    def resume_writing(self) -> None:
        ex = self.current or self.tunnel
        self.flow.client_write_resumed(self.ctx.clock.now, ex.up if ex is not None else None)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.parser is DISCARD:  # closed or lingering during this very read: stop parsing
            raise _Stopped
        self.parsing = Exchange(self)
        self.in_head = True
        self.head_seen = -1
        self.request_began = self.ctx.clock.now
        self.blank_since = 0.0
        self.wanted_names = self.ctx.wanted_headers

    def on_headers_complete(self) -> None:
        """The head is whole in ``read`` from ``at`` (llhttp skipped the line ends before it):
        read it in one pass (`request_head.read_request_head`)."""
        ex = self.parsing
        assert ex is not None
        read = self.read
        at = self.at
        while read[at] == 13 or read[at] == 10:
            at += 1
        self.head_at = at
        parser = self.request_parser
        # llhttp has accepted the head: every line of it ends in CRLF and no CR stands alone,
        # so the first blank line after the request line is its end
        end = read.find(_BLANK, at) if at else read.find(_BLANK)
        head = read[at:end]
        parts = head.split(b" ", 2)
        keep_alive = parser.should_keep_alive()
        ctx = self.ctx
        kept = KEPT
        known = None
        if len(parts) == 3:  # (`surely_http11` and `read_request_head`'s look-up, inline)
            target, rest = parts[1], parts[2]
            if (rest[:10] == b"HTTP/1.1\r\n" and target and 10 not in target and kept.names
                    is self.wanted_names and len(target) <= ctx.max_header_bytes):  # fmt: skip
                known = kept.heads.get(rest)
        if known is not None and known[2] <= ctx.max_header_bytes and known[3] <= ctx.max_headers:
            kept.hits += 1  # (a repeated head, HTTP/1.1: what it said before)
            ex.target = target
            ex.headers, ex.wanted, size, count, ex.forwarding = known
            version, method = "1.1", parts[0]
        else:
            if surely_http11(parts):  # (and the method is the line's first word)
                version, method = "1.1", parts[0]
            else:
                version, method = parser.get_http_version(), parser.get_method()
            if version == "0.9":  # no headers: only the target is checked before the 505
                ex.target = read[at : read.find(b"\r\n", at)].split()[1]
                if len(ex.target) > ctx.max_header_bytes:
                    raise Reject(414, "uri_too_long")
                self.head_complete(parser, version)
                return
            ex.target, ex.headers, ex.wanted, size, count, ex.forwarding = read_request_head(
                head, ctx.max_header_bytes, ctx.max_headers, self.wanted_names, parts
            )
        self.at = end + 4
        ex.method = method  # (not before: a head refused above is answered as if no method)
        self.head_complete(parser, version, keep_alive)
        if ex.body_kind is LENGTH:
            self.at += ex.content_length  # (where the next request begins)
        elif ex.body_kind is CHUNKED:
            # Its trailer fields go through the per-header checks: `PerHeader` parses on
            # from the body, its parser given the head again (muted) to start from there.
            self.slow = PerHeader(self, skip_begin=True, mute=True, counted=(size, count))
            raise _TakeOver

    def head_complete(
        self, parser: httptools.HttpRequestParser, version: str, keep_alive: bool | None = None
    ) -> None:
        """The request's head is read: its framing, then it starts or waits its turn
        (``keep_alive``: the parser's `should_keep_alive`, when the caller asked it and set
        the exchange's method)."""
        ex = self.parsing
        assert ex is not None
        self.in_head = False
        if keep_alive is None:  # (else the method is read already, as is this)
            ex.method = parser.get_method()
            keep_alive = parser.should_keep_alive()
        ex.keep_alive = keep_alive
        if version != "1.1" and version != "1.0":  # HTTP/0.9 has no headers and no status
            raise Reject(505, "version_not_supported")
        ex.http11 = version == "1.1"
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
            if ex.body_kind is not NO_BODY:
                # Its body would sit between the head and the tunnel: an upstream that answers
                # with anything but 101 could read it as the next request (smuggling).
                raise Reject(400, "upgrade_with_body")
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
            if ex.body_kind is not CHUNKED:  # (`ex.client_done`, inline: no last chunk to send)
                ex.req_done = True
            else:
                ex.client_done()
            if not ex.keep_alive:
                # The connection ends after this exchange (its own close decision comes from
                # ex.keep_alive when it is answered: exchanges ahead of it keep theirs).
                self._stop_requests()

    # -- used by exchanges ---------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self.state is not CLOSED and self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        if self.state is not CLOSED and self.transport is not None:
            self.transport.writelines(data)

    def exchange_done(self, ex: Exchange) -> None:
        if self.current is not ex:
            return
        self.current = None
        if self.state is CLOSED:
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
            nxt = self.current = self.queue.pop(0)
            if nxt.reject is not None:
                status, code, message = nxt.reject
                nxt.local(status, code, message, close=True)
                return
            nxt.start()
        elif self.flow.reading and not self.flow.upstream_full and self.state is OPEN:
            return  # (the usual case: reading, and `update_reading` would keep it so)
        self.update_reading()

    def update_reading(self) -> None:
        """Read from the client only when nothing downstream is full or waiting."""
        state = self.state
        if state is LINGERING or state is CLOSED:
            return
        flow = self.flow
        if state is TUNNEL:
            want = not flow.upstream_full
        else:
            ex = self.current
            want = not (
                flow.upstream_full
                or self.queue
                or ((self.closing or state is not OPEN) and self.parsing is None)
                or (ex is not None and ex.body_buffered > BODY_BUFFER_LIMIT)
            )
        if flow.set_client_reading(want) and want:
            self.last_activity = self.ctx.clock.now  # idle time starts when reading does

    def start_tunnel(self, ex: Exchange) -> None:
        """After a 101: relay raw bytes between the client and the upstream connection."""
        self.tunnel = ex
        self.state = TUNNEL
        self.current = None
        self.closing = True
        self.flow.upstream_full = False
        if ex.body_buffer and ex.up is not None:
            ex.up.writelines(ex.body_buffer)
            ex.body_buffer = []
            ex.body_buffered = 0
        self.update_reading()

    def _stop_requests(self) -> None:
        """Read no further requests on this connection."""
        self._read_no_more()
        self.update_reading()

    def _read_no_more(self) -> None:
        self.parser = DISCARD
        if self.state is OPEN:
            self.state = LAST_REQUEST

    def _upgrade_requested(self, rest: bytes) -> None:
        """The parser saw a complete Upgrade request and reads no further: bytes after it
        are early WebSocket data that wait for the 101 (or are dropped if none comes)."""
        ex = self.upgrading
        self.upgrading = None
        self.parsing = None
        self._read_no_more()
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
        self._read_no_more()
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
        """Enforce the timeouts at ``now`` (the sweeper's clock): the module docstring's list."""
        check_timeouts(self, now)

    def drain(self) -> None:
        """Close now if idle, else after the current exchange (the proxy is stopping)."""
        self.closing = True
        if self.current is None and self.parsing is None and self.tunnel is None:
            self.close()

    def close(self) -> None:
        """Close after what is written; lingering if the client may still be sending."""
        transport = self.transport
        if transport is None or self.state is CLOSED:
            return
        if (
            self.state is not LINGERING
            and (self.linger or (self.parsing is not None and self.parsing.body_kind != NO_BODY))
            and not self.ctx.draining
            and transport.can_write_eof()
        ):
            self.state = LINGERING
            self.linger_began = self.last_activity = self.ctx.clock.now
            self.parser = DISCARD
            transport.write_eof()
            self.flow.set_client_reading(True)  # read, to discard
            return
        # Nothing more is parsed or written, even later in the read that got us here (a
        # pipelined request behind an answer that closes must not be answered after it).
        self.parser = DISCARD
        self.state = CLOSED
        transport.close()

    def abort(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.transport.abort()

    def __repr__(self) -> str:
        return (
            f"<ClientConnection {self.peer_ip} {self.state.name.lower()} "
            f"current={self.current!r} queued={len(self.queue)}>"
        )
