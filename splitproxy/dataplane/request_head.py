"""A client's request head, read from its bytes once llhttp has accepted it.

The client connection's parser has no ``on_url`` nor ``on_header`` (`client.py`): llhttp still
checks every line of the head and decides the framing, but the proxy reads the head from its
bytes when it is complete (`read_request_head`), in one pass over its lines, instead of a
Python call per header line. It gives what the per-header path gives: the target, the headers
forwarded in order, the wanted and consumed ones joined by name, and the same refusals in the
same order (414 for the target, then 431 or a repeated Host or Content-Length per header).

`PerHeader` is that per-header path, kept for what the one pass cannot see whole: a head that
spans reads (its limits must hold before its end arrives), a head llhttp refuses (a refusal of
the proxy's may come before llhttp's error), and a chunked body (its trailer fields count
against the header limits). It is the former computation on a parser of its own, but for
trailer fields, which it counts and drops: before, a chunked request queued behind another
got the trailer fields read before its turn among the headers it sent upstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from splitproxy.dataplane.exchange import Reject
from splitproxy.dataplane.heads import CONSUMED, Forwarding, spoofed_forwarding
from splitproxy.dataplane.keptheads import KeptHeads

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

# A header line as read before: its field (name, value), what it counts against the limits,
# the name lower-cased, whether it is dropped (a forwarding header spelled with underscores).
# Clients send the same lines again and again (User-Agent, Accept..., the Host). Bounded
# (lines come from clients): lines up to 256 bytes, at most 1,024; the table starts over
# when full.
Line = tuple[tuple[bytes, bytes], int, bytes, bool]
_lines: dict[bytes, Line] = {}
_LINES_MAX: Final = 1024


def _read_line(line: bytes) -> Line:
    name, _, raw = line.partition(b":")
    value = raw.lstrip(b" \t")
    lname = name.lower()
    read = ((name, value), len(name) + len(value) + 4, lname,
            _UNDERSCORE in lname and spoofed_forwarding(lname))  # fmt: skip
    if len(line) <= 256:
        if len(_lines) >= _LINES_MAX:
            _lines.clear()
        _lines[line] = read
    return read


# What follows a head's target (its version, then its header lines) -> what the lines say:
# headers forwarded, wanted and consumed ones, bytes and count. A client sends the same
# header lines with each request (only the target changes from one to the next), so a
# head's cost is a look-up by its bytes; a Python loop over the lines costs ~2.5 k
# instructions a line. Kept only when read without refusal, for the wanted names they were
# read with; the limits are checked again at each look-up (within them whole, within them at
# every header). Bounded: up to `KEEP_MAX` bytes, `TABLE_MAX` of them, the table starts over
# when full; when a whole table's worth of heads brought fewer look-ups that found one than
# heads kept (every client new, or cookies that change each time), keeping pauses for
# `PAUSE` heads.
Fields = list[tuple[bytes, bytes]]
KEEP_MAX: Final = 4096
TABLE_MAX: Final = 256
PAUSE: Final = 4096


class _Kept(KeptHeads[tuple[Fields, dict[bytes, bytes], int, int, Forwarding]]):
    __slots__ = ("names",)

    def __init__(self) -> None:
        super().__init__(KEEP_MAX, TABLE_MAX, PAUSE)
        self.names: frozenset[bytes] = frozenset()  # the wanted names they were read with


KEPT: Final = _Kept()


def surely_http11(parts: list[bytes]) -> bool:
    """Whether a head llhttp accepted is surely HTTP/1.1, from ``parts`` (the head split at
    its first two spaces, as `read_request_head` splits it); False: ask the parser, whose
    `get_http_version` costs ~2.5 k instructions. Surely so when the request line is ``method
    SP target SP HTTP/1.1``: a target with no line end in it (an HTTP/0.9 line has no version,
    and llhttp reads header lines after it: the split then runs into them), then the version
    and the line's end. (``10 in``: a byte's look-up; a bytes operand costs ~2 k more.)"""
    return (
        len(parts) == 3
        and parts[1] != b""
        and 10 not in parts[1]
        and (parts[2][:10] == b"HTTP/1.1\r\n" or parts[2] == b"HTTP/1.1")
    )


def read_request_head(
    head: bytes,
    max_bytes: int,
    max_headers: int,
    wanted_names: frozenset[bytes],
    parts: list[bytes] | None = None,
) -> tuple[bytes, Fields, dict[bytes, bytes], int, int, Forwarding | None]:
    """What a request head that llhttp accepted says (``head``: its request line and header
    lines, without the blank line; HTTP/1.x, so the line has a version): the target, the
    headers forwarded in order, the wanted and consumed headers by lower-cased name (joined
    with ", ", cookies with "; "), and the header bytes and count as the limits count them.
    Refused as the per-header path refuses (`Reject`): a target over ``max_bytes`` (414);
    then, header by header, over ``max_bytes`` or ``max_headers`` (431) or a second Host or
    Content-Length among ``wanted_names`` (400). The list and dict are read-only: a kept
    head's are shared by every request that repeats it (whoever would change them makes new
    ones, as `Exchange._origin_form` does; copying them cost ~0.9 k instructions). Last,
    the head's `heads.Forwarding` when its bytes are kept (None: they are not): what it
    sends upstream, made once for every request that repeats it.

    What llhttp accepts makes the reading simple: the request line is the method, spaces, the
    target (no whitespace in it), spaces and the version; every line ends in CRLF, no CR nor
    LF stands alone, no line is folded; no name is empty nor has whitespace before its colon;
    a value is what follows the colon less its leading spaces and tabs (llhttp keeps the
    trailing ones). ``tests/unit/dataplane/test_request_head.py`` checks it against
    `PerHeader` over any head and any split of it over reads. ``parts``: ``head.split(b" ",
    2)``, when the caller has made it."""
    if parts is None:  # (one call: each bytes method call costs ~1 k instructions)
        parts = head.split(b" ", 2)
    target = parts[1] if len(parts) == 3 else b""
    if target:
        rest = parts[2]  # the version, then the header lines
    else:  # spaces before the target (llhttp allows several), or no version
        line, crlf, block = head.partition(b"\r\n")
        words = line.split()
        target = words[1]
        rest = (words[2] if len(words) > 2 else b"") + crlf + block
    if len(target) > max_bytes:
        raise Reject(414, "uri_too_long")
    kept = KEPT
    if kept.names is not wanted_names:
        kept.heads.clear()
        kept.names = wanted_names
    known = kept.heads.get(rest)
    if known is not None:
        headers, wanted, size, count, forwarding = known
        if size <= max_bytes and count <= max_headers:
            kept.hits += 1
            return target, headers, wanted, size, count, forwarding
    headers, wanted, size, count = _read_fields(rest, max_bytes, max_headers, wanted_names)
    if kept.keeping(rest):
        made = Forwarding()
        kept.keep(rest, (headers, wanted, size, count, made))
        return target, headers, wanted, size, count, made
    return target, headers, wanted, size, count, None


def _read_fields(
    rest: bytes, max_bytes: int, max_headers: int, wanted_names: frozenset[bytes]
) -> tuple[Fields, dict[bytes, bytes], int, int]:
    """The header lines of ``rest`` (the version, then the header lines), one by one."""
    headers: Fields = []
    wanted: dict[bytes, bytes] = {}
    size = 0
    count = 0
    known = _lines.get
    lines = rest.split(b"\r\n")
    del lines[0]
    for line in lines:
        read = known(line)
        if read is None:
            read = _read_line(line)
        field, n, lname, dropped = read
        size += n
        count += 1
        if size > max_bytes or count > max_headers:
            raise Reject(431, "headers_too_large")
        if dropped:
            continue
        if lname in CONSUMED:
            prior = wanted.get(lname)
            wanted[lname] = prior + b", " + field[1] if prior is not None else field[1]
            continue
        headers.append(field)
        if lname in wanted_names:
            value = field[1]
            prior = wanted.get(lname)
            if prior is None:
                wanted[lname] = value
            elif lname == _COOKIE:
                wanted[lname] = prior + b"; " + value
            elif lname in _SINGLE:
                raise Reject(400, "duplicate_header")
            else:
                wanted[lname] = prior + b", " + value
    return headers, wanted, size, count


class PerHeader:
    """The request parser's protocol for the per-header path: ``on_url`` and ``on_header``
    build the exchange's target, headers and wanted fields as the head arrives, checking the
    limits at each, and hand the rest to the connection.

    ``skip_begin``: the message under way was begun by the connection's own parser (its
    exchange exists); ``mute``: the head under way was read already (a chunked request, taken
    over at its body): nothing of it is done again; ``counted``: the bytes and fields its head
    counted against the limits (trailer fields count on from there)."""

    __slots__ = (
        "conn", "header_bytes", "header_count", "mute", "parser", "skip_begin", "trailers",
    )  # fmt: skip

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
        self.trailers = False  # past the head: what `on_header` gets are trailer fields
        self.parser = httptools.HttpRequestParser(self)
        if skip_begin and not mute:  # (the connection's parser began it: its head is ours)
            self.fill()

    def on_message_begin(self) -> None:
        if self.skip_begin:
            self.skip_begin = False
            return
        self.conn.on_message_begin()
        self.fill()
        self.header_bytes = 0
        self.header_count = 0
        self.trailers = False

    def fill(self) -> None:
        """The exchange being parsed gets headers of its own for ``on_header`` to fill (an
        exchange starts with immutable empty ones, `heads.NO_HEADERS`)."""
        ex = self.conn.parsing
        assert ex is not None
        ex.headers = []
        ex.wanted = {}

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
        if self.trailers:
            # A chunked body's trailer fields count against the limits and go no further:
            # the proxy forwards no trailers, and they are no headers (a request queued behind
            # another has not made its upstream head yet: they must not end up in it).
            return
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
        self.trailers = True
        if self.mute:
            self.mute = False  # (the body and what follows are this parser's)
            return
        self.conn.head_complete(self.parser, self.parser.get_http_version())

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()
