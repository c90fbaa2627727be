"""A body framed by Content-Length is relayed unparsed (`UpstreamConnection._relay`): the same
bytes, the same ends and failures as when the parser reads all of it, however reads split."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane import upstream
from splitproxy.dataplane.context import CoarseClock
from splitproxy.dataplane.pools import UpstreamPool
from splitproxy.dataplane.upstream import (
    RELAY_MIN,
    VIEW_MIN,
    UpstreamConnection,
    UpstreamState,
)
from tests.unit.dataplane.harness import (
    STABLE_URL,
    MockTransport,
    Proxy,
    attach,
    get,
    one_route,
    split_response,
    status_of,
)
from tests.unit.dataplane.test_upstream import Sink

BIG = RELAY_MIN + 1000


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def connected(pool: UpstreamPool) -> tuple[UpstreamConnection, MockTransport]:
    up = UpstreamConnection(pool)
    transport = MockTransport(("up.test", 80))
    attach(up, transport)
    return up, transport


@pytest.fixture
def pool() -> UpstreamPool:
    return UpstreamPool("up.test", 80, CoarseClock(5.0), connect_timeout=1.0, idle_timeout=4.0)


def body_of(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def test_a_body_over_many_reads_is_relayed_whole_and_the_next_response_is_parsed(
    pool: UpstreamPool,
) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    body = body_of(BIG * 3)
    wire = ok(body)
    for at in range(0, len(wire), 1000):
        up.data_received(wire[at : at + 1000])
    assert (bytes(sink.body), sink.complete, sink.failed) == (body, 1, [])
    up.release()
    assert pool.take_idle() is up
    second = Sink()
    up.bind(second, head_only=False)
    up.data_received(ok(b"small"))
    assert (bytes(second.body), second.complete, second.failed) == (b"small", 1, [])


def test_a_body_and_the_next_bytes_in_one_read_end_the_connection(pool: UpstreamPool) -> None:
    up, transport = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    body = body_of(BIG)
    up.data_received(ok(body) + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")
    assert (bytes(sink.body), sink.complete, sink.failed) == (body, 1, [])
    up.release()
    assert up.state is UpstreamState.CLOSED
    assert transport.closed
    assert pool.take_idle() is None


def test_the_next_bytes_after_a_body_that_spanned_reads_end_the_connection(
    pool: UpstreamPool,
) -> None:
    up, transport = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    body = body_of(BIG)
    wire = ok(body)
    up.data_received(wire[:100])
    up.data_received(wire[100:] + b"X")
    assert (bytes(sink.body), sink.complete) == (body, 1)
    up.release()
    assert transport.closed
    assert pool.take_idle() is None


def test_a_short_body_then_a_close_is_a_reset(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    body = body_of(BIG)
    up.data_received(ok(body)[: -RELAY_MIN // 2])
    up.connection_lost(None)
    assert (sink.complete, sink.failed) == (0, ["reset"])
    assert len(sink.body) == BIG - RELAY_MIN // 2


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_announcing_a_length_end_at_their_head(
    pool: UpstreamPool, status: int
) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, BIG))
    assert sink.complete == 1
    up.release()
    second = Sink()
    up.bind(second, head_only=False)
    up.data_received(ok(body_of(BIG)))
    assert (bytes(second.body), second.complete) == (body_of(BIG), 1)


def test_a_head_response_announcing_a_large_body_ends_at_its_head(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=True)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
    assert (sink.complete, bytes(sink.body)) == (1, b"")
    up.release()
    second = Sink()
    up.bind(second, head_only=False)
    up.data_received(ok(body_of(BIG)))
    assert (bytes(second.body), second.complete) == (body_of(BIG), 1)


def test_an_interim_response_before_a_large_body_in_one_read(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Sink()
    up.bind(sink, head_only=False)
    up.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(body_of(BIG)))
    assert [status for status, _ in sink.heads] == [200]
    assert (bytes(sink.body), sink.complete) == (body_of(BIG), 1)


async def test_the_client_gets_the_bytes_and_a_short_body_counts_against_its_version() -> None:
    proxy = Proxy(one_route(candidate=True, weight=100))
    client = proxy.client()
    body = body_of(BIG * 2)
    up_pool = proxy.pool("http://candidate.test:8080")
    up, transport = connected(up_pool)
    up_pool._open.add(up)
    up_pool.put_idle(up)
    client.send(get())
    assert transport.take().startswith(b"GET / HTTP/1.1\r\n")
    up.data_received(ok(body, b"X-A: 1\r\n"))
    head, got = split_response(client.transport.take())
    assert status_of(head) == 200
    assert got == body
    # the next request, on the same upstream connection: a body cut short
    client.send(get())
    assert pool_state(up) is UpstreamState.WAITING_HEAD
    up.data_received(ok(body)[:-BIG])
    up.connection_lost(None)
    assert client.transport.aborted
    first, second = proxy.observer.finished
    assert (first.version, first.status, first.error_kind) == ("candidate", 200, "")
    assert (second.version, second.error_kind) == ("candidate", "reset")
    assert second.bytes_out == len(body) - BIG
    assert STABLE_URL not in second.upstream_url


def pool_state(up: UpstreamConnection) -> UpstreamState:
    return up.state


responses = st.lists(
    st.one_of(
        st.integers(0, 3 * RELAY_MIN).map(lambda n: ("length", n)),
        st.integers(0, 3 * RELAY_MIN).map(lambda n: ("chunked", n)),
        st.sampled_from([("interim", 0), ("no-body", 0)]),
    ),
    min_size=1,
    max_size=4,
)


def wire_of(kind: str, n: int) -> bytes:
    body = body_of(n)
    if kind == "length":
        return ok(body)
    if kind == "chunked":
        chunks = b"%x\r\n%s\r\n" % (n, body) if n else b""
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % chunks
    if kind == "interim":
        return b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"after hints")
    return b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % BIG


def read(up: UpstreamConnection, data: bytes, buffered: bool) -> None:
    """One read, as a plain protocol gets it or as the loop fills the proxy's buffer."""
    if not buffered:
        up.data_received(data)
        return
    buf = up.get_buffer(-1)
    assert len(buf) >= len(data)
    buf[: len(data)] = data
    up.buffer_updated(len(data))


def run(
    script: list[tuple[str, int]],
    cuts: list[int],
    extra: bytes,
    cut_short: bool,
    buffered: bool = False,
) -> list[tuple[object, ...]]:
    """Each response served on one connection, its bytes in reads cut at ``cuts``; what the
    sinks saw and what became of the connection."""
    pool = UpstreamPool("up.test", 80, CoarseClock(5.0), connect_timeout=1.0, idle_timeout=4.0)
    up, transport = connected(pool)
    seen: list[tuple[object, ...]] = []
    for i, (kind, n) in enumerate(script):
        last = i == len(script) - 1
        sink = Sink()
        up.bind(sink, head_only=False)
        wire = wire_of(kind, n)
        if last:
            wire = wire[: len(wire) // 2] if cut_short else wire + extra
        marks = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
        for a, b in itertools.pairwise(marks):
            if up.state is not UpstreamState.CLOSED:
                read(up, wire[a:b], buffered)
        if last and cut_short and up.state is not UpstreamState.CLOSED:
            up.connection_lost(None)
        seen.append(([s for s, _ in sink.heads], bytes(sink.body), sink.complete, sink.failed))
        if sink.complete:
            up.release()
        if up.state is UpstreamState.CLOSED:
            break
    seen.append((up.state, transport.closed, pool.take_idle() is up))
    return seen


@settings(max_examples=150, deadline=None)
@given(
    responses,
    st.lists(st.integers(0, 5 * VIEW_MIN), max_size=6),
    st.sampled_from([b"", b"X", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"]),
    st.booleans(),
    st.booleans(),
)
def test_relaying_unparsed_is_the_parsers_answer(
    script: list[tuple[str, int]],
    cuts: list[int],
    extra: bytes,
    cut_short: bool,
    buffered: bool,
) -> None:
    fast = run(script, cuts, extra, cut_short, buffered)
    with mock.patch.object(upstream, "RELAY_MIN", 1 << 60):  # every byte through the parser
        full = run(script, cuts, extra, cut_short)
    assert fast == full


@pytest.mark.parametrize("size", [3, BIG], ids=["parsed", "relayed"])
async def test_bytes_after_a_response_are_never_the_answer_to_a_pipelined_request(
    size: int,
) -> None:
    proxy = Proxy()
    client = proxy.client()
    pool = proxy.pool()
    up, transport = connected(pool)
    pool._open.add(up)
    pool.put_idle(up)
    client.send(get("/one") + get("/two"))
    await client.settle()
    assert transport.take().count(b"GET ") == 1
    # the answer to /one, and an answer nobody asked for yet, in one read
    up.data_received(ok(body_of(size)) + ok(b"smuggle"))
    await client.settle()
    answers = client.transport.take()
    assert b"smuggle" not in answers
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n")
    assert pool_state(up) is UpstreamState.CLOSED
    assert pool.take_idle() is not up


class Keeper(Sink):
    """A sink that keeps what it is given, views included (as a transport that could not
    write them at once does)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytes | memoryview] = []

    def upstream_body(self, data: bytes | memoryview) -> None:
        super().upstream_body(data)
        self.kept.append(data)


def test_a_read_still_held_as_a_view_is_never_overwritten(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Keeper()
    up.bind(sink, head_only=False)
    body = body_of(6 * VIEW_MIN)
    wire = ok(body)
    first = up.get_buffer(-1)
    reads = [wire[: 2 * VIEW_MIN], wire[2 * VIEW_MIN : 4 * VIEW_MIN], wire[4 * VIEW_MIN :]]
    for data in reads:
        read(up, data, buffered=True)
    assert sink.complete == 1
    assert any(isinstance(k, memoryview) for k in sink.kept)  # handed on uncopied
    assert b"".join(bytes(k) for k in sink.kept) == body  # none overwritten by a later read
    assert up.get_buffer(-1) is not first  # still pinned: the next read goes elsewhere
    sink.kept.clear()
    again = up.get_buffer(-1)
    assert up.get_buffer(-1) is again  # nothing holds it: reused


def test_a_small_read_is_copied_out_of_the_buffer(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Keeper()
    up.bind(sink, head_only=False)
    buf = up.get_buffer(-1)
    read(up, ok(b"small"), buffered=True)
    assert sink.kept == [b"small"]
    assert all(isinstance(k, bytes) for k in sink.kept)
    assert up.get_buffer(-1) is buf


def test_a_small_piece_of_a_large_read_is_copied_out(pool: UpstreamPool) -> None:
    """A large read whose body part is small (a long head, or the end of a body and the
    bytes after it) hands on a copy: a small view would keep the whole buffer alive."""
    up, _ = connected(pool)
    sink = Keeper()
    up.bind(sink, head_only=False)
    body = body_of(RELAY_MIN)
    head = ok(body, b"X-Long: %s\r\n" % (b"v" * (2 * VIEW_MIN)))[: -len(body)]
    buf = up.get_buffer(-1)
    read(up, head + body[:100], buffered=True)
    read(up, body[100:] + b"X" * VIEW_MIN, buffered=True)
    assert bytes(sink.body) == body
    assert sink.complete == 1
    assert all(isinstance(k, bytes) for k in sink.kept)
    assert up.get_buffer(-1) is buf


def test_a_tunnel_hands_on_small_reads_as_copies(pool: UpstreamPool) -> None:
    up, _ = connected(pool)
    sink = Keeper()
    up.bind(sink, head_only=False)
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    read(up, switch, buffered=True)
    assert up.state is UpstreamState.UPGRADED
    buf = up.get_buffer(-1)
    read(up, b"\x81\x02hi", buffered=True)
    read(up, b"\x82" * VIEW_MIN, buffered=True)
    assert [type(k) for k in sink.kept] == [bytes, memoryview]
    assert bytes(sink.body) == b"\x81\x02hi" + b"\x82" * VIEW_MIN
    assert up.get_buffer(-1) is not buf  # the large one is still held
