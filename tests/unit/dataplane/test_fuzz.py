"""Hypothesis throws hostile request streams at the HTTP core (no sockets).

Whatever the bytes and however they are split, the client connection never raises, the client
only ever receives HTTP/1.1 responses, and the upstream never receives more requests than the
proxy parsed: each request the upstream can parse out of what it was sent was an exchange the
proxy made (no smuggling by framing tricks).
"""

from __future__ import annotations

import contextlib

import httptools
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.dataplane.harness import Proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"G ET", b"", b"\x00"])
targets = st.sampled_from(
    [b"/", b"/a?b=c", b"*", b"http://app.test/x", b"/%00", b"/\xff", b"//", b"/a b", b""]
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"", b"HTTP/1.1 x"])
framing_headers = st.sampled_from(
    [
        b"Content-Length: 5",
        b"Content-Length: 0",
        b"Content-Length: -1",
        b"Content-Length: 5, 5",
        b"Content-Length: 1e3",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding: chunked, identity",
        b"Transfer-Encoding : chunked",
        b" Transfer-Encoding: chunked",
        b"Connection: content-length",
        b"Connection: close",
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Upgrade: h2c",
        b"Expect: 100-continue",
        b"Host: app.test",
        b"Host: app.test, evil.test",
        b"X_Forwarded_For: 6.6.6.6",
        b"X-Long: " + b"a" * 300,
    ]
)
headers = st.lists(st.one_of(framing_headers, st.binary(max_size=24)), max_size=6)
bodies = st.sampled_from(
    [
        b"",
        b"hello",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"ffffffffffffffffff\r\n",
    ]
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    body = draw(bodies)
    fields = draw(headers)
    if draw(st.booleans()):  # a length that really frames the body (smuggled request included)
        fields.insert(draw(st.integers(0, len(fields))), b"Content-Length: %d" % len(body))
    head = b"\r\n".join([line, b"Host: app.test", *fields])
    return head + b"\r\n\r\n" + body


@st.composite
def stream(draw: st.DrawFn) -> list[bytes]:
    """Requests (or raw bytes) back to back, cut at arbitrary points."""
    data = b"".join(draw(st.lists(st.one_of(request(), st.binary(max_size=40)), max_size=4)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    pieces, last = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[last:cut])
        last = cut
    return [p for p in pieces if p]


class _Count:
    """An httptools callback sink: how many requests the upstream would see."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def upstream_requests(data: bytes) -> int:
    counter = _Count()
    parser = httptools.HttpRequestParser(counter)
    with contextlib.suppress(httptools.HttpParserUpgrade):  # a tunnel: not HTTP any more
        parser.feed_data(data)
    return counter.complete


SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream())
@example(  # the classic: Connection names the framing away
    [
        b"POST / HTTP/1.1\r\nHost: app.test\r\nConnection: content-length\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLE), SMUGGLE)
    ]
)
async def test_hostile_request_streams_never_crash_never_smuggle(pieces: list[bytes]) -> None:
    proxy = Proxy(max_header_bytes=1024, max_headers=16, max_body_bytes=64)
    client = proxy.client()
    sent_upstream: dict[int, bytearray] = {}
    answered: dict[int, int] = {}
    for piece in [*pieces, b""]:
        if piece and not client.transport.closed:
            client.send(piece)
        for _ in range(4):  # let exchanges connect, answer each request the upstream got
            await client.settle()
            for n, (up, transport) in enumerate(proxy.pool().opened):
                sent_upstream.setdefault(n, bytearray()).extend(transport.take())
                complete = upstream_requests(bytes(sent_upstream[n]))
                while answered.get(n, 0) < complete and not transport.closed:
                    answered[n] = answered.get(n, 0) + 1
                    up.data_received(OK)
    out = client.transport.take()
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    served = sum(up.served for up, _ in proxy.pool().opened)
    parsed = sum(upstream_requests(bytes(data)) for data in sent_upstream.values())
    assert parsed <= served, (pieces, dict(sent_upstream))
