"""A client's request head, read from its bytes once llhttp has accepted it.

The client connection's parser has no ``on_url`` nor ``on_header`` (`client.py`): llhttp still
checks every line of the head and decides the framing, but the proxy reads the head from its
bytes when it is complete (`read_request_head`), in one pass over its lines, instead of a
Python call per header line. It gives what the per-header path gives: the target, the headers
forwarded in order, the wanted and consumed ones joined by name, and the same refusals in the
same order (414 for the target, then 431 or a repeated Host or Content-Length per header).

`PerHeader` is that per-header path, kept for what the one pass cannot see whole: a head that
spans reads (its limits must hold before its end arrives), a head llhttp refuses (a refusal of
the proxy's may come before llhttp's error), and a chunked body (its trailer fields went
through the same checks). It is the former computation, unchanged, on a parser of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from splitproxy.dataplane.exchange import Reject
from splitproxy.dataplane.heads import CONSUMED, spoofed_forwarding

if TYPE_CHECKING:
    from splitproxy.dataplane.client import ClientConnection

# ``b"_" in name`` first tries its operand as an int, and the TypeError it raises and swallows
# (a formatted message) costs ~1.8 k instructions, on every header; testing the byte's value
# is a memchr
_UNDERSCORE: Final = ord("_")
# What the client is told when its request is refused, by the refusal's code
REJECT_MESSAGES: Final = {
    "request_timeout": "the request headers took too long",
    "uri_too_long": "the request target is too long",
    "headers_too_large": "the request headers are too large",
    "body_too_large": "the request body is too large",
    "duplicate_header": "the request repeats Host or Content-Length",
    "upgrade_with_body": "an Upgrade request cannot carry a body",
    "version_not_supported": "only HTTP/1.0 and HTTP/1.1 are supported",
}
_COOKIE: Final = b"cookie"
_SINGLE: Final = frozenset({b"host", b"content-length"})  # a second one is refused

# A header line as read before: (name, value, what it counts against the limits, the name
# lower-cased, whether it is dropped: a forwarding header spelled with underscores). Clients
# send the same lines again and again (User-Agent, Accept..., the Host). Bounded (lines come
# from clients): lines up to 256 bytes, at most 1,024; the table starts over when full.
Line = tuple[bytes, bytes, int, bytes, bool]
_lines: dict[bytes, Line] = {}
_LINES_MAX: Final = 1024


def _read_line(line: bytes) -> Line:
    name, _, raw = line.partition(b":")
    value = raw.lstrip(b" \t")
    lname = name.lower()
    read = (name, value, len(name) + len(value) + 4, lname,
            _UNDERSCORE in lname and spoofed_forwarding(lname))  # fmt: skip
    if len(line) <= 256:
        if len(_lines) >= _LINES_MAX:
            _lines.clear()
        _lines[line] = read
    return read


def read_request_head(
    head: bytes, max_bytes: int, max_headers: int, wanted_names: frozenset[bytes]
) -> tuple[bytes, list[tuple[bytes, bytes]], dict[bytes, bytes], int, int]:
    """What a request head that llhttp accepted says (``head``: its request line and header
    lines, without the blank line; HTTP/1.x, so the line has a version): the target, the
    headers forwarded in order, the wanted and consumed headers by lower-cased name (joined
    with ", ", cookies with "; "), and the header bytes and count as the limits count them.
    Refused as the per-header path refuses (`Reject`): a target over ``max_bytes`` (414);
    then, header by header, over ``max_bytes`` or ``max_headers`` (431) or a second Host or
    Content-Length among ``wanted_names`` (400).

    What llhttp accepts makes the reading simple: the request line is the method, spaces, the
    target (no whitespace in it), spaces and the version; every line ends in CRLF, no CR nor
    LF stands alone, no line is folded; no name is empty nor has whitespace before its colon;
    a value is what follows the colon less its leading spaces and tabs (llhttp keeps the
    trailing ones). ``tests/unit/dataplane/test_request_head.py`` checks it against
    `PerHeader` over any head and any split of it over reads."""
    lines = head.split(b"\r\n")
    target = lines[0].split()[1]
    if len(target) > max_bytes:
        raise Reject(414, "uri_too_long")
    headers: list[tuple[bytes, bytes]] = []
    wanted: dict[bytes, bytes] = {}
    size = 0
    count = 0
    known = _lines.get
    for line in lines[1:]:
        read = known(line)
        if read is None:
            read = _read_line(line)
        name, value, n, lname, dropped = read
        size += n
        count += 1
        if size > max_bytes or count > max_headers:
            raise Reject(431, "headers_too_large")
        if dropped:
            continue
        if lname in CONSUMED:
            prior = wanted.get(lname)
            wanted[lname] = prior + b", " + value if prior is not None else value
            continue
        headers.append((name, value))
        if lname in wanted_names:
            prior = wanted.get(lname)
            if prior is None:
                wanted[lname] = value
            elif lname == _COOKIE:
                wanted[lname] = prior + b"; " + value
            elif lname in _SINGLE:
                raise Reject(400, "duplicate_header")
            else:
                wanted[lname] = prior + b", " + value
    return target, headers, wanted, size, count


class PerHeader:
    """The request parser's protocol for the per-header path: ``on_url`` and ``on_header``
    build the exchange's target, headers and wanted fields as the head arrives, checking the
    limits at each, and hand the rest to the connection.

    ``skip_begin``: the message under way was begun by the connection's own parser (its
    exchange exists); ``mute``: the head under way was read already (a chunked request, taken
    over at its body): nothing of it is done again; ``counted``: the bytes and fields its head
    counted against the limits (trailer fields count on from there)."""

    __slots__ = ("conn", "header_bytes", "header_count", "mute", "parser", "skip_begin")

    def __init__(
        self,
        conn: ClientConnection,
        *,
        skip_begin: bool,
        mute: bool,
        counted: tuple[int, int] = (0, 0),
    ) -> None:
        self.conn = conn
        self.header_bytes, self.header_count = counted  # (of the head, for the trailers)
        self.skip_begin = skip_begin
        self.mute = mute
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        if self.skip_begin:
            self.skip_begin = False
            return
        self.conn.on_message_begin()
        self.header_bytes = 0
        self.header_count = 0

    def on_url(self, url: bytes) -> None:
        if self.mute:
            return
        ex = self.conn.parsing
        assert ex is not None
        ex.target = ex.target + url if ex.target else url
        if len(ex.target) > self.conn.ctx.max_header_bytes:
            raise Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.mute:
            return
        conn = self.conn
        self.header_bytes += len(name) + len(value) + 4
        self.header_count += 1
        if (
            self.header_bytes > conn.ctx.max_header_bytes
            or self.header_count > conn.ctx.max_headers
        ):
            raise Reject(431, "headers_too_large")
        ex = conn.parsing
        assert ex is not None
        lname = name.lower()
        if _UNDERSCORE in lname and spoofed_forwarding(lname):
            return
        if lname in CONSUMED:
            prior = ex.wanted.get(lname)
            ex.wanted[lname] = prior + b", " + value if prior is not None else value
            return
        ex.headers.append((name, value))
        if lname in conn.wanted_names:
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
        if self.mute:
            self.mute = False  # (the body and what follows are this parser's)
            return
        self.conn.head_complete(self.parser, self.parser.get_http_version())

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()
