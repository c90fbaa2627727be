"""An upstream's response head, read from its bytes once llhttp has accepted it.

The upstream connection's parser has no per-line callbacks (`upstream.py`): llhttp still checks
every line of the head and decides the framing, but the proxy reads the head's fields from the
bytes themselves when the head is complete (`read_head`), in one call instead of a Python
call per header line. An upstream sends the same head again and again (nginx's differ by the
``Date`` second), so what a head says is kept by its bytes: its reason, its fields, where its
body ends, and (`heads.response_head`, through `Fields.prepared`) the part of the client's head
made from it. Bounded: heads up to `KEEP_MAX` bytes, `TABLE_MAX` of them; the table starts over
when full.
"""

from __future__ import annotations

from typing import Final

from splitproxy.dataplane.http11 import ResponseBody

KEEP_MAX: Final = 2048  # bytes of a head kept with what it says (nginx's are ~300)
TABLE_MAX: Final = 256


class HeadError(Exception):
    """The head cannot be relayed safely (its ``args[0]`` says why)."""


class Fields(list[tuple[bytes, bytes]]):
    """A head's fields (name, value) in order, shared by every response with the same head:
    never changed once made. ``prepared`` is what `heads.response_head` made of them and the
    status line, kept for the next response with this head (None until then)."""

    __slots__ = ("prepared",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        super().__init__(fields)
        self.prepared: object = None


# head bytes -> (reason, fields, body, length, why its body cannot be relayed or "")
Head = tuple[bytes, Fields, ResponseBody, int, str]
KNOWN: dict[bytes, Head] = {}
"""The heads read lately, by their bytes (`read_head` fills it; callers may look first)."""


def read_head(head: bytes, max_fields: int) -> Head:
    """What ``head`` says (from its status line to its last header line, without the blank
    line; llhttp has accepted it): its reason phrase, its fields, where its body ends when it
    has one (`framing`) and the transfer coding that stops it from being relayed, if any.
    More than ``max_fields`` fields: `HeadError`."""
    known = KNOWN.get(head)
    if known is not None:
        return known
    reason, fields = head_fields(head)
    if len(fields) > max_fields:
        raise HeadError(f"more than {max_fields} response headers")
    body, length, bad = framing(fields)
    known = (reason, Fields(fields), body, length, bad)
    if len(head) <= KEEP_MAX:
        if len(KNOWN) >= TABLE_MAX:
            KNOWN.clear()
        KNOWN[head] = known
    return known


def head_fields(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The reason phrase and the header fields (name, value) of a response head that llhttp
    has accepted, as llhttp's callbacks give them.

    What llhttp accepts makes this simple: the status line is ``<protocol>/<d>.<d> <3 digits>``
    and, after one space, the reason (all of the rest, spaces too); every line ends in CRLF;
    no name is empty nor has whitespace before its colon; no line is folded (obs-fold is
    refused). A value is what follows the colon less the leading spaces and tabs (llhttp keeps
    the trailing ones). ``tests/unit/dataplane/test_upstream_head.py`` checks this against
    llhttp's own callbacks over any head it accepts."""
    lines = head.split(b"\r\n")
    first = lines[0]
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.lstrip(b" \t")))
    return first[first.find(b" ") + 5 :], fields


def framing(fields: list[tuple[bytes, bytes]]) -> tuple[ResponseBody, int, str]:
    """Where the response body ends: FRAMED by Content-Length or chunked, else UNTIL_CLOSE;
    the Content-Length when it frames the body (else -1); and a transfer coding other than
    ``chunked`` (``xchunked``, ``gzip, chunked``), which cannot be relayed without decoding
    or telling the client, said (else ""): the caller refuses the response when it has a body.
    (llhttp has refused a malformed or repeated Content-Length, and one beside
    Transfer-Encoding, before this is called.)"""
    framed = False
    chunked = False
    length = -1
    for name, value in fields:
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
