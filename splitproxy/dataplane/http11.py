"""HTTP/1.1 message pieces the data path needs: hop-by-hop rules, status lines, framing.

Pure helpers on bytes and the words for how a body is framed; the protocols in `client.py`,
`exchange.py` and `upstream.py` call them, and `heads.py` builds the heads from them.
"""

from __future__ import annotations

import enum
import json
from http import HTTPStatus
from typing import Final, overload


class RequestBody(enum.Enum):
    """How a client's request body is framed (the parser decodes either kind)."""

    NONE = enum.auto()  # no body (or Content-Length: 0)
    LENGTH = enum.auto()  # Content-Length bytes, forwarded as they come
    CHUNKED = enum.auto()  # Transfer-Encoding: chunked, re-encoded chunk by chunk upstream


class ResponseBody(enum.Enum):
    """Where an upstream response's body ends, as its head says."""

    NONE = enum.auto()  # no body: HEAD, 1xx, 204, 304
    FRAMED = enum.auto()  # Content-Length or chunked: the parser finds the end
    UNTIL_CLOSE = enum.auto()  # neither: the body ends when the upstream closes


class BodyRelay(enum.Enum):
    """How the response body is written to the client."""

    RAW = enum.auto()  # as received (Content-Length framed, no body, or until close)
    RECHUNK = enum.auto()  # re-encoded as chunked (an HTTP/1.1 client, no usable length)


# The members under short names, for the hot path: module globals, compared by identity.
NO_BODY: Final = RequestBody.NONE
LENGTH: Final = RequestBody.LENGTH
CHUNKED: Final = RequestBody.CHUNKED
RAW: Final = BodyRelay.RAW
RECHUNK: Final = BodyRelay.RECHUNK

# RFC 9110 section 7.6.1: fields that apply to one connection only, never forwarded.
# Content-Length is not here: the proxy keeps the sender's framing where it can.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


# Status lines made lately, by status and reason: an upstream answers with a handful, and
# formatting one costs several times the look-up. Bounded (reasons come from upstreams): it
# starts over when full.
_STATUS_LINES: dict[tuple[int, bytes | None], bytes] = {}
_STATUS_LINES_MAX: Final = 256


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``; the upstream's reason phrase is kept when it sent one."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        phrase = reason if reason else _REASONS.get(status, b"")
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
        if len(_STATUS_LINES) >= _STATUS_LINES_MAX:
            _STATUS_LINES.clear()
        _STATUS_LINES[status, reason] = line
    return line


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a ``Connection`` header value."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


@overload
def chunk(data: bytes) -> list[bytes]: ...
@overload
def chunk(data: bytes | memoryview) -> list[bytes | memoryview]: ...
def chunk(data: bytes | memoryview) -> list[bytes] | list[bytes | memoryview]:
    """The pieces of one chunk of a chunked body (for ``writelines``)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK: Final = b"0\r\n\r\n"


def valid_request_id(value: bytes) -> bool:
    """A client's X-Request-ID is kept only if it is short and printable ASCII."""
    return 0 < len(value) <= 200 and all(0x21 <= b <= 0x7E for b in value)


def no_body_status(status: int) -> bool:
    """Responses that never carry a body, whatever their headers say (RFC 9110 6.4.1)."""
    return status < 200 or status in (204, 304)


def local_response(
    status: int,
    code: str,
    message: str,
    request_id: bytes,
    *,
    close: bool,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A response the proxy makes itself (404, 502, 503, 504, 413, 431, ...): a JSON body in
    the admin API's error shape, with the request id in header and body."""
    body = (
        json.dumps(
            {
                "error": {
                    "code": code,
                    "message": message,
                    "request_id": request_id.decode("latin-1"),
                }
            }
        ).encode()
        + b"\n"
    )
    lines = [
        status_line(status),
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"X-Request-ID: " + request_id + b"\r\n",
        b"Server: splitproxy\r\n",
    ]
    lines.extend(name + b": " + value + b"\r\n" for name, value in extra)
    lines.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)
