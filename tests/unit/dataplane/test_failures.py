"""Upstream trouble through the HTTP core, without sockets: 502/503/504 and the one retry."""

from __future__ import annotations

import errno

import pytest

from tests.unit.dataplane.harness import (
    CANDIDATE_URL,
    Proxy,
    error_body,
    get,
    header,
    one_route,
    split_response,
    status_of,
)

POST = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"


async def test_502_when_a_request_that_cannot_be_replayed_meets_a_reset() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(POST)
    await client.settle()
    up = await proxy.upstream()
    up.lost()
    error_body(client.transport.take(), 502, "bad_gateway")
    assert len(proxy.pool().opened) == 1
    assert proxy.observer.finished[-1].error_kind == "reset"
    assert not client.transport.closed  # the client keeps its connection


async def test_an_idempotent_request_is_tried_twice_never_more() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get(extra=b"X-Request-ID: reset-1\r\n"))
    await client.settle()
    (await proxy.upstream(n=1)).lost()
    await client.settle()
    (await proxy.upstream(n=2)).lost()
    await client.settle()
    err = error_body(client.transport.take(), 502, "bad_gateway")
    assert err["request_id"] == "reset-1"
    assert len(proxy.pool().opened) == 2


async def test_a_refused_connection_is_retried_then_502() -> None:
    proxy = Proxy()
    pool = proxy.pool()
    pool.failures.extend([ConnectionRefusedError(), ConnectionRefusedError()])
    client = proxy.client()
    client.send(get())
    await client.settle()
    err = error_body(client.transport.take(), 502, "bad_gateway")
    assert "refused" in err["message"]
    assert proxy.observer.failed == [("stable", "connect")]
    assert proxy.observer.finished[-1].error_kind == "connect"


async def test_a_connect_timeout_is_504() -> None:
    proxy = Proxy()
    proxy.pool().failures.extend([TimeoutError(), TimeoutError()])
    client = proxy.client()
    client.send(get())
    await client.settle()
    error_body(client.transport.take(), 504, "upstream_timeout")


async def test_502_when_the_upstream_sends_garbage() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(POST)
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    err = error_body(client.transport.take(), 502, "bad_gateway")
    assert "invalid response" in err["message"]
    assert up.transport.closed


async def test_503_with_retry_after_when_the_pool_is_full() -> None:
    proxy = Proxy(max_upstream_connections=1)
    first = proxy.client()
    first.send(get("/slow"))
    await first.settle()
    up = await proxy.upstream()
    second = proxy.client()
    second.send(get("/other"))
    await second.settle()
    out = second.transport.take()
    error_body(out, 503, "upstream_busy")
    assert b"\r\nRetry-After: 1\r\n" in out
    assert proxy.observer.failed == [("stable", "pool")]
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert status_of(first.transport.take()) == 200
    # the connection is free again, and reused
    second.send(get("/other"))
    await second.settle()
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert status_of(second.transport.take()) == 200
    assert len(proxy.pool().opened) == 1


async def test_a_failed_candidate_is_replayed_on_stable_and_counted() -> None:
    proxy = Proxy(one_route(candidate=True, weight=100))
    client = proxy.client()
    client.send(get())
    await client.settle()
    (await proxy.upstream(CANDIDATE_URL)).lost()
    await client.settle()
    stable = await proxy.upstream()
    assert stable.transport.take().startswith(b"GET / HTTP/1.1\r\n")
    stable.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert status_of(client.transport.take()) == 200
    assert proxy.observer.failed == [("candidate", "reset")]
    ex = proxy.observer.finished[-1]
    assert (ex.version, ex.decision and ex.decision.reason) == ("stable", "retry")


async def test_no_retry_once_response_bytes_reached_the_client() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get())
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
    up.lost()
    await client.settle()
    assert client.transport.aborted  # cut: the only honest signal left
    assert len(proxy.pool().opened) == 1


async def test_hop_by_hop_request_headers_never_reach_the_upstream() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(
        get(
            extra=b"Connection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n"
            b"X-Private: secret\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n"
            b"Upgrade: h2c\r\nX-Kept: 1\r\nX-Forwarded-For: 6.6.6.6\r\n"
        )
    )
    await client.settle()
    head = (await proxy.upstream()).transport.take().lower()
    for name in (b"keep-alive", b"x-private", b"te:", b"proxy-authorization", b"upgrade"):
        assert b"\r\n" + name not in head, name
    assert b"\r\nconnection:" not in head
    assert b"\r\nx-kept: 1\r\n" in head
    assert b"\r\nx-forwarded-for: 203.0.113.7\r\n" in head  # an untrusted peer's is replaced


async def test_running_out_of_file_descriptors_is_a_503_not_the_upstreams_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = Proxy()
    for _ in range(3):
        proxy.pool().failures.append(OSError(errno.EMFILE, "Too many open files"))
    with caplog.at_level("ERROR", logger="splitproxy.dataplane.context"):
        for _ in range(3):
            client = proxy.client()
            client.send(get())
            await client.settle()
            out = client.transport.take()
            error_body(out, 503, "proxy_overloaded")
            assert header(split_response(out)[0], "Retry-After") == "1"
    assert proxy.observer.failed == []  # never counted against the upstream
    assert proxy.ctx.fd_exhaustions == 3
    assert len([r for r in caplog.records if "file descriptors" in r.message]) == 1
