"""An upstream connection's states, driven with bytes on a mock transport (no socket)."""

from __future__ import annotations

import pytest

from splitproxy.config.vocabulary import FailureKind
from splitproxy.dataplane.context import CoarseClock
from splitproxy.dataplane.pools import UpstreamPool
from splitproxy.dataplane.upstream import UpstreamConnection, UpstreamState
from tests.unit.dataplane.harness import MockTransport, attach


class Sink:
    """Records what the connection reports, as an exchange would receive it."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        self.body = bytearray()
        self.complete = 0
        self.reads_done = 0
        self.upgraded: list[bytes] = []
        self.failed: list[FailureKind] = []
        self.writable: list[bool] = []

    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.heads.append((status, headers))

    def upstream_body(self, data: bytes | memoryview) -> None:
        self.body += data

    def upstream_read_done(self) -> None:
        self.reads_done += 1

    def upstream_complete(self) -> None:
        self.complete += 1

    def upstream_upgraded(self, rest: bytes) -> None:
        self.upgraded.append(rest)

    def upstream_failed(self, kind: FailureKind) -> None:
        self.failed.append(kind)

    def upstream_writable(self, writable: bool) -> None:
        self.writable.append(writable)


@pytest.fixture
def pool() -> UpstreamPool:
    return UpstreamPool("up.test", 80, CoarseClock(5.0), connect_timeout=1.0, idle_timeout=4.0)


def state(up: UpstreamConnection) -> UpstreamState:
    """The state now (a call, so that the type checker does not carry an earlier check over)."""
    return up.state


def connected(pool: UpstreamPool) -> tuple[UpstreamConnection, MockTransport]:
    up = UpstreamConnection(pool)
    transport = MockTransport(("up.test", 80))
    attach(up, transport)
    return up, transport


def test_a_response_moves_the_connection_through_its_states(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    assert state(up) is UpstreamState.IDLE
    sink = Sink()
    up.bind(sink, head_only=False)
    assert state(up) is UpstreamState.WAITING_HEAD
    up.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: not forwarded
    assert state(up) is UpstreamState.WAITING_HEAD
    assert sink.heads == []
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: 1\r\n\r\nab")
    assert state(up) is UpstreamState.STREAMING_BODY
    assert sink.heads == [(200, [(b"Content-Length", b"4"), (b"X-A", b"1")])]
    up.data_received(b"cd")
    assert sink.complete == 1
    assert bytes(sink.body) == b"abcd"
    up.release()
    assert state(up) is UpstreamState.IDLE
    assert pool.take_idle() is up


def test_a_head_response_ends_at_its_head(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=True)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert sink.complete == 1
    up.release()
    # the next response is parsed from scratch, not as the 1000 bytes the HEAD announced
    second = Sink()
    up.bind(second, head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (second.complete, bytes(second.body)) == (1, b"ok")


def test_a_close_delimited_body_ends_when_the_upstream_closes(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    up.connection_lost(None)
    assert (sink.complete, sink.failed) == (1, [])
    assert state(up) is UpstreamState.CLOSED


def test_a_close_before_the_end_is_a_reset(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)
    assert (sink.complete, sink.failed) == (0, ["reset"])
    assert state(up) is UpstreamState.CLOSED


def test_garbage_is_a_protocol_failure(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert sink.failed == ["protocol"]
    assert state(up) is UpstreamState.CLOSED
    assert transport.closed


def test_an_upgrade_relays_raw_bytes_and_is_never_pooled(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    assert state(up) is UpstreamState.UPGRADED
    assert sink.upgraded == [b"\x81\x02hi"]
    up.data_received(b"\x81\x01!")
    assert bytes(sink.body) == b"\x81\x01!"
    up.connection_lost(None)
    assert sink.complete == 1
    assert state(up) is UpstreamState.CLOSED
    assert pool.take_idle() is None


def test_bytes_on_an_idle_connection_close_it(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    pool.put_idle(up)
    up.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert state(up) is UpstreamState.CLOSED
    assert transport.closed
    assert pool.take_idle() is None


def test_a_response_that_says_close_is_not_pooled(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    up.bind(Sink(), head_only=False)
    up.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    up.release()
    assert state(up) is UpstreamState.CLOSED
    assert transport.closed


def test_a_paused_connection_reads_again_when_it_goes_idle(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    up.bind(Sink(), head_only=False)
    up.pause_reading()
    assert not transport.reading
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    up.release()
    assert transport.reading  # idle connections read: that is how a close is noticed


def test_write_buffer_pressure_is_reported_to_the_exchange(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    transport.hold = True
    transport.high_water = 10
    up.write(b"x" * 11)
    transport.drain()
    assert sink.writable == [False, True]


def test_idle_pooled_connections_are_closed_after_the_idle_timeout(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    pool.put_idle(up)  # at 5.0 on the pool's clock; idle_timeout 4.0
    pool.clock.now = 8.9
    pool.sweep()
    assert pool.idle_count == 1
    pool.clock.now = 9.1
    pool.sweep()
    assert pool.idle_count == 0
    assert transport.closed
    assert pool.take_idle() is None
