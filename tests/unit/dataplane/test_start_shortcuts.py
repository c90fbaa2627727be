"""`Exchange.start`'s shortcuts, and the client's, against the full computations they stand for.

The host and path of a connection's last request are kept on the connection (`ClientConnection`),
with the route the snapshot's table found for them (asked again of another table); a single
address with nothing on record gets its pool without `ProxyContext.pick_pool`; a route without
a mirror lane skips `Mirror.tap`; a request line ``method SP target SP HTTP/1.1`` is taken for
HTTP/1.1, its first word for the method, without asking llhttp
(`request_head.surely_http11`); request ids are made in blocks (`context.RequestIds`).
Each answer must be the one the full computation gives, whatever the sequence of Host headers
on one keep-alive connection, and whatever the health on record.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httptools
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitproxy.config import parse_routing
from splitproxy.dataplane.context import RequestIds
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.heads import host_name
from splitproxy.dataplane.request_head import surely_http11
from splitproxy.dataplane.routing import scan_routes
from splitproxy.dataplane.state import content_hash
from tests.unit.dataplane.harness import CANDIDATE_URL, STABLE_URL, Proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

ROUTES: dict[str, Any] = {
    "routes": [
        {
            "name": "a",
            "match": {"host": "app.test", "path_prefix": "/a"},
            "stable": {"url": STABLE_URL, "health": {"path": "/ready"}},
        },
        {"name": "w", "match": {"host": "*.wild.test"}, "stable": CANDIDATE_URL},
        {"name": "any", "stable": STABLE_URL},
    ]
}

HOSTS = st.one_of(
    st.sampled_from(
        [
            "app.test",
            "APP.Test",
            "app.test:8080",
            "x.wild.test",
            "X.WILD.test:1",
            "[::1]",
            "[::1]:80",
            "other.test",
            "app.test.",
        ]
    ),
    st.text(alphabet="aAp.t:[]19-", min_size=1, max_size=12),
)
PATHS = st.sampled_from(
    ["/a", "/a/b?q=1", "/a/b?q=2", "/b", "/", "*", "http://abs.test/a?x", "/a?"]
)


def former_host(raw: bytes) -> str:
    """The host as `Exchange.start` made it from every request's Host header before."""
    host = raw.decode("latin-1").lower()
    if host[-1:] != "]":
        host = host.rsplit(":", 1)[0] if ":" in host else host
    return host


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(HOSTS, PATHS, st.booleans()), min_size=1, max_size=8))
async def test_one_connection_routes_each_request_as_a_fresh_look_up_would(
    requests: list[tuple[str, str, bool]],
) -> None:
    proxy = Proxy(ROUTES)
    client = proxy.client()
    snapshot = proxy.state.snapshot
    assert snapshot is not None
    proxy.ctx.health.on_swap(None, snapshot)  # (as the server's book follows its snapshots)
    health = proxy.ctx.health.routes["a"]
    for host, path, dirty in requests:
        health.stable.clean = not dirty  # a failure on record: the shortcut steps aside
        method = b"OPTIONS" if path == "*" else b"GET"
        client.send(b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (method, path.encode(), host.encode()))
        await client.settle()
        ex = proxy.observer.started[-1] if proxy.observer.started else None
        if ex is None or ex.finished:  # answered by the proxy itself (no route, bad target)
            assert client.conn.current is None
            if client.conn.transport is None or client.transport.closed:
                return
            continue
        raw = ex.wanted[b"host"]
        assert ex.host == former_host(raw) == host_name(raw)
        q = ex.target.find(b"?")
        assert ex.path == (ex.target if q < 0 else ex.target[:q]).decode("latin-1")
        lookup_path = ex.path if ex.path != "*" else "/"
        assert ex.route is scan_routes(snapshot.routes, ex.host, lookup_path)
        assert ex.route is not None
        plan = ex.route.stable
        assert (ex.pool, ex.upstream_url) == proxy.ctx.pick_pool(plan, ex.backend_health)
        assert ex.up is not None
        ex.up.data_received(OK)
        assert ex.finished
        proxy.observer.started.clear()


# another config: the same hosts and paths, other routes (another prefix, another order)
ROUTES_B: dict[str, Any] = {
    "routes": [
        {"name": "b", "match": {"host": "app.test", "path_prefix": "/a/b"}, "stable": STABLE_URL},
        {"name": "any", "match": {"path_prefix": "/a"}, "stable": CANDIDATE_URL},
        {"name": "w", "match": {"host": "*.wild.test"}, "stable": STABLE_URL},
    ]
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(HOSTS, PATHS, st.sampled_from([None, None, ROUTES, ROUTES_B])),
        min_size=1,
        max_size=8,
    )
)
async def test_a_connections_route_follows_each_new_snapshot(
    requests: list[tuple[str, str, Any]],
) -> None:
    proxy = Proxy(ROUTES)
    client = proxy.client()
    for n, (host, path, swap) in enumerate(requests):
        if swap is not None:  # a reload between two requests (the same config, or the other)
            text = yaml.safe_dump(swap, sort_keys=False)
            proxy.state.load(parse_routing(text), content_hash(text), 1000.0 + n)
        snapshot = proxy.state.snapshot
        assert snapshot is not None
        method = b"OPTIONS" if path == "*" else b"GET"
        client.send(b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (method, path.encode(), host.encode()))
        await client.settle()
        ex = proxy.observer.started[-1] if proxy.observer.started else None
        if ex is None or ex.finished:  # answered by the proxy itself (no route, bad target)
            if client.conn.transport is None or client.transport.closed:
                return
            continue
        lookup_path = ex.path if ex.path != "*" else "/"
        assert ex.route is scan_routes(snapshot.routes, ex.host, lookup_path)
        assert ex.up is not None
        ex.up.data_received(OK)
        assert ex.finished
        proxy.observer.started.clear()


def test_host_name_is_the_former_parse() -> None:
    for raw in (b"A.b:80", b"[::1]:8", b"[::1]", b"x", b"", b"a:b:c", b"\xe9.test"):
        assert host_name(raw) == former_host(raw)


class Lanes:
    """A mirror with a lane for route ``a`` only, counting its taps."""

    def __init__(self) -> None:
        self.lanes = {"a": object()}
        self.tapped: list[str] = []

    def tap(self, ex: Exchange) -> None:
        assert ex.route is not None
        self.tapped.append(ex.route.name)


@pytest.mark.parametrize(("path", "host", "tapped"), [("/a", "app.test", ["a"]), ("/b", "x", [])])
async def test_a_route_without_a_lane_is_not_offered_to_the_mirror(
    path: str, host: str, tapped: list[str]
) -> None:
    proxy = Proxy(ROUTES)
    mirror = Lanes()
    proxy.ctx.mirror = mirror  # type: ignore[assignment]
    client = proxy.client()
    client.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
    await client.settle()
    assert mirror.tapped == tapped


class _Version:
    """Notes the version llhttp gives a head (as the client reads it: to its first blank line)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.seen: list[tuple[bytes, str, bytes]] = []
        self.data = b""

    def on_headers_complete(self) -> None:
        end = self.data.find(b"\r\n\r\n")
        parser = self.parser
        self.seen.append((self.data[:end], parser.get_http_version(), parser.get_method()))


@settings(max_examples=600)
@given(
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS"]),
    st.sampled_from([b" ", b"  "]),
    st.sampled_from([b"/", b"/x", b"*", b"HTTP/1.1", b"a:1", b"/HTTP/1.1", b"http://a/b"]),
    st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b"", b"  HTTP/1.1", b" HTTP/1.1 ", b" HTTP/2.0"]),
    st.lists(
        st.sampled_from(
            [
                b"X: HTTP/1.1",
                b"Host: a",
                b"Y: a HTTP/1.1",
                b"Connection: keep-alive",
                b"Connection: close",
            ]
        ),
        max_size=3,
    ),
)
def test_a_head_said_to_be_http11_is_so_for_llhttp(
    method: bytes, spaces: bytes, target: bytes, version: bytes, lines: list[bytes]
) -> None:
    data = method + spaces + target + version + b"\r\n" + b"".join(x + b"\r\n" for x in lines)
    reader = _Version()
    reader.data = data + b"\r\n"
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        reader.parser.feed_data(reader.data)  # (refused or CONNECT: what was seen is checked)
    for head, llhttp_says, llhttp_method in reader.seen:
        parts = head.split(b" ", 2)
        if surely_http11(parts):
            assert (llhttp_says, llhttp_method) == ("1.1", parts[0]), head
        elif (head + b"\r\n").startswith(method + b" " + target + b" HTTP/1.1\r\n"):
            raise AssertionError(f"the usual head was not recognised: {head!r}")


@pytest.mark.parametrize(
    "line",
    [b"GET /\r\nX: HTTP/1.1\r\n\r\n", b"GET /\r\nX: HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"],
)
async def test_an_http09_line_followed_by_a_version_like_header_is_refused_as_before(
    line: bytes,
) -> None:
    proxy = Proxy(ROUTES)
    client = proxy.client()
    client.send(line)
    await client.settle()
    assert client.transport.take().startswith(b"HTTP/1.1 505 ")
    assert proxy.pool(STABLE_URL).opened == []


def test_request_ids_are_the_prefix_and_the_count_in_hex() -> None:
    # made in blocks of 256 (`RequestIds`): the ids the former ``b"%s-%x" % (prefix, n)``
    # made, across the blocks' edges and the count's growing digits (0xff, 0x100, 0x10000)
    ids = RequestIds(b"0a1b2c3d4e5f")
    assert [ids.next() for _ in range(0x10200)] == [
        b"0a1b2c3d4e5f-%x" % n for n in range(1, 0x10201)
    ]
    one, two = RequestIds(), RequestIds()  # a random prefix each: unique per process start
    first = one.next()
    assert first.endswith(b"-1")
    assert len(first) == 12 + 2
    assert first != two.next()
