"""The edits a proxy makes to message heads, as pure functions from bytes to bytes.

`request_head` builds what the upstream receives: the client's request line and headers less
the ones the proxy consumed (hop-by-hop, ``X-Forwarded-*``, ``X-Request-ID``, ``Expect``, the
synthetic marker; the client parser leaves those out of ``headers`` as it reads) and less any
that ``Connection`` names, then ``X-Forwarded-For/Proto/Host``, ``Via``, ``X-Request-ID`` and
the framing the proxy sends. `response_head` builds what the client receives from the
upstream's status and headers: hop-by-hop ones and those ``Connection`` names dropped, the
framing chosen for the client (kept, re-chunked, or close-delimited for HTTP/1.0), the request
id echoed and the keep-alive decision stated. Every other header keeps its bytes and order.
`response_fields` reads an upstream's head from its lines (llhttp has checked them) and makes,
in the same pass, the part of the client's head that depends on the upstream alone
(`Prepared`, kept on the `Fields`), so that `response_head` only adds the client's part.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, cast

import httptools

from splitproxy.dataplane.http11 import (
    HOP_BY_HOP,
    RAW,
    RECHUNK,
    BodyRelay,
    ResponseBody,
    connection_tokens,
    status_line,
)
from splitproxy.dataplane.routing import CompiledRoute
from splitproxy.dataplane.synthetic import HEADER_LOWER as SYNTHETIC
from splitproxy.dataplane.synthetic import UPSTREAM_LINE

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


# An exchange's headers until its head is read (`exchange.Exchange`): shared and immutable (a
# change would raise, never reach another exchange); the one pass gives it the head's own
# (`request_head.read_request_head`), the per-header path new ones (`PerHeader.fill`).
# (An empty list and dict per exchange, then replaced, cost ~0.5 k instructions.)
NO_HEADERS: Final = cast("list[tuple[bytes, bytes]]", ())
NO_WANTED: Final = cast("dict[bytes, bytes]", MappingProxyType({}))

# Connection tokens that are options, not names of headers to drop.
_REQUEST_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Headers a request's ``Connection`` can never remove: the framing and the Host the upstream
# parses the request by. Dropping ``Content-Length`` because a client listed it would send the
# body unframed, and the upstream would read it as the next request (request smuggling).
_NEVER_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})
_RESPONSE_OPTIONS: Final = frozenset({b"close", b"keep-alive"})


class Forwarding:
    """What a kept request head (`request_head.KEPT`) sends upstream besides the request line,
    made by the first request that sends it and reused by those that repeat it: the head's
    bytes are ``method SP target`` + ``before_peer`` + the peer + ``before_id`` + the request
    id + ``end``. Every part but the method, the target, the peer and the id comes from the
    head's own bytes (its header lines, the consumed ones, the Host, the framing) or from
    ``via`` and ``trusted``, which it was made for; a request that differs in those, is
    synthetic, asks for an upgrade or carries ``X-Real-IP`` or ``Forwarded`` (their values
    name the peer) takes the full path. ``via`` None: not made (yet). (`Exchange.start`
    joins the parts itself when they fit its request: a call with `request_head`'s 14
    arguments cost ~1.5 k instructions.)"""

    __slots__ = ("before_id", "before_peer", "end", "trusted", "via")

    def __init__(self) -> None:
        self.via: bytes | None = None
        self.trusted = False
        self.before_peer = self.before_id = self.end = b""


def request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    consumed: Mapping[bytes, bytes],
    peer: str,  # (positional too: the exchange calls it so for every request)
    trusted_peer: bool,
    raw_host: bytes,
    via_line: bytes,
    request_id: bytes,
    synthetic: bool,
    chunked: bool,
    content_length: int | None,
    upgrade: bytes | None,
    kept: Forwarding | None = None,
) -> bytes:
    """The request head for the upstream.

    ``headers`` are the client's forwardable headers in order; ``consumed`` maps lower-cased
    names to the values of the consumed ones (``connection``, ``x-forwarded-*``). A trusted
    peer's ``X-Forwarded-*`` are extended, anyone else's replaced. The framing is always the
    proxy's own, from what it parsed: ``chunked`` (the body is re-encoded chunked) or
    ``content_length`` (None: the client sent none); a client's ``Content-Length`` line is never
    passed on as it came. ``upgrade``: a WebSocket upgrade to ask for. ``kept``: the head's
    `Forwarding` when its bytes are kept (``headers``, ``consumed``, ``raw_host`` and the
    framing as read from them): the parts made once are used, or made and kept.
    """
    if (kept is not None and not synthetic and upgrade is None
            and b"x-real-ip" not in consumed and b"forwarded" not in consumed):  # fmt: skip
        if kept.via is not via_line or kept.trusted is not trusted_peer:  # (made for others)
            _make(kept, headers, consumed, trusted_peer, raw_host, via_line, chunked,
                  content_length)  # fmt: skip
        return b"".join((method, b" ", target, kept.before_peer, peer.encode(),
                         kept.before_id, request_id, kept.end))  # fmt: skip
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _add_header_lines(parts, headers, consumed)
    before_peer, proto, fhost = _forwarded(consumed, trusted_peer, raw_host)
    parts += (b"X-Forwarded-For: ", before_peer, peer.encode(), b"\r\nX-Forwarded-Proto: ",
              proto, b"\r\n")  # fmt: skip
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
    parts.append(_framing(chunked, content_length))
    if upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _add_header_lines(
    parts: list[bytes], headers: list[tuple[bytes, bytes]], consumed: Mapping[bytes, bytes]
) -> None:
    """The client's header lines as the upstream gets them, in pieces onto ``parts``: less
    those its ``Connection`` names and its ``Content-Length`` (the framing is the proxy's)."""
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


def _forwarded(
    consumed: Mapping[bytes, bytes], trusted_peer: bool, raw_host: bytes
) -> tuple[bytes, bytes, bytes]:
    """What the ``X-Forwarded-*`` lines say besides the peer: what comes before the peer in
    ``X-Forwarded-For`` (a trusted peer's list, extended; anyone else's replaced), the proto
    and the host (empty: no ``X-Forwarded-Host`` line)."""
    if not trusted_peer:
        return b"", b"http", raw_host
    prior = consumed.get(b"x-forwarded-for")
    proto = consumed.get(b"x-forwarded-proto") or b"http"
    host = consumed.get(b"x-forwarded-host") or raw_host
    return (prior + b", " if prior else b""), proto, host


def _framing(chunked: bool, content_length: int | None) -> bytes:
    """The proxy's own framing line (none when the client sent no body framing)."""
    if chunked:
        return b"Transfer-Encoding: chunked\r\n"
    if content_length is not None:
        return b"Content-Length: %d\r\n" % content_length
    return b""


def _make(
    kept: Forwarding,
    headers: list[tuple[bytes, bytes]],
    consumed: Mapping[bytes, bytes],
    trusted_peer: bool,
    raw_host: bytes,
    via_line: bytes,
    chunked: bool,
    content_length: int | None,
) -> None:
    """Make ``kept``'s parts as `request_head` would write them around the peer and the id,
    for a request without X-Real-IP, Forwarded, synthetic marker or upgrade."""
    before_peer, proto, fhost = _forwarded(consumed, trusted_peer, raw_host)
    parts = [b" HTTP/1.1\r\n"]
    _add_header_lines(parts, headers, consumed)
    parts += (b"X-Forwarded-For: ", before_peer)
    kept.before_peer = b"".join(parts)
    host_line = b"X-Forwarded-Host: " + fhost + b"\r\n" if fhost else b""
    kept.before_id = b"".join(
        (b"\r\nX-Forwarded-Proto: ", proto, b"\r\n", host_line, via_line, b"X-Request-ID: ")
    )
    kept.end = b"\r\n" + _framing(chunked, content_length) + b"\r\n"
    kept.trusted = trusted_peer
    kept.via = via_line


def host_name(raw_host: bytes) -> str:
    """The host a ``Host`` header names, as routes match it: lower-cased, without its port
    (an IPv6 literal in brackets keeps its colons)."""
    host = raw_host.decode("latin-1").lower()
    if host[-1:] != "]":
        host = host.rsplit(":", 1)[0] if ":" in host else host
    return host


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
    request_id: bytes,  # (positional too: the exchange calls it so for every response)
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

    What comes of the upstream's status, reason and headers alone (`Prepared`) may come
    with them (`Fields.prepared`, made as `response_fields` read the head).
    """
    prepared = headers.prepared if type(headers) is Fields else None
    if prepared is None or prepared.status != status or prepared.reason is not reason:
        prepared = _prepare(status, reason, headers)
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


class Prepared:
    """The part of the client's head that the upstream's status, reason and headers make:
    the status line and the headers kept (``kept``), the same less the Content-Length that a
    chunked body overrides (``unframed``), and what the rest depends on. ``framed``: the
    client's whole head up to the request id's value when the body is framed by its
    Content-Length and the request id is echoed (``kept`` + ``X-Request-ID: ``; None
    otherwise): an HTTP/1.1 client kept alive with nothing added (the usual response) gets
    it, the id and the two line ends (`Exchange.upstream_head`, without a call here)."""

    __slots__ = (
        "chunked", "echo_id", "framed", "has_length", "kept", "reason", "status", "unframed",
    )  # fmt: skip

    def __init__(
        self,
        status: int,
        reason: bytes,
        kept: bytes,
        unframed: bytes,
        *,
        chunked: bool,
        has_length: bool,
        echo_id: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.kept = kept
        self.unframed = unframed
        self.chunked = chunked
        self.has_length = has_length
        self.echo_id = echo_id
        self.framed = (
            kept + b"X-Request-ID: "
            if echo_id and has_length and not chunked and status != 101
            else None
        )


class Fields(list[tuple[bytes, bytes]]):
    """A response head's fields (name, value) in order, as `response_fields` read them, with
    what `response_head` makes of them and the status line when `response_fields` made it
    in the same pass (``prepared``; None: `response_head` makes it)."""

    __slots__ = ("prepared",)

    def __init__(self) -> None:
        super().__init__()
        self.prepared: Prepared | None = None


def _prepare(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> Prepared:
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
    kept = b"".join(parts)
    unframed = kept
    if chunked:
        if named and has_length and not drop:
            # two Content-Lengths (a head the parser refuses): with a Connection header, the
            # first is the one dropped, as when that header names one to drop
            length_at = _find(parts, b"content-length")
        if length_at >= 0:  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
            parts[length_at : length_at + 4] = []
        unframed = b"".join(parts)
    return Prepared(
        status, reason, kept, unframed, chunked=chunked, has_length=has_length, echo_id=echo_id
    )


def response_fields(
    status: int, lines: list[bytes]
) -> tuple[bytes, Fields, ResponseBody, int, str]:
    """What the lines of a response head that llhttp accepted say (``lines``: the status line,
    then each header line, without their CRLF), read in one pass: the reason phrase, the
    fields as llhttp's callbacks give them, where the body ends when it has one (FRAMED by
    Content-Length or chunked, else UNTIL_CLOSE; the Content-Length that frames it, else -1),
    and why it cannot be relayed ("": it can), a transfer coding other than ``chunked``.
    When no Connection header names a header (nor a length stands beside a transfer coding),
    the same pass makes `Fields.prepared`, the client head's part `response_head` would make.

    What llhttp accepts makes the reading simple: the status line is ``<protocol>/<d>.<d>
    <3 digits>`` and, after one space, the reason (all of the rest, spaces too); no name is
    empty nor has whitespace before its colon; no line is folded (obs-fold is refused); a
    value is what follows the colon less the leading spaces and tabs (llhttp keeps the
    trailing ones). (llhttp has refused a malformed or repeated Content-Length, and one beside
    Transfer-Encoding.) ``tests/unit/dataplane/test_upstream_head.py`` checks all of it
    against llhttp's callbacks and the former computation."""
    first = lines[0]
    reason = first[first.find(b" ") + 5 :]
    fields = Fields()
    kept: list[bytes] = []
    framed = chunked = has_length = te_chunked = coded = False
    length = -1
    echo_id = True
    unsupported = ""
    simple = True  # no Connection header names a header: nothing for `_prepare` to drop
    known = _lines.get
    for line in lines[1:]:
        read = known(line)
        if read is None:
            read = _read_line(line)
        field, kind, out = read
        fields.append(field)
        if kind:
            value = field[1]
            if kind == _TRANSFER_ENCODING:
                if not unsupported:  # (the first one the body cannot be relayed with counts)
                    if value.strip().lower() != b"chunked":
                        unsupported = f"unsupported transfer coding {value[:64]!r}"
                    else:
                        framed = chunked = True
                coded = True
                te_chunked = b"chunked" in value.lower()  # (`_prepare`'s: the last one says)
                continue
            if kind == _CONNECTION:
                if value.lower() not in _RESPONSE_OPTIONS:
                    simple = False
                continue
            if kind == _HOP:
                continue
            if kind == _LENGTH:
                has_length = True
                if not unsupported:
                    framed = True
                    length = int(value)
            else:
                echo_id = False
        kept.append(out)
    if simple and not (coded and has_length):  # (llhttp refuses a length beside a coding)
        head = status_line(status, reason)
        if kept:
            head += b"\r\n".join(kept) + b"\r\n"
        fields.prepared = Prepared(
            status, reason, head, head, chunked=te_chunked, has_length=has_length, echo_id=echo_id
        )
    if unsupported:
        return reason, fields, ResponseBody.FRAMED, -1, unsupported
    if not framed:
        return reason, fields, ResponseBody.UNTIL_CLOSE, -1, ""
    return reason, fields, ResponseBody.FRAMED, -1 if chunked else length, ""


# Header lines read lately, by their bytes: an upstream's heads share most of their lines
# (``Server``, ``Content-Type``, ``Connection: keep-alive``...) even when ``Date``,
# ``Content-Length`` or an echoed request id make each head new. Each is kept as its field
# (name, value), its kind and the line as the client gets it. Bounded (lines come from
# upstreams): lines up to 256 bytes, at most 1,024; the table starts over when full.
_lines: dict[bytes, tuple[tuple[bytes, bytes], int, bytes]] = {}
_LINES_MAX: Final = 1024


def _read_line(line: bytes) -> tuple[tuple[bytes, bytes], int, bytes]:
    name, _, raw = line.partition(b":")
    value = raw.lstrip(b" \t")
    kind = _kinds.get(name)
    if kind is None:
        kind = _kind(name)
    # the line as it came when it is already ``name: value`` (one space), as most are
    out = line if len(raw) - len(value) == 1 and raw[0] == 32 else name + b": " + value
    read = ((name, value), kind, out)
    if len(line) <= 256:
        if len(_lines) >= _LINES_MAX:
            _lines.clear()
        _lines[line] = read
    return read


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
