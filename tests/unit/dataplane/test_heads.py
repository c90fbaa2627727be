"""Head rewriting as pure functions: bytes in, bytes out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from splitproxy.dataplane.heads import (
    Forwarding,
    request_head,
    response_head,
    spoofed_forwarding,
)
from splitproxy.dataplane.http11 import HOP_BY_HOP, BodyRelay

RID = b"rid-1"


def req(
    headers: list[tuple[bytes, bytes]], consumed: dict[bytes, bytes] | None = None, **kw: Any
) -> bytes:
    options: dict[str, Any] = {
        "peer": "203.0.113.7",
        "trusted_peer": False,
        "raw_host": b"app.test",
        "via_line": b"Via: 1.1 splitproxy\r\n",
        "request_id": RID,
        "synthetic": False,
        "chunked": False,
        "content_length": None,
        "upgrade": None,
    }
    options.update(kw)
    return request_head(b"GET", b"/p?q=1", headers, consumed or {}, **options)


def resp(
    headers: list[tuple[bytes, bytes]], status: int = 200, **kw: Any
) -> tuple[bytes, BodyRelay, bool]:
    options: dict[str, Any] = {
        "request_id": RID,
        "http11": True,
        "no_body": False,
        "closing": False,
        "upgrade": None,
    }
    options.update(kw)
    return response_head(status, b"OK", headers, **options)


def test_request_head_adds_forwarding_via_and_request_id() -> None:
    head = req([(b"Host", b"app.test"), (b"Accept", b"*/*")])
    assert head == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: app.test\r\nVia: 1.1 splitproxy\r\nX-Request-ID: rid-1\r\n\r\n"
    )


def test_a_trusted_peer_extends_x_forwarded() -> None:
    consumed = {
        b"x-forwarded-for": b"198.51.100.1",
        b"x-forwarded-proto": b"https",
        b"x-forwarded-host": b"public.example",
    }
    head = req([], consumed, trusted_peer=True)
    assert b"X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n" in head
    assert b"X-Forwarded-Proto: https\r\n" in head
    assert b"X-Forwarded-Host: public.example\r\n" in head
    # an untrusted peer's are replaced
    head = req([], consumed, trusted_peer=False)
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in head
    assert b"X-Forwarded-Proto: http\r\n" in head


def test_request_framing_upgrade_and_synthetic_lines() -> None:
    head = req([], chunked=True, upgrade=b"websocket", synthetic=True, via_line=b"")
    assert head.endswith(
        b"X-Request-ID: rid-1\r\nX-Splitproxy-Synthetic: 1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert b"Via:" not in head


def test_response_head_keeps_the_length_and_echoes_the_request_id() -> None:
    head, relay, closing = resp([(b"Content-Length", b"2"), (b"X-A", b"1")])
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-Request-ID: rid-1\r\n\r\n"
    )
    assert (relay, closing) == (BodyRelay.RAW, False)


def test_response_without_length_is_rechunked_or_closes() -> None:
    head, relay, closing = resp([(b"X-A", b"1")])
    assert head.endswith(b"Transfer-Encoding: chunked\r\nX-Request-ID: rid-1\r\n\r\n")
    assert (relay, closing) == (BodyRelay.RECHUNK, False)
    head, relay, closing = resp([(b"X-A", b"1")], http11=False)
    assert head.endswith(b"X-Request-ID: rid-1\r\nConnection: close\r\n\r\n")
    assert (relay, closing) == (BodyRelay.RAW, True)


def test_transfer_encoding_overrides_content_length() -> None:
    head, relay, _ = resp([(b"Content-Length", b"9"), (b"Transfer-Encoding", b"chunked")])
    assert b"Content-Length" not in head
    assert b"Transfer-Encoding: chunked\r\n" in head
    assert relay is BodyRelay.RECHUNK


def test_upstream_request_id_is_echoed_instead_of_ours() -> None:
    head, _, _ = resp([(b"Content-Length", b"0"), (b"X-Request-ID", b"theirs")])
    assert head.count(b"X-Request-ID") == 1
    assert b"X-Request-ID: theirs\r\n" in head


def test_keep_alive_is_stated_for_http10_and_close_when_decided() -> None:
    head, _, closing = resp([(b"Content-Length", b"0")], http11=False)
    assert head.endswith(b"Connection: keep-alive\r\n\r\n")
    assert not closing
    head, _, closing = resp([(b"Content-Length", b"0")], closing=True)
    assert head.endswith(b"Connection: close\r\n\r\n")
    assert closing


def test_101_states_the_upgrade_and_never_closes() -> None:
    head, relay, closing = resp(
        [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", b"x")],
        status=101,
        upgrade=b"websocket",
        closing=True,
    )
    assert head == (
        b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nX-Request-ID: rid-1\r\n\r\n"
    )
    assert (relay, closing) == (BodyRelay.RAW, False)


def test_no_body_responses_keep_their_headers_as_they_are() -> None:
    head, relay, _ = resp([(b"Content-Length", b"1000")], no_body=True)
    assert b"Content-Length: 1000\r\n" in head
    assert b"Transfer-Encoding" not in head
    assert relay is BodyRelay.RAW


def test_extra_lines_come_after_the_request_id() -> None:
    head, _, _ = resp([(b"Content-Length", b"0")], extra=b"Set-Cookie: s=1\r\n")
    assert head.endswith(b"X-Request-ID: rid-1\r\nSet-Cookie: s=1\r\n\r\n")


# --- properties -------------------------------------------------------------------------------

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
names = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP)),
    st.sampled_from([b"x-private", b"x-other", b"accept", b"cookie", b"set-cookie"]),
    token.map(lambda n: b"x-" + n),
)
cased = names.flatmap(lambda n: st.sampled_from([n, n.upper(), n.title(), n.capitalize()]))
values = st.binary(min_size=0, max_size=16).map(lambda v: bytes(b for b in v if 0x21 <= b <= 0x7E))
headers_lists = st.lists(st.tuples(cased, values), max_size=12)


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return out


@given(headers=headers_lists, named=st.lists(names, max_size=3), http11=st.booleans())
@example(headers=[(b"Accept", b"x"), (b"Connection", b"accept")], named=[], http11=True)
def test_response_hop_by_hop_and_connection_named_headers_never_survive(
    headers: list[tuple[bytes, bytes]], named: list[bytes], http11: bool
) -> None:
    if named:
        headers = [*headers, (b"Connection", b", ".join(named))]
    head, _, _ = resp(headers, http11=http11, no_body=True)
    # what every Connection header names, the drawn ones included (a drawn header may be a
    # Connection one naming another drawn header: that one goes too)
    listed = [
        token.strip().lower()
        for n, v in headers
        if n.lower() == b"connection"
        for token in v.split(b",")
    ]
    drop = {n for n in listed if n and n not in (b"close", b"keep-alive")}
    added = {b"x-request-id", b"connection"}  # the proxy's own lines
    kept = [
        (n, v)
        for n, v in header_lines(head)
        if n.lower() not in added or (n.lower() == b"x-request-id" and v != RID)
    ]
    for name, _ in kept:
        assert name.lower() not in HOP_BY_HOP
        assert name.lower() not in drop
    # every other header is kept, with its bytes and in its order
    expected = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in drop]
    assert kept == expected


@given(headers=headers_lists, named=st.lists(names, max_size=3))
def test_request_headers_named_in_connection_never_survive(
    headers: list[tuple[bytes, bytes]], named: list[bytes]
) -> None:
    # the client parser has already left the hop-by-hop ones out of ``headers``
    headers = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
    consumed = {b"connection": b", ".join(named)} if named else {}
    head = req(headers, consumed, via_line=b"")
    drop = {n for n in named if n not in (b"close", b"keep-alive", b"upgrade")}
    lines = header_lines(head)
    forwarded = lines[: len(lines) - 4]  # then X-Forwarded-For/Proto/Host, X-Request-ID
    expected = [(n, v) for n, v in headers if n.lower() not in drop]
    assert forwarded == expected
    assert [n for n, _ in lines[-4:]] == [
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"X-Request-ID",
    ]


@pytest.mark.parametrize("named", [b"content-length", b"host", b"transfer-encoding", b"HOST, x-a"])
def test_connection_never_removes_the_framing_or_the_host(named: bytes) -> None:
    head = req(
        [(b"Host", b"app.test"), (b"Content-Length", b"5"), (b"X-A", b"1")],
        {b"connection": named},
        content_length=5,
    )
    assert b"\r\nHost: app.test\r\n" in head
    assert head.count(b"Content-Length: 5\r\n") == 1
    assert (b"X-A: 1" in head) == (b"x-a" not in named.lower())


def test_the_framing_is_the_proxys_own() -> None:
    sent = [(b"Host", b"h"), (b"content-length", b"007")]
    assert req(sent, content_length=7).count(b"ontent-") == 1
    assert b"Content-Length: 7\r\n" in req(sent, content_length=7)
    chunked = req([(b"Host", b"h")], chunked=True, content_length=None)
    assert b"Transfer-Encoding: chunked\r\n" in chunked
    assert b"Content-Length" not in chunked
    assert b"Content-Length" not in req([(b"Host", b"h")])  # no body, none invented


def test_x_real_ip_and_forwarded_are_believed_only_from_a_trusted_peer() -> None:
    sent = {b"x-real-ip": b"6.6.6.6", b"forwarded": b"for=6.6.6.6;proto=https"}
    untrusted = req([(b"Host", b"h")], sent)
    assert b"X-Real-IP: 203.0.113.7\r\n" in untrusted
    assert b"Forwarded: for=203.0.113.7;proto=http\r\n" in untrusted
    assert b"6.6.6.6" not in untrusted
    trusted = req([(b"Host", b"h")], sent, trusted_peer=True)
    assert b"X-Real-IP: 6.6.6.6\r\n" in trusted
    assert b"Forwarded: for=6.6.6.6;proto=https, for=203.0.113.7;proto=http\r\n" in trusted
    v6 = req([(b"Host", b"h")], {b"forwarded": b"for=x"}, peer="2001:db8::1")
    assert b'Forwarded: for="[2001:db8::1]";proto=http\r\n' in v6
    assert b"X-Real-IP" not in req([(b"Host", b"h")])  # none invented


@pytest.mark.parametrize(
    "name", [b"x_forwarded_for", b"X_Forwarded_Proto", b"x_real_ip", b"X_FORWARDED-HOST"]
)
def test_underscore_spellings_of_forwarding_headers_are_spoofs(name: bytes) -> None:
    assert spoofed_forwarding(name.lower())
    assert not spoofed_forwarding(b"x_custom_header")


# -- a kept head's parts (`heads.Forwarding`) -------------------------------------------------
_NAMES = [b"Host", b"Accept", b"content-length", b"Content-Length", b"Keep-Alive", b"X-A", b"te"]
_CONSUMED = {
    b"connection": [b"keep-alive", b"close", b"x-a, te", b"Content-Length, host", b"X-A"],
    b"x-forwarded-for": [b"1.2.3.4", b""],
    b"x-forwarded-proto": [b"https", b""],
    b"x-forwarded-host": [b"front.test", b""],
    b"x-real-ip": [b"6.6.6.6"],
    b"forwarded": [b"for=6.6.6.6"],
}
_VIAS = [b"Via: 1.1 splitproxy\r\n", b"", b"Via: 2.0 other\r\n"]
# what differs from one request to the next for the same head bytes
_REQUEST = st.fixed_dictionaries(
    {
        "method": st.sampled_from([b"GET", b"POST", b"CONNECT"]),
        "target": st.sampled_from([b"/", b"/a?b", b"*"]),
        "peer": st.sampled_from(["203.0.113.7", "10.0.0.1", "2001:db8::1"]),
        "trusted_peer": st.booleans(),
        "via_line": st.sampled_from(_VIAS),
        "request_id": st.sampled_from([b"rid-1", b"rid-2", b"x" * 40]),
        "synthetic": st.booleans(),
        "upgrade": st.sampled_from([None, None, b"websocket"]),
    }
)


@given(
    st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from([b"1", b"a b", b""])), max_size=5),
    st.dictionaries(st.sampled_from(list(_CONSUMED)), st.integers(0, 4), max_size=3),
    st.sampled_from([b"app.test", b""]),
    st.sampled_from([(False, None), (False, 0), (False, 12), (True, None)]),
    st.lists(_REQUEST, min_size=1, max_size=6),
)
def test_a_kept_head_forwards_what_the_full_path_forwards(
    headers: list[tuple[bytes, bytes]],
    picks: dict[bytes, int],
    raw_host: bytes,
    framing: tuple[bool, int | None],
    requests: list[dict[str, Any]],
) -> None:
    # One head's bytes (its lines, consumed headers, Host and framing) sent again and again by
    # requests that differ in all the rest: its parts, made by the first, then reused or made
    # again, give each request the bytes the full path gives it.
    consumed = {name: _CONSUMED[name][i % len(_CONSUMED[name])] for name, i in picks.items()}
    chunked, length = framing
    kept = Forwarding()
    for options in requests:
        fixed: dict[str, Any] = {"raw_host": raw_host, "chunked": chunked, "content_length": length}
        full = request_head(headers=headers, consumed=consumed, **fixed, **options)
        assert (
            request_head(headers=headers, consumed=consumed, **fixed, **options, kept=kept) == full
        )
