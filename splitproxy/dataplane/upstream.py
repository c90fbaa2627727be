"""Upstream side of the data path: raw HTTP/1.1 connections and a keep-alive pool per address.

An `UpstreamConnection` is an asyncio protocol parsed by httptools' response parser. It serves
one exchange at a time (its `sink`), forwarding the response head, body and end to it; between
exchanges it sits idle in its `UpstreamPool`. The pool hands out the most recently used idle
connection (warm, and the one least likely to have been closed by the upstream), closes idle
ones before the upstream would (``idle_timeout``), and drops any that the upstream closes
while idle, so a request never meets a dead pooled connection it could have avoided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from splitproxy.dataplane.http11 import no_body_status


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange it serves."""

    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_upgraded(self, rest: bytes) -> None: ...
    def upstream_failed(self, kind: str) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...


class Clock(Protocol):
    """A coarse clock the pool and connections stamp activity with."""

    now: float


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream, reused across exchanges while it stays healthy."""

    __slots__ = (
        "_clock",
        "body_mode",
        "closed",
        "got_response_bytes",
        "head_only",
        "headers",
        "idle_since",
        "keep_alive",
        "last_read",
        "parser",
        "paused",
        "pool",
        "reason",
        "served",
        "sink",
        "status",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self._clock = pool.clock
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.keep_alive = False
        self.head_only = False
        self.body_mode = 0  # 0 none, 1 framed by the parser, 2 until the upstream closes
        self.tunnel = False
        self.paused = False  # reading paused: the client is not taking the response
        self.closed = False
        self.got_response_bytes = False
        self.served = 0
        self.idle_since = 0.0
        self.last_read = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.last_read = self._clock.now
        sink = self.sink
        if self.tunnel:
            if sink is not None:
                sink.upstream_body(data)
            return
        if sink is None:
            # Bytes on an idle connection: the upstream is out of step with us. Never reuse it.
            self.close()
            return
        self.got_response_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            sink.upstream_upgraded(data[exc.args[0] :])
        except httptools.HttpParserError:
            if self.sink is not None:
                self._fail("protocol")
            else:
                self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost reports

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink = self.sink
        if sink is None:
            return
        if self.tunnel:
            self.sink = None
            sink.upstream_complete()
        elif self.body_mode == 2:
            # A response delimited by the close of the connection has ended.
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
    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self.sink
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
            self.body_mode = 0
        else:
            self.body_mode = 1 if _framed(headers) else 2
        sink.upstream_head(status, self.reason, headers, keep)
        if self.head_only and status >= 200 and self.sink is sink:
            # llhttp cannot be told that a response answers HEAD: it would wait for the
            # Content-Length bytes that never come. End the exchange here and start the next
            # response on a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.sink = None
            sink.upstream_complete()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_body(body)

    def on_message_complete(self) -> None:
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
        self.head_only = head_only
        self.status = 0
        self.body_mode = 0
        self.got_response_bytes = False
        self.served += 1
        self.last_read = self._clock.now

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """The exchange is done: back to the pool if the connection can carry another."""
        self.sink = None
        if self.keep_alive and not self.closed and not self.tunnel and self.status >= 200:
            if self.paused:  # idle connections must read: that is how a close is noticed
                self.resume_reading()
            self.pool.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool.forget(self)

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self.pool.forget(self)

    def _fail(self, kind: str) -> None:
        sink = self.sink
        self.close()
        if sink is not None:
            sink.upstream_failed(kind)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.sink else "idle")
        return (
            f"<UpstreamConnection {self.pool.host}:{self.pool.port} {state} served={self.served}>"
        )


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Does the response say where its body ends (Content-Length or chunked)?"""
    for name, _ in headers:
        n = len(name)
        if n == 14 or n == 17:
            lname = name.lower()
            if lname == b"content-length" or lname == b"transfer-encoding":
                return True
    return False


class PoolExhausted(Exception):
    """The upstream's connection limit is reached and no idle connection is free."""


class UpstreamPool:
    """Keep-alive connections to one upstream address."""

    def __init__(
        self,
        host: str,
        port: int,
        clock: Clock,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_connections: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._connecting = 0
        self.closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used live idle connection, or None."""
        idle = self._idle
        deadline = self.clock.now - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
                continue
            return conn
        return None

    def at_limit(self) -> bool:
        return 0 < self.max_connections <= len(self._open) + self._connecting

    async def connect(self) -> UpstreamConnection:
        """Open a new connection; raises OSError, TimeoutError or PoolExhausted."""
        if self.at_limit():
            raise PoolExhausted(f"{self.host}:{self.port}")
        loop = asyncio.get_running_loop()
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(factory, self.host, self.port)
        finally:
            self._connecting -= 1
        if self.closed:
            conn.close()
            raise ConnectionAbortedError("pool closed")
        self._open.add(conn)
        return conn

    def put_idle(self, conn: UpstreamConnection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.clock.now
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        # A connection the upstream closed while idle is skipped by take_idle (conn.closed).

    def sweep(self) -> None:
        """Close idle connections that have waited longer than ``idle_timeout``."""
        deadline = self.clock.now - self.idle_timeout
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        """Close every connection: idle ones now, busy ones as they finish."""
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle = []

    def abort_all(self) -> None:
        self.close()
        for conn in list(self._open):
            conn.abort()

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.host}:{self.port} open={self.open_count} idle={self.idle_count}>"
        )


class PoolRegistry:
    """One pool per upstream address, shared by every route that names it."""

    def __init__(
        self,
        clock: Clock,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_connections: int = 0,
    ) -> None:
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.pools: dict[tuple[str, int], UpstreamPool] = {}

    def get(self, key: tuple[str, int]) -> UpstreamPool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                key[0],
                key[1],
                self.clock,
                connect_timeout=self.connect_timeout,
                idle_timeout=self.idle_timeout,
                max_connections=self.max_connections,
            )
        return pool

    def retain_only(self, keys: set[tuple[str, int]]) -> list[UpstreamPool]:
        """Detach pools whose address no route names any more; the caller closes them
        after a grace period so requests still using them can finish."""
        removed = [pool for key, pool in self.pools.items() if key not in keys]
        for pool in removed:
            del self.pools[(pool.host, pool.port)]
        return removed

    def sweep(self) -> None:
        for pool in self.pools.values():
            pool.sweep()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def abort_all(self) -> None:
        for pool in self.pools.values():
            pool.abort_all()
