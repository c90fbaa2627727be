"""The request head read from its bytes (`request_head.read_request_head`, no ``on_url`` nor
``on_header``) gives what the former per-header path gave: against `OldClient`, the former
client connection (llhttp's ``on_url`` and ``on_header`` for every request, the former checks
in them), the same bytes to the client and to the upstream, the same exchanges (target,
headers forwarded, wanted and consumed headers, trailer fields included), over any request
line, target, header lines and whitespace, obs-fold, control bytes, duplicate and conflicting
framing headers, underscore names, the limits, line ends before requests, pipelining, chunked
bodies with trailers, and any split of the bytes over reads."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Final

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from splitproxy.dataplane import request_head
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.client_state import head_progress
from splitproxy.dataplane.context import RequestIds
from splitproxy.dataplane.exchange import Exchange, Reject
from splitproxy.dataplane.heads import CONSUMED, spoofed_forwarding
from splitproxy.dataplane.request_head import read_request_head
from tests.unit.dataplane.harness import Client, MockTransport, Proxy, attach

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_UNDERSCORE: Final = ord("_")
_REJECT_MESSAGES: Final = {
    "uri_too_long": "the request target is too long",
    "headers_too_large": "the request headers are too large",
    "body_too_large": "the request body is too large",
    "duplicate_header": "the request repeats Host or Content-Length",
    "upgrade_with_body": "an Upgrade request cannot carry a body",
    "version_not_supported": "only HTTP/1.0 and HTTP/1.1 are supported",
}


class OldClient(ClientConnection):
    """The former client connection: every request parsed with llhttp's ``on_url`` and
    ``on_header`` callbacks and the checks they made, as it was before the head was read
    from its bytes (the rest, from the end of the head on, is the connection's own), but for
    trailer fields: counted against the limits, then dropped, as the client does now."""

    __slots__ = ("header_bytes", "header_count", "trailers")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # (its parser sees on_url and on_header below)
        self.header_bytes = 0
        self.header_count = 0
        self.trailers = False

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.ctx.clock.now
        if (
            self.parsing is None
            and self.current is None
            and not self.blank_since
            and self.state.name == "OPEN"
            and data[0] in (13, 10)
            and not data.strip(b"\r\n")
        ):
            self.blank_since = self.last_activity
        if self.state.name == "TUNNEL":
            tunnel = self.tunnel
            if tunnel is not None and tunnel.up is not None:
                tunnel.up.write(data)
            return
        parser = self.parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if type(cause).__name__ == "_Stopped":
                return
            if isinstance(cause, Reject):
                if self.parser is parser:
                    self._reject(cause.status, cause.code, _REJECT_MESSAGES[cause.code])
            else:
                raise AssertionError("internal error") from cause
            return
        except httptools.HttpParserError as exc:
            if self.parser is parser:
                self._reject(400, "bad_request", f"malformed request: {exc}")
            return
        if self.in_head:
            head_progress(self, len(data))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        assert self.parsing is not None
        self.parsing.headers = []  # (an exchange's own, to fill: see `PerHeader.fill`)
        self.parsing.wanted = {}
        self.header_bytes = 0
        self.header_count = 0
        self.trailers = False

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.target = ex.target + url if ex.target else url
        if len(ex.target) > self.ctx.max_header_bytes:
            raise Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        if (
            self.header_bytes > self.ctx.max_header_bytes
            or self.header_count > self.ctx.max_headers
        ):
            raise Reject(431, "headers_too_large")
        if self.trailers:  # (counted, then dropped: see `request_head.PerHeader`)
            return
        ex = self.parsing
        assert ex is not None
        lname = name.lower()
        if _UNDERSCORE in lname and spoofed_forwarding(lname):
            return
        if lname in CONSUMED:
            prior = ex.wanted.get(lname)
            ex.wanted[lname] = prior + b", " + value if prior is not None else value
            return
        ex.headers.append((name, value))
        if lname in self.wanted_names:
            prior = ex.wanted.get(lname)
            if prior is None:
                ex.wanted[lname] = value
            elif lname == b"cookie":
                ex.wanted[lname] = prior + b"; " + value
            elif lname == b"host" or lname == b"content-length":
                raise Reject(400, "duplicate_header")
            else:
                ex.wanted[lname] = prior + b", " + value

    def on_headers_complete(self) -> None:
        self.trailers = True
        parser = self.request_parser
        self.head_complete(parser, parser.get_http_version())


# -- what the clients send ------------------------------------------------------------------
# Each part of a request from what llhttp accepts (``ok``), or from anything (a refused head
# ends the stream: most requests are drawn clean so that the rest of the stream is read)
def part(ok: list[bytes], bad: list[bytes], clean: bool) -> st.SearchStrategy[bytes]:
    return st.sampled_from(ok) if clean else st.sampled_from(ok + bad)


METHODS = [b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT"], [b"G ET", b"get", b"XYZ"]
TARGETS = (
    [b"/", b"/a?b=c", b"*", b"http://app.test/x", b"/%00", b"//", b"/" + b"p" * 150,
     b"/" + b"q" * 260, b"app.test:80", b"/a/b/c?d"],
    [b"/\xff", b"/a b", b"", b"\t/", b"/\x0b", b"/a\x7f"],
)  # fmt: skip
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/0.9", b"HTTP/2.0", b"", b"HTTP/1.1 "]
SEPARATORS = [b" ", b" ", b"  "], [b"\t", b" \t"]
NAMES = (
    [b"Host", b"host", b"HOST", b"Content-Length", b"Transfer-Encoding", b"Cookie", b"cookie",
     b"Connection", b"Upgrade", b"Expect", b"X-Forwarded-For", b"X_Forwarded_For", b"x_real_ip",
     b"Forwarded", b"X-Request-ID", b"User-Agent", b"Accept", b"X_Custom", b"Keep-Alive",
     b"TE", b"Te", b"Proxy-Connection", b"X-Splitproxy-Synthetic", b"Accept-Language",
     b"Referer", b"X-Forwarded-Host", b"A", b"b"],
    [b"", b"A B", b"N\x00", b"X\t", b"\xe2"],
)  # fmt: skip
VALUES = (
    [b"app.test", b"5", b"0", b"chunked", b"close", b"keep-alive", b"Upgrade", b"websocket",
     b"100-continue", b"a=1", b"b=2", b" lead", b"trail \t", b"\t both \t", b"", b"\xff\xfe",
     b"x" * 90, b"y" * 200, b"text/html,*/*;q=0.8", b"close, te", b"h2c"],
    [b"-1", b"5, 5", b"gzip", b"chunked, identity", b"a\x01b", b"a\x7fb",
     b"fold\r\n continued", b"bare\rcr", b"bare\nlf"],
)  # fmt: skip
COLONS = [b": ", b": ", b":", b":\t", b":  "], [b" : ", b" :"]
BODIES = [
    b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n",
    b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\nHost: evil\r\n\r\n",
    b"1\r\na\r\n0\r\nCookie: c=1\r\nCookie: d=2\r\n\r\n",
    b"2\r\n\r\n\r\n0\r\n" + b"T: " + b"z" * 120 + b"\r\n\r\n",
    b"0\r\nContent-Length: 3\r\n\r\n", b"\r\n\r\n", b"ffffffffffffffffff\r\n",
]  # fmt: skip
leading = st.sampled_from([b"", b"", b"", b"\r\n", b"\n", b"\r\n\r\n"])


@st.composite
def request(draw: st.DrawFn) -> bytes:
    clean = draw(st.integers(0, 3)) > 0
    sep = draw(part(*SEPARATORS, clean))
    line = (draw(part(*METHODS, clean)) + sep + draw(part(*TARGETS, clean))
            + draw(part(*SEPARATORS, clean)) + draw(part(*VERSIONS, clean)))  # fmt: skip
    fields = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(part(*NAMES, clean) if clean or draw(st.booleans()) else st.binary(max_size=6))
        value = draw(
            part(*VALUES, clean) if clean or draw(st.booleans()) else st.binary(max_size=9)
        )
        fields.append(name + draw(part(*COLONS, clean)) + value)
    if draw(st.integers(0, 4)):
        fields.insert(0, b"Host: app.test")
    if not draw(st.integers(0, 5)):  # an upgrade (a tunnel for WebSocket)
        fields += [b"Connection: Upgrade", draw(st.sampled_from([b"Upgrade: websocket",
                                                                 b"Upgrade: h2c"]))]  # fmt: skip
    body = draw(st.sampled_from(BODIES))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":  # a length that frames the body
        fields.insert(draw(st.integers(0, len(fields))), b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        if clean:
            body = draw(st.sampled_from([b for b in BODIES if b.endswith(b"\r\n\r\n")]))
    elif clean:
        body = b""
    eol = draw(part([b"\r\n"], [b"\n"], clean))
    head = eol.join([line, *fields])
    return draw(leading) + head + b"\r\n\r\n" + body


@st.composite
def stream(draw: st.DrawFn) -> list[bytes]:
    """Requests (or raw bytes) back to back, cut at arbitrary points."""
    data = b"".join(draw(st.lists(st.one_of(*[request()] * 9, st.binary(max_size=20)), max_size=5)))
    if draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    else:  # one byte, or a few, at a time
        step = draw(st.integers(1, 7))
        cuts = list(range(step, len(data), step))
    pieces, last = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[last:cut])
        last = cut
    return [p for p in pieces if p]


class _Count:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def upstream_requests(data: bytes) -> int:
    counter = _Count()
    parser = httptools.HttpRequestParser(counter)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(data)
    return counter.complete


def exchange_fields(ex: Exchange) -> tuple[Any, ...]:
    return (ex.method, ex.target, list(ex.headers), dict(ex.wanted), ex.keep_alive, ex.http11,
            ex.body_kind, ex.content_length, ex.upgrade, ex.status, ex.error_kind,
            ex.body_received, ex.req_done, ex.finished, ex.reject)  # fmt: skip


def kept_as_read() -> None:
    """Every kept head's entry is what reading its bytes gives: its headers and wanted ones are
    shared by the exchanges that repeat it, and none of them changed them."""
    kept = request_head.KEPT
    for rest, (headers, wanted, size, count, _) in kept.heads.items():
        read = request_head._read_fields(rest, 10**9, 10**9, kept.names)
        assert (headers, wanted, size, count) == read


async def run(pieces: list[bytes], old: bool, **limits: Any) -> tuple[Any, ...]:
    """What a connection did with ``pieces``: the bytes to the client and to each upstream
    connection, its exchanges, and how it ended."""
    proxy = Proxy(**limits)
    proxy.ctx.request_ids = RequestIds(b"same")
    if old:
        former = OldClient(proxy.ctx)
        transport = MockTransport()
        attach(former, transport)
        client = Client(former, transport)
    else:
        client = proxy.client()
    sent: dict[int, bytearray] = {}
    answered: dict[int, int] = {}
    reads: list[bytes] = []
    for piece in [*pieces, b""]:
        if piece and not client.transport.closed:
            client.send(piece)
        reads.append(bytes(client.transport.written))
        for _ in range(4):  # let exchanges connect; answer each request the upstream got
            await client.settle()
            for n, (up, transport) in enumerate(proxy.pool().opened):
                sent.setdefault(n, bytearray()).extend(transport.take())
                complete = upstream_requests(bytes(sent[n]))
                while answered.get(n, 0) < complete and not transport.closed:
                    answered[n] = answered.get(n, 0) + 1
                    up.data_received(OK)
    kept_as_read()
    conn = client.conn
    exchanges = [exchange_fields(ex) for ex in proxy.observer.started]
    pending = [exchange_fields(ex) for ex in (conn.current, *conn.queue, conn.parsing) if ex]
    return (reads, bytes(client.transport.written), {n: bytes(d) for n, d in sent.items()},
            exchanges, pending, conn.state, client.transport.closed, conn.in_head,
            conn.head_seen)  # fmt: skip


SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(300)  # (two proxies per example: a loaded machine takes minutes)
@SETTINGS
@given(stream(), st.sampled_from([(1024, 100), (160, 4), (300, 8)]))
@example([b"GET / HTTP/1.1\r\nHost: a\r\nA:\r\nB: x\r\n\r\n"], (1024, 100))
@example([b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", b"\r\n"], (1024, 100))
@example([b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"0\r\nHost: b\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"], (1024, 100))  # fmt: skip
@example([b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\x01\r\n\r\n"], (1024, 100))
@example([b"GET /\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"], (1024, 100))
async def test_the_head_read_from_its_bytes_does_what_the_per_header_path_did(
    pieces: list[bytes], limits: tuple[int, int]
) -> None:
    options = {"max_header_bytes": limits[0], "max_headers": limits[1], "max_body_bytes": 64}
    new = await run(pieces, old=False, **options)
    old = await run(pieces, old=True, **options)
    assert new == old


@pytest.mark.timeout(300)
@SETTINGS
@given(st.lists(request(), min_size=1, max_size=3), st.integers(1, 400))
async def test_pipelined_requests_in_reads_of_any_size(requests: list[bytes], size: int) -> None:
    data = b"".join(requests)
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    options = {"max_header_bytes": 1024, "max_headers": 100}
    assert await run(pieces, old=False, **options) == await run(pieces, old=True, **options)


# -- the one pass alone ---------------------------------------------------------------------
class _Heads:
    """llhttp's per-header callbacks, and the former checks, on one head."""

    def __init__(self) -> None:
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.head: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True
        self.head = list(self.fields)  # (trailer fields come after)


@settings(max_examples=600, deadline=None)
@given(request())
def test_the_one_pass_reads_what_llhttp_reads(data: bytes) -> None:
    ref = _Heads()
    parser = httptools.HttpRequestParser(ref)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(data)
    if not ref.done or parser.get_http_version() == "0.9":
        return
    start = len(data) - len(data.lstrip(b"\r\n"))
    head = data[start : data.index(b"\r\n\r\n", start)]
    wanted = frozenset({b"host", b"cookie", b"content-length", b"user-agent"})
    request_head._lines.clear()
    for _ in range(2):  # read, then read again from the lines kept
        try:
            target, headers, got, size, count, _ = read_request_head(head, 10**6, 10**6, wanted)
        except Reject as exc:
            refused = exc.code
            assert refused == "duplicate_header"  # (no limit is near)
            return
        assert target == ref.target
        assert count == len(ref.head)
        assert size == sum(len(n) + len(v) + 4 for n, v in ref.head)
        forwarded = [
            (n, v)
            for n, v in ref.head
            if n.lower() not in CONSUMED and not spoofed_forwarding(n.lower())
        ]
        assert headers == forwarded
        assert set(got) <= CONSUMED | wanted


def test_the_table_of_lines_stays_bounded() -> None:
    request_head._lines.clear()
    for i in range(3 * request_head._LINES_MAX):
        read_request_head(b"GET / HTTP/1.1\r\nX-N: %d" % i, 10**6, 10**6, frozenset())
    read_request_head(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 300, 10**6, 10**6, frozenset())
    assert len(request_head._lines) <= request_head._LINES_MAX
    assert not any(len(line) > 256 for line in request_head._lines)


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n" + b"X: y\r\n" * 100, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + b"X: y\r\n" * 100, "duplicate_header"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"Host: a\r\nHost: b", "headers_too_large"),
    ],
)
def test_the_first_refusal_in_the_head_is_the_one_given(head: bytes, code: str) -> None:
    with pytest.raises(Reject) as refused:
        read_request_head(head.rstrip(b"\r\n"), 150, 50, frozenset({b"host"}))
    assert refused.value.code == code


# -- what a kept head sends upstream (`heads.Forwarding`) -----------------------------------
def upstream_heads(sent: bytes) -> list[bytes]:
    """The heads in what an upstream connection received, X-Request-ID's value blanked."""
    heads = [h for h in sent.split(b"\r\n\r\n") if h]
    return [re.sub(rb"X-Request-ID: [^\r]*", b"X-Request-ID: -", h) for h in heads]


async def test_a_repeated_head_sends_the_bytes_the_full_path_sends() -> None:
    line = b"GET /a HTTP/1.1\r\nHost: app.test\r\nCookie: c=1\r\nConnection: keep-alive, x-drop"
    request = line + b"\r\nX-Drop: 1\r\nX-Forwarded-For: 9.9.9.9\r\nContent-Length: 0\r\n\r\n"
    pieces = [request, request.replace(b"/a", b"/b"), request]
    hits = request_head.KEPT.hits
    new = await run(pieces, old=False)
    assert request_head.KEPT.hits >= hits + 2  # (the second and third from the kept head)
    assert new == await run(pieces, old=True)
    first, second, third = upstream_heads(new[2][0])
    assert first == third == second.replace(b"/b", b"/a")
    assert b"X-Drop" not in first
    assert b"9.9.9.9" not in first
    ids = re.findall(rb"X-Request-ID: ([^\r]*)", new[2][0])
    assert len(set(ids)) == 3


async def test_a_kept_head_gets_each_requests_own_peer_id_and_host() -> None:
    # the same head bytes from an untrusted client, a trusted proxy and in absolute form
    # (whose Host the target replaces), then through a proxy with another Via
    head = b" HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    proxy = Proxy(trusted_proxies=("10.0.0.0/8",))
    sent = []
    for peer, target in [
        ("203.0.113.9", b"/p"),
        ("203.0.113.9", b"http://other.test/p"),
        ("203.0.113.9", b"/p"),
        ("10.1.1.1", b"/p"),
        ("10.1.1.1", b"/p"),
    ]:
        client = proxy.client((peer, 40000))
        client.send(b"GET " + target + head)
        await client.settle()
        up = await proxy.upstream(n=len(proxy.pool().opened))
        sent.append(up.transport.take())
        up.reply(OK)
    other = Proxy(via="2.0 other")
    client = other.client(("203.0.113.9", 40000))
    client.send(b"GET /p" + head)
    await client.settle()
    sent.append((await other.upstream()).transport.take())
    untrusted, absolute, untrusted_again, trusted, trusted_again, via = sent
    assert upstream_heads(untrusted_again) == upstream_heads(untrusted)
    assert upstream_heads(trusted_again) == upstream_heads(trusted)
    assert b"X-Forwarded-For: 203.0.113.9\r\n" in untrusted
    assert b"X-Forwarded-For: 1.2.3.4, 10.1.1.1\r\n" in trusted
    assert b"Host: other.test\r\n" in absolute
    assert b"app.test" not in absolute
    assert b"X-Forwarded-Host: other.test\r\n" in absolute
    assert b"Via: 2.0 other\r\n" in via
    assert b"splitproxy" not in via
    assert b"Via: 1.1 splitproxy\r\n" in untrusted
    ids = [re.search(rb"X-Request-ID: ([^\r]*)", s) for s in sent]
    assert len({m.group(1) for m in ids if m}) == 6


async def _kept_then(
    rest: bytes, target: bytes, old: bool, limits: dict[str, Any], names: bool
) -> tuple[bytes, bytes, list[dict[bytes, bytes]]]:
    """What a client got for ``GET /p`` + ``rest``, then what another got for ``GET target``
    + ``rest`` once the proxy's ``limits`` changed (``names``: and the names it wants), and
    the wanted headers of each exchange started."""
    proxy = Proxy()
    proxy.ctx.request_ids = RequestIds(b"same")
    got = []
    for second, t in enumerate((b"/p", target)):
        if second:
            for name, value in limits.items():
                setattr(proxy.ctx, name, value)
            if names:
                proxy.ctx.wanted_headers = proxy.ctx.wanted_headers | {b"x-a"}
        if old:
            former = OldClient(proxy.ctx)
            client = Client(former, MockTransport())
            attach(former, client.transport)
        else:
            client = proxy.client()
        client.send(b"GET " + t + rest)
        await client.settle()
        for up, transport in proxy.pool().opened:
            if transport.take():
                up.data_received(OK)
        got.append(bytes(client.transport.written))
    wanted = [dict(ex.wanted) for ex in proxy.observer.started]  # (x-a's among them, or not)
    return got[0], got[1], wanted


@pytest.mark.parametrize(
    ("limits", "target", "names", "status"),
    [
        ({"max_header_bytes": 60}, b"/p", False, 431),  # the kept head's bytes over the limit
        ({"max_headers": 2}, b"/p", False, 431),  # its count over the limit
        ({"max_header_bytes": 70}, b"/" + b"a" * 80, False, 414),  # a target over it
        ({}, b"/p", True, 200),  # other wanted names: read again
        ({}, b"/q", False, 200),
    ],
)
async def test_a_kept_head_meets_the_proxys_limits_of_the_moment_as_the_full_path(
    limits: dict[str, Any], target: bytes, names: bool, status: int
) -> None:
    rest = b" HTTP/1.1\r\nHost: app.test\r\nX-A: " + b"1" * 30 + b"\r\nX-B: 2\r\n\r\n"
    hits = request_head.KEPT.hits
    new = await _kept_then(rest, target, False, limits, names)
    assert request_head.KEPT.hits > hits or status != 200 or names  # (the kept head's way)
    assert new == await _kept_then(rest, target, True, limits, names)
    assert new[0].startswith(b"HTTP/1.1 200 ")
    assert new[1].startswith(b"HTTP/1.1 %d " % status)
