"""The edits a proxy makes to message heads, as pure functions from bytes to bytes.

`request_head` builds what the upstream receives: the client's request line and headers less
the ones the proxy consumed (hop-by-hop, ``X-Forwarded-*``, ``X-Request-ID``, ``Expect``, the
synthetic marker; the client parser leaves those out of ``headers`` as it reads) and less any
that ``Connection`` names, then ``X-Forwarded-For/Proto/Host``, ``Via``, ``X-Request-ID`` and
the framing the proxy sends. `response_head` builds what the client receives from the
upstream's status and headers: hop-by-hop ones and those ``Connection`` names dropped, the
framing chosen for the client (kept, re-chunked, or close-delimited for HTTP/1.0), the request
id echoed and the keep-alive decision stated. Every other header keeps its bytes and order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import httptools

from splitproxy.dataplane.http11 import (
    HOP_BY_HOP,
    RAW,
    RECHUNK,
    BodyRelay,
    connection_tokens,
    status_line,
)
from splitproxy.dataplane.routing import CompiledRoute
from splitproxy.dataplane.synthetic import HEADER_LOWER as SYNTHETIC
from splitproxy.dataplane.synthetic import UPSTREAM_LINE
from splitproxy.dataplane.upstream_head import Fields

FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
"""Headers that tell the upstream who the client is: only a trusted peer's are believed."""

CONSUMED: Final = HOP_BY_HOP | FORWARDING | {SYNTHETIC, b"expect", b"x-request-id"}
"""Request headers the proxy consumes or replaces rather than forwards as they came."""


def spoofed_forwarding(lname: bytes) -> bool:
    """``X_Forwarded_For`` and kin: many servers (CGI, WSGI, PHP) read ``_`` as ``-``, so a
    client could slip a forwarding header past the proxy under that spelling. Never
    forwarded (nginx drops every header with an underscore by default)."""
    return lname.replace(b"_", b"-") in FORWARDING


# Connection tokens that are options, not names of headers to drop.
_REQUEST_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Headers a request's ``Connection`` can never remove: the framing and the Host the upstream
# parses the request by. Dropping ``Content-Length`` because a client listed it would send the
# body unframed, and the upstream would read it as the next request (request smuggling).
_NEVER_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})
_RESPONSE_OPTIONS: Final = frozenset({b"close", b"keep-alive"})


def request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    consumed: Mapping[bytes, bytes],
    *,
    peer: str,
    trusted_peer: bool,
    raw_host: bytes,
    via_line: bytes,
    request_id: bytes,
    synthetic: bool,
    chunked: bool,
    content_length: int | None,
    upgrade: bytes | None,
) -> bytes:
    """The request head for the upstream.

    ``headers`` are the client's forwardable headers in order; ``consumed`` maps lower-cased
    names to the values of the consumed ones (``connection``, ``x-forwarded-*``). A trusted
    peer's ``X-Forwarded-*`` are extended, anyone else's replaced. The framing is always the
    proxy's own, from what it parsed: ``chunked`` (the body is re-encoded chunked) or
    ``content_length`` (None: the client sent none); a client's ``Content-Length`` line is never
    passed on as it came. ``upgrade``: a WebSocket upgrade to ask for.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    named = consumed.get(b"connection")
    dropped: set[bytes] = set()
    if named is not None:
        dropped = {
            t
            for t in connection_tokens(named)
            if t not in _REQUEST_OPTIONS and t not in _NEVER_DROPPED
        }
    for name, value in headers:
        if (dropped and name.lower() in dropped) or (
            len(name) == 14 and name.lower() == b"content-length"
        ):
            continue
        parts += (name, b": ", value, b"\r\n")
    if trusted_peer:
        prior = consumed.get(b"x-forwarded-for")
        xff = prior + b", " + peer.encode() if prior else peer.encode()
        proto = consumed.get(b"x-forwarded-proto") or b"http"
        fhost = consumed.get(b"x-forwarded-host") or raw_host
    else:
        xff, proto, fhost = peer.encode(), b"http", raw_host
    parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if fhost:
        parts += (b"X-Forwarded-Host: ", fhost, b"\r\n")
    # X-Real-IP and Forwarded (RFC 7239) are rewritten when the client sent them: a trusted
    # peer's kept (Forwarded: extended), anyone else's replaced by what the proxy saw.
    real_ip = consumed.get(b"x-real-ip")
    if real_ip is not None:
        parts += (b"X-Real-IP: ", real_ip if trusted_peer else peer.encode(), b"\r\n")
    forwarded = consumed.get(b"forwarded")
    if forwarded is not None:
        node = peer.encode() if ":" not in peer else b'"[' + peer.encode() + b']"'
        element = b"for=" + node + b";proto=http"
        if trusted_peer:
            element = forwarded + b", " + element
        parts += (b"Forwarded: ", element, b"\r\n")
    parts += (via_line, b"X-Request-ID: ", request_id, b"\r\n")
    if synthetic:
        parts.append(UPSTREAM_LINE)
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts += (b"Content-Length: ", b"%d" % content_length, b"\r\n")
    if upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """An absolute-form target (``http://h:8080/p?q``) as (authority, origin-form target);
    None when it is not a URL with a host."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    if not url.host:
        return None
    authority = url.host + (b":%d" % url.port if url.port else b"")
    return authority, (url.path or b"/") + (b"?" + url.query if url.query else b"")


def seed_cookie(route: CompiledRoute, seed: str) -> bytes:
    """The ``Set-Cookie`` line that gives a new client its sticky seed."""
    assert route.sticky_cookie is not None
    return b"Set-Cookie: %s=%s; Max-Age=%d; Path=/; HttpOnly; SameSite=Lax\r\n" % (
        route.sticky_cookie.encode(),
        seed.encode(),
        route.sticky_max_age,
    )


def response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    http11: bool,
    no_body: bool,
    closing: bool,
    upgrade: bytes | None,
    extra: bytes = b"",
) -> tuple[bytes, BodyRelay, bool]:
    """The response head for the client, how to relay the body, and whether the connection
    closes after it.

    ``http11``: the client spoke HTTP/1.1 (it can take a chunked body); ``no_body``: a HEAD
    request or a status without a body; ``closing``: the proxy already decided to close the
    client connection after this response; ``upgrade``: the client's ``Upgrade`` value (a 101
    states it back); ``extra``: whole header lines the proxy adds (a sticky ``Set-Cookie``).
    A 101 never closes: the connection becomes a tunnel.

    What comes of the upstream's status, reason and headers alone (`_Prepared`) is made once
    per `upstream_head.Fields` (one per distinct head the upstream sends) and kept on it.
    """
    prepared = headers.prepared if type(headers) is Fields else None
    if (
        type(prepared) is not _Prepared
        or prepared.status != status
        or prepared.reason is not reason
    ):
        prepared = _Prepared(status, reason, headers)
        if type(headers) is Fields:
            headers.prepared = prepared
    relay = RAW
    if status == 101:
        parts = [
            prepared.kept,
            b"Connection: Upgrade\r\nUpgrade: " + (upgrade or b"websocket") + b"\r\n",
        ]
    elif no_body:
        parts = [prepared.kept]
    elif prepared.chunked or not prepared.has_length:
        parts = [prepared.unframed]
        if http11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            relay = RECHUNK
        else:
            closing = True
    else:
        parts = [prepared.kept]
    if prepared.echo_id:
        parts += (b"X-Request-ID: ", request_id, b"\r\n")
    if extra:
        parts.append(extra)
    if status == 101:
        closing = False
    elif closing:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), relay, closing


class _Prepared:
    """The part of the client's head that the upstream's status, reason and headers make:
    the status line and the headers kept (``kept``), the same less the Content-Length that a
    chunked body overrides (``unframed``), and what the rest depends on."""

    __slots__ = ("chunked", "echo_id", "has_length", "kept", "reason", "status", "unframed")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        parts = [status_line(status, reason)]
        chunked = False
        length_at = -1
        has_length = False
        echo_id = True
        named = False  # a Connection header named an option or a header
        dropped: list[bytes] = []
        kinds = _kinds
        for name, value in headers:
            kind = kinds.get(name)
            if kind is None:
                kind = _kind(name)
            if kind:  # (most headers are _PLAIN: one test)
                if kind == _TRANSFER_ENCODING:
                    chunked = b"chunked" in value.lower()
                    continue
                if kind == _CONNECTION:
                    if value.lower() in _RESPONSE_OPTIONS:
                        # (a lone option, the usual ``keep-alive``, names no header to drop)
                        named = True
                    else:
                        tokens = connection_tokens(value)
                        named = named or bool(tokens)
                        dropped.extend(tokens)
                    continue
                if kind == _HOP:
                    continue
                if kind == _LENGTH:
                    has_length = True
                    length_at = len(parts)
                else:  # _REQUEST_ID: the upstream's own id is echoed instead of ours
                    echo_id = False
            parts += (name, b": ", value, b"\r\n")
        drop = {n for n in dropped if n not in _RESPONSE_OPTIONS} if dropped else None
        if drop:
            parts = _without(parts, drop)
            length_at = -1 if not has_length else _find(parts, b"content-length")
        self.kept = b"".join(parts)
        if chunked:
            if named and has_length and not drop:
                # two Content-Lengths (a head the parser refuses): with a Connection header,
                # the first is the one dropped, as when that header names one to drop
                length_at = _find(parts, b"content-length")
            if length_at >= 0:  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
                parts[length_at : length_at + 4] = []
            self.unframed = b"".join(parts)
        else:
            self.unframed = self.kept
        self.chunked = chunked
        self.has_length = has_length
        self.echo_id = echo_id


# What a response header's name means to `response_head`, by the name as the upstream spelled
# it: lower-casing each name and testing it against the hop-by-hop set and two names cost
# several times the look-up, for every header of every response. Bounded (names come from
# upstreams): names up to 64 bytes are kept, and the table starts over when full.
_PLAIN, _HOP, _TRANSFER_ENCODING, _CONNECTION, _LENGTH, _REQUEST_ID = range(6)
_kinds: dict[bytes, int] = {}
_KINDS_MAX: Final = 512


def _kind(name: bytes) -> int:
    lname = name.lower()
    if lname == b"transfer-encoding":
        kind = _TRANSFER_ENCODING
    elif lname == b"connection":
        kind = _CONNECTION
    elif lname in HOP_BY_HOP:
        kind = _HOP
    elif lname == b"content-length":
        kind = _LENGTH
    elif lname == b"x-request-id":
        kind = _REQUEST_ID
    else:
        kind = _PLAIN
    if len(name) <= 64:
        if len(_kinds) >= _KINDS_MAX:
            _kinds.clear()
        _kinds[name] = kind
    return kind


def _without(parts: list[bytes], drop: set[bytes]) -> list[bytes]:
    """Drop the header lines (name, ': ', value, CRLF) whose names a Connection header listed
    (``drop``: lower-cased, options left out)."""
    out = parts[:1]
    for i in range(1, len(parts), 4):
        if parts[i].lower() not in drop:
            out.extend(parts[i : i + 4])
    return out


def _find(parts: list[bytes], lname: bytes) -> int:
    for i in range(1, len(parts), 4):
        if parts[i].lower() == lname:
            return i
    return -1
