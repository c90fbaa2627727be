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
from splitproxy.dataplane.http11 import ResponseBody
from splitproxy.dataplane.upstream_head import HeadError, read_head

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
        "head_at",
        "head_only",
        "head_pieces",
        "head_seen",
        "idle_since",
        "keep_alive",
        "last_read",
        "left",
        "parser",
        "paused",
        "pool",
        "read",
        "read_len",
        "reads",
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
        # made once connected: a parser holds this protocol's bound callbacks, a cycle, and a
        # protocol whose connect fails is dropped without `connection_lost` to break it
        self.parser = _SPENT_PARSER
        self.state = IDLE
        self.sink: ResponseSink | None = None  # the exchange served (WAITING_HEAD onwards)
        # The read being parsed while a response head is awaited (``read_len`` bytes of it), where
        # the next head begins in it, and the pieces of a head begun in earlier reads: the head's
        # lines are taken from these bytes when llhttp has found its end (`on_headers_complete`),
        # not piece by piece from llhttp's callbacks (a Python call per header line).
        self.read: bytes | bytearray = b""
        self.read_len = 0
        self.head_at = 0
        self.head_pieces: list[bytes] = []
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
        self.parser = httptools.HttpResponseParser(self)

    def get_buffer(self, sizehint: int) -> bytearray:
        reads = _READS
        return reads.take() if reads.lent else reads.buf

    def data_received(self, data: bytes) -> None:
        """A read as bytes (the loop reads into `get_buffer`'s instead)."""
        self.buffer_updated(len(data), data)

    def buffer_updated(self, nbytes: int, read: bytes | None = None) -> None:
        """A read: ``nbytes`` at the start of the read buffer, or ``read`` (`data_received`).
        (One Python call per read: the loop's path does not go through `data_received`.)"""
        data: bytes | memoryview
        whole: bytes | bytearray
        if read is None:
            reads = _READS
            whole = reads.buf
            if nbytes >= VIEW_MIN:  # (only a view this large is ever handed on: `_hand_on`)
                reads.lent = True
            data = memoryview(whole)[:nbytes]
        else:
            data = whole = read
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
                # (what `on_headers_complete` reads: bytes or the read buffer, never a view)
                scan = self.read = whole
                self.read_len = nbytes
                self.head_at = 0
                seen = self.head_seen
                self.head_seen = seen + nbytes
                if seen == 0 and nbytes > RELAY_MIN:
                    # The head begins a large read: parse up to its likely end first, so that
                    # a body framed by Content-Length after it is relayed without the parser
                    # copying it (`_relay`). Otherwise the same parser reads on from there:
                    # the same bytes in the same order as if it had been given the read whole.
                    end = scan.find(_BLANK, 0, nbytes)
                    end += 4
                    if 4 <= end < nbytes:
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
        if waiting and self.state is WAITING_HEAD:
            if self.head_seen > MAX_RESPONSE_HEAD:
                logger.warning(
                    "upstream %s:%d: response head over %d bytes",
                    self.pool.host, self.pool.port, MAX_RESPONSE_HEAD,
                )  # fmt: skip
                self._fail("protocol")
                return
            if self.sink is sink:
                # The head goes on in the next read: keep what this one has of it (a copy: the
                # read buffer is reused). At most MAX_RESPONSE_HEAD bytes, by the test above.
                self.head_pieces.append(bytes(self.read[self.head_at : self.read_len]))
            self.read = b""  # (never keep a read buffer alive past its read)
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

    # (No ``on_status`` nor ``on_header``: httptools calls only the callbacks a protocol has,
    # and without them llhttp still checks every line of the head but makes no Python call
    # per line. `on_headers_complete` takes the lines from the bytes read instead.)

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            return
        read = self.read
        n = self.read_len
        at = self.head_at
        pieces = self.head_pieces
        if pieces:  # the head began in an earlier read (rare): read it from a copy of all
            pieces.append(bytes(read[:n]))
            read = b"".join(pieces)
            self.head_pieces = []
            at = 0
            n = len(read)
            base = n - self.read_len  # where this read begins in the copy
        else:
            base = 0
        while read[at] == 13 or read[at] == 10:  # llhttp skips line ends before a message
            at += 1
        # llhttp has accepted the head: every line of it ends in CRLF and no CR stands alone,
        # so the first blank line after the status line is its end
        end = read.find(_BLANK, at, n)
        if end < 0:  # (cannot be, as said: never guess at a head)
            raise UpstreamProtocolError("response head without its end")
        self.head_at = end + 4 - base  # where the next message would begin in this read
        status = self.status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # Interim responses (100, 103) are not forwarded: the proxy answered Expect itself.
            if read.count(b"\r\n", at, end) > MAX_RESPONSE_HEADERS:  # (one per header line)
                raise UpstreamProtocolError(f"more than {MAX_RESPONSE_HEADERS} response headers")
            return
        self.read = b""
        try:
            reason, headers, body, length, unsupported = read_head(
                bytes(read[at:end]), status, MAX_RESPONSE_HEADERS
            )
        except HeadError as exc:
            raise UpstreamProtocolError(*exc.args) from None
        keep = self.keep_alive = self.parser.should_keep_alive()
        # (`http11.no_body_status`, inline: this runs for every response)
        if self.head_only or status < 200 or status == 204 or status == 304:
            self.body = ResponseBody.NONE
        else:
            if unsupported:
                raise UpstreamProtocolError(unsupported)
            self.body = body
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
            if self.head_at < self.read_len:
                # More bytes in this read: no response may follow an answer to HEAD unasked
                # (the old parser would have taken them for the body that never comes).
                raise UpstreamProtocolError("bytes after a complete response")

    def on_body(self, body: bytes) -> None:
        if self.left > 0:
            self.left -= len(body)
        sink = self.sink
        if sink is not None:
            sink.upstream_body(body)

    def on_message_complete(self) -> None:
        # (Trailer fields of a chunked body are dropped: no callback ever makes them.)
        self.left = -1
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
        if self.head_pieces:
            self.head_pieces = []
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
