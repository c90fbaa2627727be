"""The HTTP core without sockets: mock transports driven with bytes, a clock moved by hand.

`MockTransport` records what a protocol writes and how it pauses, resumes and closes, and
models a write buffer (``high_water``: a write past it calls ``pause_writing``; `drain`
empties it and calls ``resume_writing``). `Proxy` builds a `ProxyContext` like the server
does, with `ScriptedPool`s whose ``connect`` hands out upstream connections on mock
transports (or raises what a test queued), so `ClientConnection`, `Exchange` and
`UpstreamConnection` run as in production, minus the network. Time moves only through
`Proxy.sweep`, which is what the server's sweeper calls.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import yaml

from splitproxy.config import parse_routing
from splitproxy.config.vocabulary import FailureKind, Version
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.context import CoarseClock, ProxyContext
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.pools import PoolRegistry, UpstreamPool
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.dataplane.upstream import UpstreamConnection

START = 1000.0
STABLE_URL = "http://stable.test:8080"
CANDIDATE_URL = "http://candidate.test:8080"


class MockTransport:
    """Stands in for an asyncio transport: records writes, pauses, closes."""

    def __init__(self, peer: tuple[str, int] = ("203.0.113.7", 50000)) -> None:
        self.protocol: asyncio.BaseProtocol | None = None
        self.peer = peer
        self.written = bytearray()
        self.calls: list[bytes] = []  # what each write / writelines call carried
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024
        self.buffered = 0  # bytes "in the kernel": not yet taken by the peer
        self.hold = False  # the peer does not read: writes stay buffered
        self.writing_paused = False

    # -- the transport interface the proxy uses ------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(bytes(data))
        self._put(data)

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data
        if self.hold:
            self.buffered += len(data)
            if self.buffered > self.high_water and not self.writing_paused:
                self.writing_paused = True
                assert self.protocol is not None
                self.protocol.pause_writing()

    def writelines(self, lines: list[bytes]) -> None:
        self.calls.append(b"".join(lines))  # one call: one writev on a real transport
        for data in lines:
            self._put(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high_water = high
        if low is not None:
            self.low_water = low

    def get_write_buffer_size(self) -> int:
        return self.buffered

    # -- for the tests ---------------------------------------------------------------------
    def take(self) -> bytes:
        """What was written since the last call."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def drain(self) -> None:
        """The peer read everything buffered (and reads from now on)."""
        self.hold = False
        self.buffered = 0
        if self.writing_paused:
            self.writing_paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()


def attach(protocol: asyncio.BaseProtocol, transport: MockTransport) -> None:
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]


class ScriptedPool(UpstreamPool):
    """A pool whose new connections are mock ones; ``failures`` are raised first, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: deque[BaseException] = deque()
        self.opened: list[tuple[UpstreamConnection, MockTransport]] = []

    async def connect(self) -> UpstreamConnection:
        if self.failures:
            raise self.failures.popleft()
        if self.at_limit():
            return await super().connect()  # raises PoolExhausted
        up = UpstreamConnection(self)
        transport = MockTransport((self.host, self.port))
        attach(up, transport)
        self._open.add(up)
        self.opened.append((up, transport))
        return up


class Recorder:
    """An `ExchangeObserver` that keeps what it saw."""

    def __init__(self) -> None:
        self.started: list[Exchange] = []
        self.finished: list[Exchange] = []
        self.failed: list[tuple[Version, FailureKind]] = []

    def exchange_started(self, ex: Exchange) -> None:
        self.started.append(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        self.finished.append(ex)

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        self.failed.append((version, kind))


def one_route(candidate: bool = False, weight: float = 0, **fields: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "app", "stable": STABLE_URL, **fields}
    if candidate:
        route["candidate"] = CANDIDATE_URL
        route["weight"] = weight
    return {"routes": [route]}


class Proxy:
    """A `ProxyContext` as the server builds it, with scripted pools and a hand-moved clock."""

    def __init__(self, routes: dict[str, Any] | None = None, **settings: Any) -> None:
        text = yaml.safe_dump(routes or one_route(), sort_keys=False)
        self.state = RuntimeState()
        self.state.load(parse_routing(text), content_hash(text), START)
        self.clock = CoarseClock(START)
        self.pools = PoolRegistry(self.clock, connect_timeout=1.0, idle_timeout=4.0)
        for url in (STABLE_URL, CANDIDATE_URL):
            host, port = url.removeprefix("http://").split(":")
            key = (host, int(port))
            self.pools.pools[key] = ScriptedPool(
                host,
                int(port),
                self.clock,
                connect_timeout=1.0,
                idle_timeout=4.0,
                max_connections=settings.pop("max_upstream_connections", 0),
            )
        self.observer = Recorder()
        options: dict[str, Any] = {
            "header_timeout": 10.0,
            "body_timeout": 60.0,
            "read_timeout": 60.0,
            "client_idle_timeout": 75.0,
            "max_header_bytes": 32 * 1024,
            "max_headers": 100,
            "max_body_bytes": 0,
        }
        options.update(settings)
        self.now = START
        self.ctx = ProxyContext(
            self.state, self.pools, self.observer, self.clock, monotonic=self._now, **options
        )
        self.state.subscribe(self.ctx.on_swap)

    def _now(self) -> float:
        return self.now

    def pool(self, url: str = STABLE_URL) -> ScriptedPool:
        host, port = url.removeprefix("http://").split(":")
        pool = self.pools.pools[(host, int(port))]
        assert isinstance(pool, ScriptedPool)
        return pool

    def client(self, peer: tuple[str, int] = ("203.0.113.7", 50000)) -> Client:
        conn = ClientConnection(self.ctx)
        transport = MockTransport(peer)
        attach(conn, transport)
        return Client(conn, transport)

    def sweep(self, seconds: float) -> None:
        """Let ``seconds`` pass on the proxy's clock and run the sweeper once."""
        self.now += seconds
        self.ctx.sweep(self.now)

    def tick(self, seconds: float) -> None:
        """Let time pass without a sweep (bytes that arrive now are stamped with it)."""
        self.now += seconds
        self.clock.now = self.now

    async def upstream(self, url: str = STABLE_URL, n: int = 1) -> Upstream:
        """The ``n``-th connection opened to ``url`` (waits for the connect task to run)."""
        pool = self.pool(url)
        for _ in range(20):
            if len(pool.opened) >= n:
                break
            await asyncio.sleep(0)
        assert len(pool.opened) >= n, f"only {len(pool.opened)} connections to {url}"
        up, transport = pool.opened[n - 1]
        return Upstream(up, transport)


class Client:
    """A client connection on a mock transport."""

    def __init__(self, conn: ClientConnection, transport: MockTransport) -> None:
        self.conn = conn
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    async def settle(self) -> None:
        """Let the exchange's connect task (if any) run."""
        for _ in range(5):
            await asyncio.sleep(0)


class Upstream:
    """An upstream connection on a mock transport."""

    def __init__(self, conn: UpstreamConnection, transport: MockTransport) -> None:
        self.conn = conn
        self.transport = transport

    def reply(self, data: bytes) -> None:
        self.conn.data_received(data)

    def lost(self) -> None:
        self.transport.closed = True
        self.conn.connection_lost(None)


def get(path: str = "/", host: str = "app.test", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra)


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    return head, body


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def header(head: bytes, name: str) -> str | None:
    lname = name.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == lname:
            return v.strip().decode("latin-1")
    return None


def error_body(data: bytes, status: int, code: str) -> dict[str, str]:
    """A proxy error response: status, JSON error body, request id in header and body."""
    head, body = split_response(data)
    assert status_of(head) == status, data
    assert header(head, "Content-Type") == "application/json"
    err: dict[str, str] = json.loads(body)["error"]
    assert err["code"] == code
    assert err["request_id"] == header(head, "X-Request-ID")
    assert err["request_id"]
    return err


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body and whether its last chunk arrived."""
    out = bytearray()
    rest = body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out), True
        out += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    return bytes(out), False
