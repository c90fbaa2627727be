r"""Upstream side of the data path: one raw HTTP/1.1 connection to an upstream.

An `UpstreamConnection` is an asyncio protocol parsed by httptools' response parser. It serves
one exchange at a time (its `sink`), forwarding the response head, body and end to it; between
exchanges it sits idle in its pool (`pools.py`). Its `UpstreamState` says where it is::

    IDLE --bind--> WAITING_HEAD --final head--> STREAMING_BODY --end--> IDLE (or CLOSED)
                                  \--101 and the parser's upgrade--> UPGRADED --close--> CLOSED

and any state goes to CLOSED when either side closes it.

The upstream is not trusted either: a response head over `MAX_RESPONSE_HEAD` bytes or
`MAX_RESPONSE_HEADERS` fields, a transfer coding other than ``chunked``, or bytes after a
complete response (they would be read as the next exchange's answer) fail the attempt as a
``protocol`` error (502) and close the connection; it is never reused.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

from splitproxy.config.vocabulary import FailureKind
from splitproxy.dataplane.http11 import ResponseBody, no_body_status

if TYPE_CHECKING:
    from splitproxy.dataplane.pools import UpstreamPool

logger = logging.getLogger("splitproxy.upstream")

# nginx reads a response head into one 4-8 KiB buffer; this leaves room for big Set-Cookie
# headers while bounding what one upstream can make the proxy hold.
MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_RESPONSE_HEADERS: Final = 128
# A body framed by Content-Length of at least this many bytes is relayed as it is read, not
# through the parser (which copies each piece): past this size the copies cost more than the
# fresh parser the connection then needs. Smaller ones are parsed (and copied) as before.
RELAY_MIN: Final = 8 * 1024
# Reads land in a buffer of the proxy's (`get_buffer`), not in a new bytes object each, and
# are parsed from it; body bytes of at least `VIEW_MIN` are handed on as a view of it (no
# copy), smaller pieces copied out (`_hand_on`). A view the client's transport still holds
# (it could not write it all at once) pins its buffer, and the next read gets a new one: at
# most READ_SIZE / VIEW_MIN (4x) the bytes held.
READ_SIZE: Final = 128 * 1024
_BLANK: Final = b"\r\n\r\n"  # where a head ends
VIEW_MIN: Final = 32 * 1024


class _ReadBuffer:
    """The buffer upstream reads land in: one for all connections (the loop reads one at a
    time), replaced when a view of an earlier read is still alive somewhere."""

    __slots__ = ("buf", "lent")

    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)
        self.lent = False  # a view of ``buf`` went out since it was last found free

    def take(self) -> bytearray:
        """The buffer for the next read: ``buf``, unless a view of it is still alive."""
        buf = self.buf
        self.lent = False
        try:
            buf.append(0)  # a bytearray cannot change size while a view of it is alive
        except BufferError:
            buf = self.buf = bytearray(READ_SIZE)
        else:
            del buf[-1]
        return buf


_READS: Final = _ReadBuffer()


def _hand_on(data: bytes | memoryview) -> bytes | memoryview:
    """What a sink gets of a read: a view under `VIEW_MIN` bytes is copied out (the sink may
    keep it, and it would keep a whole read buffer alive)."""
    if len(data) < VIEW_MIN and isinstance(data, memoryview):
        return data.tobytes()
    return data


# a lost connection's parser: never fed, it only stands in for the one let go
_SPENT_PARSER: Final = httptools.HttpResponseParser(object())


class UpstreamProtocolError(Exception):
    """The upstream's answer cannot be relayed safely (raised inside parser callbacks)."""


class UpstreamState(enum.Enum):
    """Where an upstream connection is in its life (see the module docstring)."""

    IDLE = enum.auto()  # no exchange: connecting, or waiting in the pool
    WAITING_HEAD = enum.auto()  # the request is (being) sent; no final response head yet
    STREAMING_BODY = enum.auto()  # the response head went to the exchange; its body follows
    UPGRADED = enum.auto()  # a 101: raw bytes relayed both ways, never reused
    CLOSED = enum.auto()  # closed by either side; never used again


IDLE: Final = UpstreamState.IDLE
WAITING_HEAD: Final = UpstreamState.WAITING_HEAD
STREAMING_BODY: Final = UpstreamState.STREAMING_BODY
UPGRADED: Final = UpstreamState.UPGRADED
CLOSED: Final = UpstreamState.CLOSED


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange it serves."""

    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None: ...
    def upstream_body(self, data: bytes | memoryview) -> None: ...
    def upstream_read_done(self) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_upgraded(self, rest: bytes) -> None: ...
    def upstream_failed(self, kind: FailureKind) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...


class UpstreamConnection(asyncio.BufferedProtocol):
    """One TCP connection to an upstream, reused across exchanges while it stays healthy."""

    __slots__ = (
        "_clock",
        "body",
        "bound_at",
        "got_response_bytes",
        "head_only",
        "head_seen",
        "headers",
        "idle_since",
        "keep_alive",
        "last_read",
        "left",
        "parser",
        "paused",
        "pool",
        "reads",
        "reason",
        "served",
        "sink",
        "state",
        "status",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self._clock = pool.clock
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self.sink: ResponseSink | None = None  # the exchange served (WAITING_HEAD onwards)
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.keep_alive = False
        # Body bytes still to come of a response framed by Content-Length (-1: none, or not
        # framed so): once its head is parsed they are relayed as they arrive, unparsed.
        self.left = -1
        self.head_only = False
        self.body = ResponseBody.NONE
        self.paused = False  # reading paused: the client is not taking the response
        self.got_response_bytes = False
        self.head_seen = 0  # bytes received while waiting for the response head
        self.served = 0
        # Reads parsed so far, and how many there had been when the exchange served was bound:
        # one bound during a read (a pipelined request taking the connection back from the
        # pool as the previous response completes) cannot be answered by the rest of that read.
        self.reads = 0
        self.bound_at = -1
        self.idle_since = 0.0
        self.last_read = 0.0

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def get_buffer(self, sizehint: int) -> bytearray:
        reads = _READS
        return reads.take() if reads.lent else reads.buf

    def buffer_updated(self, nbytes: int) -> None:
        reads = _READS
        if nbytes >= VIEW_MIN:  # (only a view this large is ever handed on: see `_hand_on`)
            reads.lent = True
        self.data_received(memoryview(reads.buf)[:nbytes], reads.buf)

    def data_received(self, data: bytes | memoryview, whole: bytes | bytearray = b"") -> None:
        """A read: ``data``, bytes or (from `buffer_updated`) a view of ``whole``'s start."""
        self.last_read = self._clock.now
        sink = self.sink
        if self.left > 0 and sink is not None:
            self._relay(sink, data)
            return
        if self.state is UPGRADED:
            if sink is not None:
                sink.upstream_body(_hand_on(data))
            return
        if sink is None:
            # Bytes on an idle connection: the upstream is out of step with us. Never reuse it.
            self.close()
            return
        self.got_response_bytes = True
        self.reads += 1
        waiting = self.state is WAITING_HEAD
        parser = self.parser
        fed: bytes | memoryview = data
        at = 0  # where ``fed`` starts in ``data``
        try:
            if waiting:
                seen = self.head_seen
                self.head_seen = seen + len(data)
                if seen == 0 and len(data) > RELAY_MIN:
                    # The head begins a large read: parse up to its likely end first, so that
                    # a body framed by Content-Length after it is relayed without the parser
                    # copying it (`_relay`). Otherwise the same parser reads on from there:
                    # the same bytes in the same order as if it had been given the read whole.
                    scan = whole if whole else data
                    end = -1 if isinstance(scan, memoryview) else scan.find(_BLANK, 0, len(data))
                    end += 4
                    if 4 <= end < len(data):
                        view = memoryview(data)
                        parser.feed_data(view[:end])
                        fed, at = view[end:], end
                        if self.left > 0 and self.sink is sink:
                            self._relay(sink, fed)
                            return
            parser.feed_data(fed)
        except httptools.HttpParserUpgrade as exc:
            if self.sink is not sink:  # the exchange refused the 101 (and let go of us)
                self.close()
                return
            self.state = UPGRADED
            sink.upstream_upgraded(bytes(data[at + exc.args[0] :]))
            return
        except httptools.HttpParserError as exc:
            if self.sink is not None:
                cause = exc.__context__
                if isinstance(cause, UpstreamProtocolError):
                    logger.warning(
                        "upstream %s:%d: %s", self.pool.host, self.pool.port, cause
                    )  # fmt: skip
                self._fail("protocol")
            else:
                self.close()  # bytes after a complete response: out of step, never reuse
            return
        if waiting and self.state is WAITING_HEAD and self.head_seen > MAX_RESPONSE_HEAD:
            logger.warning(
                "upstream %s:%d: response head over %d bytes",
                self.pool.host, self.pool.port, MAX_RESPONSE_HEAD,
            )  # fmt: skip
            self._fail("protocol")
            return
        if self.state is STREAMING_BODY and self.sink is sink:
            # The response goes on in a later read: what the exchange holds of it goes out now.
            sink.upstream_read_done()

    def _relay(self, sink: ResponseSink, data: bytes | memoryview) -> None:
        """Body bytes of a response framed by Content-Length, ``left`` of them still due:
        relayed as they came. The parser, left waiting for them, is replaced once the body
        is whole; bytes after it (never relayed) mean the upstream is out of step: the
        connection closes after this response instead of going back to the pool."""
        left = self.left
        n = len(data)
        done = n >= left
        if done:
            self.left = -1
            self.parser = httptools.HttpResponseParser(self)
            if n > left:
                self.keep_alive = False
                data = data[:left]
                n = left
        else:
            self.left = left - n
        sink.upstream_body(_hand_on(data))
        if self.sink is sink:
            if done:
                self.sink = None
                sink.upstream_complete()
            else:
                sink.upstream_read_done()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost reports

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self.pool.forget(self)
        sink = self.sink
        # Let go of the parser (it holds this protocol's bound callbacks) and the transport (it
        # holds this protocol): the connection is freed by reference counting once the
        # exchange lets go of it, not left in cycles to the collector, which a `gc.freeze()`
        # of the heap (reload.py, after each swap) would have kept for good.
        self.parser = _SPENT_PARSER
        self.transport = None
        if sink is None:
            return
        if was is UPGRADED or self.body is ResponseBody.UNTIL_CLOSE:
            # A tunnel, or a response delimited by the close of the connection, has ended.
            self.sink = None
            sink.upstream_complete()
        else:
            self._fail("reset")

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(True)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.sink is None or self.bound_at == self.reads:
            raise UpstreamProtocolError("bytes after a complete response")

    def on_status(self, reason: bytes) -> None:
        # Called once per read the reason phrase spans: the pieces add up (reset at the head's end).
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= MAX_RESPONSE_HEADERS:
            raise UpstreamProtocolError(f"more than {MAX_RESPONSE_HEADERS} response headers")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self.sink
        reason, self.reason = self.reason, b""
        if sink is None:
            return
        status = self.status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # Interim responses (100, 103) are not forwarded: the proxy answered Expect itself.
            self.headers = []
            return
        keep = self.keep_alive = self.parser.should_keep_alive()
        headers, self.headers = self.headers, []
        if self.head_only or no_body_status(status):
            self.body = ResponseBody.NONE
        else:
            self.body, length = _framing(headers)
            if length >= RELAY_MIN:
                self.left = length
        self.state = STREAMING_BODY
        sink.upstream_head(status, reason, headers, keep)
        if self.head_only and status >= 200 and self.sink is sink:
            # llhttp cannot be told that a response answers HEAD: it would wait for the
            # Content-Length bytes that never come. End the exchange here and start the next
            # response on a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.sink = None
            sink.upstream_complete()

    def on_body(self, body: bytes) -> None:
        if self.left > 0:
            self.left -= len(body)
        sink = self.sink
        if sink is not None:
            sink.upstream_body(body)

    def on_message_complete(self) -> None:
        self.left = -1
        if self.headers:
            # Trailer fields of a chunked body: dropped (the Trailer header is hop-by-hop),
            # and never carried into the next response's head.
            self.headers = []
        sink = self.sink
        if sink is None or self.status < 200 or self.status == 101:
            return
        self.sink = None
        sink.upstream_complete()

    # -- used by the exchange ----------------------------------------------------------------
    def bind(self, sink: ResponseSink, head_only: bool) -> None:
        """Start serving an exchange: its response will be reported to ``sink``."""
        self.sink = sink
        self.state = WAITING_HEAD
        self.head_only = head_only
        self.status = 0
        self.body = ResponseBody.NONE
        self.left = -1
        self.got_response_bytes = False
        self.head_seen = 0
        self.served += 1
        self.bound_at = self.reads
        self.last_read = self._clock.now

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:  # (None once lost: what a lost transport did, drop it)
            transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        transport = self.transport
        if transport is not None:
            transport.writelines(data)

    def pause_reading(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """The exchange is done: back to the pool if the connection can carry another."""
        self.sink = None
        state = self.state
        if (
            self.keep_alive
            and (state is STREAMING_BODY or state is IDLE)
            and self.status >= 200  # (a 101 is below: an upgraded connection is never reused)
        ):
            self.state = IDLE
            if self.paused:  # idle connections must read: that is how a close is noticed
                self.resume_reading()
            self.pool.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and self.state is not CLOSED:
            self.transport.close()
        self.state = CLOSED
        self.pool.forget(self)

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None and self.state is not CLOSED:
            self.transport.abort()
        self.state = CLOSED
        self.pool.forget(self)

    def _fail(self, kind: FailureKind) -> None:
        sink = self.sink
        self.close()
        if sink is not None:
            sink.upstream_failed(kind)

    def __repr__(self) -> str:
        return (
            f"<UpstreamConnection {self.pool.host}:{self.pool.port} {self.state.name.lower()} "
            f"served={self.served}>"
        )


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[ResponseBody, int]:
    """Where the response body ends: FRAMED by Content-Length or chunked, else UNTIL_CLOSE;
    and the Content-Length when it frames the body (else -1).

    A transfer coding other than ``chunked`` (``xchunked``, ``gzip, chunked``) cannot be
    relayed without decoding or telling the client: refused (the caller answers 502). (The
    parser has refused a malformed or repeated Content-Length, and one beside
    Transfer-Encoding, before this is called.)"""
    framed = False
    chunked = False
    length = -1
    for name, value in headers:
        n = len(name)
        if n == 14 or n == 17:
            lname = name.lower()
            if lname == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise UpstreamProtocolError(f"unsupported transfer coding {value[:64]!r}")
                framed = chunked = True
            elif lname == b"content-length":
                framed = True
                length = int(value)
    if not framed:
        return ResponseBody.UNTIL_CLOSE, -1
    return ResponseBody.FRAMED, -1 if chunked else length
