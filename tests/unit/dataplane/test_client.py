"""The client side of the HTTP core, driven with bytes on mock transports (no socket)."""

from __future__ import annotations

import pytest

from splitproxy.dataplane.client import ClientState
from splitproxy.dataplane.upstream import UpstreamState
from tests.unit.dataplane.harness import (
    CANDIDATE_URL,
    Proxy,
    dechunk,
    error_body,
    get,
    header,
    one_route,
    split_response,
    status_of,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_pipelined_requests_are_answered_in_order() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get("/first") + get("/second"))
    await client.settle()
    up = await proxy.upstream()
    assert up.transport.take().startswith(b"GET /first HTTP/1.1\r\n")
    assert not client.transport.reading  # the second waits: nothing more is read meanwhile
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
    # the upstream connection went back to the pool and now carries the second request
    assert up.transport.take().startswith(b"GET /second HTTP/1.1\r\n")
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
    out = client.transport.take()
    first, rest = out.split(b"\r\n\r\n", 1)
    assert status_of(first) == 200
    assert rest.startswith(b"first")
    assert rest[5:].endswith(b"\r\n\r\nsecond")
    assert len(proxy.pool().opened) == 1
    assert client.transport.reading
    assert client.conn.state is ClientState.OPEN
    assert up.conn.state is UpstreamState.IDLE


async def test_chunked_request_body_is_re_encoded_for_the_upstream() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    await client.settle()
    up = await proxy.upstream()
    client.send(b"c\r\n5;ext=1\r\nhello\r\n0\r\nTrailer-X: 1\r\n\r\n")
    sent = up.transport.take()
    head, body = split_response(sent)
    assert header(head, "Transfer-Encoding") == "chunked"
    assert header(head, "Trailer-X") is None
    payload, ended = dechunk(body)
    assert (payload, ended) == (b"abchello", True)
    up.reply(OK)
    assert status_of(client.transport.take()) == 200


@pytest.mark.parametrize("http11", [True, False])
async def test_chunked_response_is_re_chunked_or_close_delimited(http11: bool) -> None:
    proxy = Proxy()
    client = proxy.client()
    version = b"1.1" if http11 else b"1.0"
    client.send(b"GET / HTTP/%s\r\nHost: a\r\nConnection: keep-alive\r\n\r\n" % version)
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    up.reply(b"4\r\nwiki\r\n5\r\npedia\r\n")
    up.reply(b"0\r\nX-Trailer: t\r\n\r\n")
    head, body = split_response(client.transport.take())
    assert header(head, "Content-Length") is None
    if http11:
        assert header(head, "Transfer-Encoding") == "chunked"
        assert dechunk(body) == (b"wikipedia", True)
        assert client.conn.state is ClientState.OPEN
    else:
        assert header(head, "Transfer-Encoding") is None
        assert header(head, "Connection") == "close"
        assert body == b"wikipedia"
        assert client.transport.closed
    assert b"X-Trailer" not in body


async def test_response_without_length_is_chunked_for_http11_clients() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil")
    up.reply(b" close")
    up.lost()  # the body ends with the upstream's connection
    head, body = split_response(client.transport.take())
    assert header(head, "Transfer-Encoding") == "chunked"
    assert dechunk(body) == (b"until close", True)
    assert up.conn.state is UpstreamState.CLOSED
    assert client.conn.state is ClientState.OPEN  # the client keeps its connection


async def test_413_answers_then_lingers_and_discards_the_rest() -> None:
    proxy = Proxy(max_body_bytes=1000)
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    out = client.transport.take()
    error_body(out, 413, "body_too_large")
    assert header(split_response(out)[0], "Connection") == "close"
    assert proxy.pool().opened == []  # nothing went upstream
    # half-closed, still reading (to discard), not closed: the 413 is not lost to a reset
    assert client.conn.state is ClientState.LINGERING
    assert client.transport.eof_written
    assert client.transport.reading
    assert not client.transport.closed
    for _ in range(5):
        proxy.sweep(1.0)
        client.send(b"x" * 10_000)
    assert client.transport.take() == b""
    assert not client.transport.closed
    proxy.sweep(2.1)  # the client went quiet: the lingering close ends
    assert client.transport.closed
    assert not client.transport.aborted


async def test_lingering_is_bounded_even_for_a_client_that_keeps_sending() -> None:
    proxy = Proxy(max_body_bytes=10)
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    assert client.conn.state is ClientState.LINGERING
    for _ in range(9):
        proxy.sweep(1.0)
        client.send(b"x" * 1000)
        assert not client.transport.closed
    proxy.sweep(1.5)
    client.send(b"x")
    proxy.sweep(0.0)
    assert client.transport.closed


async def test_413_mid_chunked_body_drops_the_upstream_connection() -> None:
    proxy = Proxy(max_body_bytes=1000)
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.settle()
    up = await proxy.upstream()
    for _ in range(3):
        client.send(b"190\r\n" + b"y" * 400 + b"\r\n")
    error_body(client.transport.take(), 413, "body_too_large")
    assert up.conn.state is UpstreamState.CLOSED
    assert up.transport.aborted
    assert proxy.pool().idle_count == 0


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", "bad_request"),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", "bad_request"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
         "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "duplicate_header"),
        (b"GET / HTTP/1.1\r\n\r\n", "bad_request"),
        (b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n", "bad_request"),
    ],
)  # fmt: skip
async def test_400_for_malformed_requests(garbage: bytes, code: str) -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(garbage)
    await client.settle()
    out = client.transport.take()
    error_body(out, 400, code)
    assert header(split_response(out)[0], "Connection") == "close"
    assert proxy.pool().opened == []
    assert client.transport.eof_written or client.transport.closed


async def test_431_for_headers_too_large_too_many_or_never_ending() -> None:
    proxy = Proxy(max_header_bytes=2048, max_headers=10)
    big = proxy.client()
    big.send(get(extra=b"X-Big: " + b"b" * 3000 + b"\r\n"))
    error_body(big.transport.take(), 431, "headers_too_large")
    many = proxy.client()
    many.send(get(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(12))))
    error_body(many.transport.take(), 431, "headers_too_large")
    # a header line that never ends is cut off before its end arrives
    endless = proxy.client()
    endless.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    for _ in range(5):
        endless.send(b"z" * 2048)
    error_body(endless.transport.take(), 431, "headers_too_large")
    assert proxy.pool().opened == []


async def test_408_when_headers_never_finish_and_trickling_does_not_help() -> None:
    proxy = Proxy(header_timeout=0.3)
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(2):
        proxy.sweep(0.1)
        client.send(b"X-Slow: 1\r\n")
    assert client.transport.take() == b""
    proxy.sweep(0.11)  # 0.31 s after the first byte
    out = client.transport.take()
    error_body(out, 408, "request_timeout")
    assert client.transport.closed  # no lingering for a client too slow to send headers
    assert client.conn.state is ClientState.CLOSED


async def test_idle_keep_alive_connection_is_closed() -> None:
    proxy = Proxy(client_idle_timeout=0.5)
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(OK)
    assert status_of(client.transport.take()) == 200
    proxy.sweep(0.4)  # within the idle timeout: kept
    assert not client.transport.closed
    client.send(get())
    await client.settle()
    up.reply(OK)
    assert status_of(client.transport.take()) == 200
    proxy.sweep(0.4)
    assert not client.transport.closed  # the idle time restarted with the last response
    proxy.sweep(0.2)
    assert client.transport.closed
    # a connection that never sends anything is closed too
    silent = proxy.client()
    proxy.sweep(0.6)
    assert silent.transport.closed


async def test_idle_time_starts_when_the_response_ends() -> None:
    proxy = Proxy(client_idle_timeout=0.5)
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
    for _ in range(6):  # a slow response, longer than the idle timeout
        proxy.sweep(0.1)
        up.reply(b"x")
    assert not client.transport.closed
    _, body = split_response(client.transport.take())
    assert body == b"x" * 6
    proxy.sweep(0.45)
    assert not client.transport.closed
    client.send(get())
    await client.settle()
    up.reply(OK)
    assert status_of(client.transport.take()) == 200


async def test_body_timeout_cuts_a_stalled_upload() -> None:
    proxy = Proxy(body_timeout=0.3)
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    await client.settle()
    up = await proxy.upstream()
    proxy.sweep(0.2)
    client.send(b"de")  # a byte in time restarts the wait
    proxy.sweep(0.2)
    assert not client.transport.closed
    proxy.sweep(0.11)
    assert client.transport.aborted
    client.conn.connection_lost(None)
    assert up.conn.state is UpstreamState.CLOSED  # the half-sent request is never reused
    assert proxy.observer.finished[-1].status == 499


async def test_a_client_that_stops_reading_is_cut_off_and_holds_back_the_upstream() -> None:
    proxy = Proxy(body_timeout=0.3)
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    client.transport.hold = True  # the client reads nothing
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    up.reply(b"s" * 65536)
    up.reply(b"s" * 65536)
    assert client.transport.writing_paused
    assert not up.transport.reading  # back-pressure: the upstream is not read meanwhile
    proxy.sweep(0.29)
    assert not client.transport.closed
    proxy.sweep(0.02)
    assert client.transport.aborted
    client.conn.connection_lost(None)
    assert up.transport.aborted


async def test_a_client_that_reads_again_resumes_the_upstream() -> None:
    proxy = Proxy(body_timeout=0.3, read_timeout=0.5)
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    client.transport.hold = True
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"s" * 100_000)
    assert not up.transport.reading
    proxy.sweep(0.2)
    client.transport.drain()
    assert up.transport.reading
    proxy.sweep(0.45)  # the read timeout restarted when reading resumed
    assert not client.transport.closed
    up.reply(b"s" * 100_000)
    assert up.conn.state is UpstreamState.IDLE


async def test_upstream_back_pressure_pauses_the_client() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
    await client.settle()
    up = await proxy.upstream()
    up.transport.hold = True  # the upstream does not take the body
    client.send(b"b" * 100_000)
    assert up.transport.writing_paused
    assert not client.transport.reading
    up.transport.drain()
    assert client.transport.reading


async def test_body_held_while_connecting_is_bounded() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
    client.send(b"b" * 300_000)  # the upstream is not connected yet: held, up to a limit
    assert not client.transport.reading
    await client.settle()
    up = await proxy.upstream()
    assert client.transport.reading
    _, body = split_response(up.transport.take())
    assert body == b"b" * 300_000


async def test_upstream_read_timeout_is_504_before_the_response() -> None:
    proxy = Proxy(read_timeout=0.3)
    client = proxy.client()
    client.send(get(extra=b"X-Request-ID: slow-1\r\n"))
    await client.settle()
    up = await proxy.upstream()
    proxy.sweep(0.29)
    assert client.transport.take() == b""
    proxy.sweep(0.02)
    err = error_body(client.transport.take(), 504, "upstream_timeout")
    assert err["request_id"] == "slow-1"
    assert up.transport.aborted
    assert proxy.observer.finished[-1].error_kind == "timeout"
    assert len(proxy.pool().opened) == 1  # a read timeout is never replayed


async def test_read_timeout_applies_between_body_reads() -> None:
    proxy = Proxy(read_timeout=0.5)
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(6):  # slow but steady: fine
        proxy.sweep(0.4)
        up.reply(b"5\r\ntick\n\r\n")
    assert not client.transport.closed
    proxy.sweep(0.51)  # a stall: the response is cut, not ended cleanly
    assert client.transport.aborted
    head, body = split_response(client.transport.take())
    assert status_of(head) == 200
    payload, ended = dechunk(body)
    assert payload == b"tick\n" * 6
    assert not ended


async def test_timeouts_are_not_retried_on_stable() -> None:
    proxy = Proxy(one_route(candidate=True, weight=100), read_timeout=0.3)
    client = proxy.client()
    client.send(get())
    await client.settle()
    await proxy.upstream(CANDIDATE_URL)
    proxy.sweep(0.31)
    error_body(client.transport.take(), 504, "upstream_timeout")
    assert proxy.pool().opened == []  # stable never saw it
    assert proxy.observer.finished[-1].version == "candidate"
    assert proxy.observer.finished[-1].error_kind == "timeout"


WS_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


async def test_an_idle_tunnel_is_cut_and_traffic_either_way_keeps_it() -> None:
    proxy = Proxy(tunnel_idle_timeout=30.0)
    client = proxy.client()
    client.send(WS_UPGRADE)
    await client.settle()
    up = await proxy.upstream()
    up.reply(SWITCHED)
    assert client.conn.state is ClientState.TUNNEL
    proxy.sweep(20.0)
    proxy.tick(0)
    up.reply(b"\x81\x02hi")  # the upstream speaks: the tunnel is alive
    proxy.sweep(20.0)
    assert not client.transport.aborted
    client.send(b"\x81\x02yo")  # and the client
    proxy.sweep(25.0)
    assert not client.transport.aborted
    proxy.sweep(6.0)  # 31 s with no byte either way
    assert client.transport.aborted


async def test_a_client_sending_only_empty_lines_is_cut_at_the_header_timeout() -> None:
    proxy = Proxy(header_timeout=10.0, client_idle_timeout=75.0)
    client = proxy.client()
    for _ in range(9):
        proxy.tick(1.0)
        client.send(b"\r\n")
        proxy.sweep(0.0)
    assert not client.transport.closed
    proxy.tick(2.5)
    client.send(b"\r\n\r\n")
    proxy.sweep(0.0)  # 10.5 s of nothing but empty lines since the first
    assert client.transport.closed
    assert client.transport.take() == b""  # no request was made, none is answered


async def test_empty_lines_before_a_request_are_harmless() -> None:
    proxy = Proxy(header_timeout=10.0)
    client = proxy.client()
    client.send(b"\r\n")
    proxy.sweep(8.0)
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(OK)
    proxy.sweep(8.0)  # the request ended the empty-line clock
    assert not client.transport.closed
    assert status_of(client.transport.take()) == 200


@pytest.mark.parametrize("request_line", [b"GET /\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n"])
async def test_http_0_9_is_refused(request_line: bytes) -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(request_line)
    await client.settle()
    out = client.transport.take()
    assert status_of(out) == 505
    assert error_body(out, 505, "version_not_supported")
    assert not proxy.pool().opened


async def test_over_max_connections_a_new_client_gets_503_and_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = Proxy(max_connections=2)
    first, second = proxy.client(), proxy.client()
    with caplog.at_level("WARNING", logger="splitproxy.dataplane.client"):
        third = proxy.client()
        fourth = proxy.client()
    assert error_body(third.transport.take(), 503, "too_many_connections") is not None
    assert third.transport.closed
    assert fourth.transport.closed
    assert not first.transport.closed
    assert not second.transport.closed
    assert proxy.ctx.refused_connections == 2
    assert len([r for r in caplog.records if "max_connections" in r.message]) == 1  # not a flood
    third.send(get())  # bytes on a refused connection route nothing
    assert not proxy.pool().opened
    first.conn.connection_lost(None)
    fifth = proxy.client()
    assert not fifth.transport.closed
    fifth.send(get())
    await fifth.settle()
    assert len(proxy.pool().opened) == 1


async def test_forwarding_headers_under_underscore_spellings_never_reach_the_upstream() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get(extra=b"X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX_Custom: kept\r\n"))
    await client.settle()
    up = await proxy.upstream()
    sent = up.transport.take()
    assert b"6.6.6.6" not in sent
    assert b"X_Custom: kept\r\n" in sent
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in sent


async def test_draining_closes_idle_connections_now_and_busy_ones_after_their_answer() -> None:
    proxy = Proxy()
    idle, half_sent = proxy.client(), proxy.client()
    idle.send(get())
    await idle.settle()
    up = await proxy.upstream()
    up.reply(OK)
    assert status_of(idle.transport.take()) == 200
    half_sent.send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n")  # mid-request at SIGTERM
    proxy.ctx.start_draining()
    assert idle.transport.closed
    assert not half_sent.transport.closed  # never cut mid-request
    half_sent.send(b"\r\n")
    await half_sent.settle()
    up.reply(OK)  # the pooled connection serves it
    head, _ = split_response(half_sent.transport.take())
    assert status_of(head) == 200
    assert header(head, "Connection") == "close"
    assert half_sent.transport.closed
