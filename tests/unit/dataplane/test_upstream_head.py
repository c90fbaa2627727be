"""The response head read from its bytes (`heads.response_fields`, no per-line callbacks)
gives what the former per-header path gave: llhttp's ``on_status`` and ``on_header`` pieces,
the same refusals, the same framing, and byte for byte the same client head
(`heads.response_head`), over any status line, header lines and whitespace, any split of the
head over reads, interim responses before it and line ends before those; and again when its
lines come back (kept by their bytes)."""

from __future__ import annotations

import itertools
from unittest import mock

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import FailureKind
from splitproxy.dataplane import heads as heads_module
from splitproxy.dataplane import upstream_head
from splitproxy.dataplane.context import CoarseClock
from splitproxy.dataplane.heads import Fields, response_fields, response_head
from splitproxy.dataplane.http11 import BodyRelay, ResponseBody, no_body_status
from splitproxy.dataplane.pools import UpstreamPool
from splitproxy.dataplane.upstream import (
    MAX_RESPONSE_HEADERS,
    UpstreamConnection,
    UpstreamState,
)
from splitproxy.dataplane.upstream_head import HeadError, read_head
from tests.unit.dataplane.harness import MockTransport, attach

Heads = list[tuple[int, bytes, list[tuple[bytes, bytes]]]]  # the final heads; None: refused


class Refused(Exception):
    pass


def old_framing(headers: list[tuple[bytes, bytes]]) -> tuple[ResponseBody, int, str]:
    """`upstream._framing` as it was (its refusal as the message it raised)."""
    framed = False
    chunked = False
    length = -1
    for name, value in headers:
        n = len(name)
        if n == 14 or n == 17:
            lname = name.lower()
            if lname == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    return ResponseBody.FRAMED, -1, f"unsupported transfer coding {value[:64]!r}"
                framed = chunked = True
            elif lname == b"content-length":
                framed = True
                length = int(value)
    if not framed:
        return ResponseBody.UNTIL_CLOSE, -1, ""
    return ResponseBody.FRAMED, -1 if chunked else length, ""


class PerHeader:
    """The former path: llhttp's ``on_status`` and ``on_header`` pieces, the header count
    checked per header, the framing checked when the head is complete."""

    def __init__(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.heads: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_RESPONSE_HEADERS:
            raise Refused
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        reason, self.reason = self.reason, b""
        headers, self.headers = self.headers, []
        status = self.parser.get_status_code()
        if status < 200:
            return
        if not no_body_status(status) and old_framing(headers)[2]:
            raise Refused
        self.heads.append((status, reason, headers))


def per_header(
    reads: list[bytes],
) -> Heads | None:
    ref = PerHeader()
    try:
        for data in reads:
            ref.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return ref.heads


class Sink:
    def __init__(self) -> None:
        self.heads: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.failed: list[FailureKind] = []

    def upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.heads.append((status, reason, headers))

    def upstream_body(self, data: bytes | memoryview) -> None:
        pass

    def upstream_read_done(self) -> None:
        pass

    def upstream_complete(self) -> None:
        pass

    def upstream_upgraded(self, rest: bytes) -> None:
        pass

    def upstream_failed(self, kind: FailureKind) -> None:
        self.failed.append(kind)

    def upstream_writable(self, writable: bool) -> None:
        pass


FRAMINGS: list[tuple[object, ...]] = []  # what `response_fields` said of each final head


def spied_fields(status: int, lines: list[bytes]) -> tuple[bytes, Fields, ResponseBody, int, str]:
    read = response_fields(status, lines)
    FRAMINGS.append(read[2:])
    return read


def from_bytes(reads: list[bytes], buffered: bool) -> Heads | None:
    pool = UpstreamPool("up.test", 80, CoarseClock(5.0), connect_timeout=1.0, idle_timeout=4.0)
    up = UpstreamConnection(pool)
    attach(up, MockTransport(("up.test", 80)))
    sink = Sink()
    up.bind(sink, head_only=False)
    for data in reads:
        if up.state is UpstreamState.CLOSED:
            break
        if buffered:
            buf = up.get_buffer(-1)
            buf[: len(data)] = data
            up.buffer_updated(len(data))
        else:
            up.data_received(data)
    if sink.failed:
        assert sink.failed == ["protocol"]
        return None
    return sink.heads


# -- heads to read ------------------------------------------------------------------------------
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPECIAL = [
    b"Connection", b"Content-Length", b"Transfer-Encoding", b"Keep-Alive", b"X-Request-ID",
    b"TE", b"Trailer", b"Upgrade", b"Proxy-Connection", b"Server", b"ETag",
]  # fmt: skip
names = st.one_of(
    st.sampled_from(_SPECIAL).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()])),
    st.binary(min_size=1, max_size=12).map(lambda b: bytes(_TCHAR[x % len(_TCHAR)] for x in b)),
)
refused_names = st.sampled_from([b"", b"X Y", b"X\t", b"X-\x80"])
safe_values = st.lists(
    st.sampled_from(
        [b"a", b"b", b" ", b"\t", b",", b":", b"0", b"5", b"chunked", b"close", b"keep-alive",
         b"gzip", b"\x80", b"\xff", b'"', b"te", b"server", b"content-length", b"x-a"]
    ),
    max_size=6,
).map(b"".join)  # fmt: skip
# a CR, LF, NUL or DEL in a value is refused, and so is a folded line (obs-fold)
risky_values = st.tuples(
    safe_values, st.sampled_from([b"\r", b"\n", b"\x00", b"\x7f", b"\r\n ", b"\r\n\t"]), safe_values
).map(b"".join)
separators = st.sampled_from([b":", b": ", b": ", b": ", b":  ", b":\t", b": \t"])
digits = st.integers(0, 99999).map(lambda n: b"%d" % n)
lines = st.tuples(
    names, separators, st.one_of(safe_values, digits, digits, st.just(b"chunked"))
).map(b"".join)
refused_lines = st.one_of(
    st.tuples(names, separators, risky_values),
    st.tuples(refused_names, separators, safe_values),
    st.tuples(names, st.just(b" :"), safe_values),  # whitespace before the colon
).map(b"".join)
statuses = st.one_of(
    st.integers(200, 599), st.integers(200, 599), st.sampled_from([204, 304]), st.integers(0, 999)
).filter(lambda s: s != 101)
reasons = st.one_of(
    st.lists(st.sampled_from([b"O", b"K", b" ", b"\t", b"\x80", b":", b"\x00"]), max_size=5),
    st.lists(st.sampled_from([b"O", b"K", b" ", b"\r"]), max_size=3),
).map(b"".join)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"RTSP/1.0", b"ICE/1.1"])
gaps = st.sampled_from([b" ", b" ", b" ", b"  ", b""])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Line ends, interim responses, then one final head (its body never comes)."""
    wire = draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r\n\r\n"]))
    for _ in range(draw(st.integers(0, 2))):
        wire += b"HTTP/1.1 %d Info\r\n%s\r\n" % (
            draw(st.sampled_from([100, 103])),
            b"".join(line + b"\r\n" for line in draw(st.lists(lines, max_size=2))),
        )
    status = draw(statuses)
    code = b"%03d" % status if status < 1000 else b"%d" % status
    wire += draw(versions) + b" " + code + draw(gaps) + draw(reasons) + b"\r\n"
    fields = draw(st.lists(lines, max_size=8))
    if draw(st.integers(0, 3)) == 0:  # one line llhttp refuses, somewhere
        fields.insert(draw(st.integers(0, len(fields))), draw(refused_lines))
    wire += b"".join(line + b"\r\n" for line in fields)
    return wire + b"\r\n"


def cut(wire: bytes, cuts: list[int]) -> list[bytes]:
    marks = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(marks)]


@settings(max_examples=600, deadline=None)
@given(heads(), st.lists(st.integers(0, 4096), max_size=4), st.booleans())
def test_the_head_read_from_its_bytes_is_the_per_header_paths(
    wire: bytes, cuts: list[int], buffered: bool
) -> None:
    reads = cut(wire, cuts)
    want = per_header(reads)
    FRAMINGS.clear()
    with (
        mock.patch.object(upstream_head, "KEPT", upstream_head._Kept()),
        mock.patch.object(upstream_head, "response_fields", spied_fields),
    ):
        assert from_bytes(reads, buffered) == want
        assert from_bytes(reads, buffered) == want  # again: the head (its lines) now kept
    if want:  # the framing the former `_framing` found (llhttp refused what it would refuse)
        assert [old_framing(want[0][2])] == FRAMINGS


@settings(max_examples=400, deadline=None)
@given(
    heads(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([b"", b"Set-Cookie: s=1\r\n"]),
)
def test_the_client_head_is_the_same_byte_for_byte(
    wire: bytes, http11: bool, no_body: bool, closing: bool, extra: bytes
) -> None:
    got = from_bytes([wire], buffered=False)
    if not got:  # refused, or only interim heads
        return
    status, reason, headers = got[0]
    assert isinstance(headers, Fields)
    heads: list[tuple[bytes, BodyRelay, bool]] = []
    for _ in range(2):  # the first makes `Fields.prepared`, the second reuses it
        for fields in (headers, list(headers)):
            heads.append(
                response_head(
                    status,
                    reason,
                    fields,
                    request_id=b"rid",
                    http11=http11,
                    no_body=no_body,
                    closing=closing,
                    upgrade=None,
                    extra=extra,
                )
            )
    assert heads[0] == heads[1] == heads[2] == heads[3]


def test_the_reason_and_values_are_read_as_llhttp_gives_them() -> None:
    head = (
        b"HTTP/1.1 200  Very  Ok \r\nA:b  \r\nB:\t x\t\r\nC:\r\nD:: e:f\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert from_bytes([head], buffered=False) == [
        (200, b" Very  Ok ", [(b"A", b"b  "), (b"B", b"x\t"), (b"C", b""), (b"D", b": e:f"),
                              (b"Content-Length", b"0")]),
    ]  # fmt: skip
    assert per_header([head]) == from_bytes([head], buffered=False)


def test_more_response_headers_than_the_limit_spread_over_reads_are_refused() -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_RESPONSE_HEADERS + 1))
    wire = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"
    assert from_bytes(cut(wire, [100, 700, 1500]), buffered=True) is None
    exact = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_RESPONSE_HEADERS))
    ok = from_bytes([b"HTTP/1.1 200 OK\r\n" + exact + b"\r\n"], buffered=False)
    assert ok is not None
    assert len(ok[0][2]) == MAX_RESPONSE_HEADERS


def test_the_lines_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads_module, "_lines", {})
    monkeypatch.setattr(heads_module, "_LINES_MAX", 8)
    for i in range(20):
        response_fields(200, [b"HTTP/1.1 200 OK", b"X: %d" % i, b"Y:  " + b"v" * 300])
        assert 0 < len(heads_module._lines) <= 8
    assert all(len(line) <= 256 for line in heads_module._lines)


def test_a_head_read_again_from_kept_lines_is_the_same() -> None:
    lines = [b"HTTP/1.1 200 OK", b"Content-Length: 12", b"Connection: keep-alive", b"A:b"]
    first = response_fields(200, lines)
    again = response_fields(200, lines)
    assert first == again == (
        b"OK", [(b"Content-Length", b"12"), (b"Connection", b"keep-alive"), (b"A", b"b")],
        ResponseBody.FRAMED, 12, "",
    )  # fmt: skip
    assert per_header([b"\r\n".join(lines) + b"\r\n\r\n"]) == [(200, first[0], first[1])]


def test_a_kept_head_is_the_head_read_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_head, "KEPT", upstream_head._Kept())
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive"
    kept = read_head(head, 200, MAX_RESPONSE_HEADERS)
    assert read_head(head, 200, MAX_RESPONSE_HEADERS) is kept
    assert kept == response_fields(200, head.split(b"\r\n"))
    with pytest.raises(HeadError):
        read_head(head + b"\r\nX: 1" * MAX_RESPONSE_HEADERS, 200, MAX_RESPONSE_HEADERS)


def test_heads_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = upstream_head._Kept()
    monkeypatch.setattr(upstream_head, "KEPT", kept)
    for i in range(upstream_head.TABLE_MAX + 10):
        read_head(b"HTTP/1.1 200 OK\r\nX: %d" % i, 200, MAX_RESPONSE_HEADERS)
        read_head(b"HTTP/1.1 200 OK\r\nX: %d" % i, 200, MAX_RESPONSE_HEADERS)  # (it paid)
        assert 0 < len(kept.heads) <= upstream_head.TABLE_MAX
    assert kept.pause == 0
    big = b"HTTP/1.1 200 OK\r\nX: " + b"v" * upstream_head.KEEP_MAX
    first = read_head(big, 200, MAX_RESPONSE_HEADERS)
    assert big not in kept.heads
    assert read_head(big, 200, MAX_RESPONSE_HEADERS) == first


def test_heads_that_never_come_back_pause_the_keeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_head, "PAUSE", 5)  # (a table takes it when made)
    kept = upstream_head._Kept()
    monkeypatch.setattr(upstream_head, "KEPT", kept)
    n = 0

    def new_head() -> bytes:
        nonlocal n
        n += 1
        head = b"HTTP/1.1 200 OK\r\nX-Request-ID: %d" % n
        read_head(head, 200, MAX_RESPONSE_HEADERS)
        return head

    for _ in range(upstream_head.TABLE_MAX + 1):  # a table's worth, none found again
        new_head()
    assert (len(kept.heads), kept.pause) == (1, 5)
    paused = [new_head() for _ in range(5)]
    assert not any(head in kept.heads for head in paused)
    assert new_head() in kept.heads  # keeping again
