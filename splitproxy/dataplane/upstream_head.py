"""An upstream's response head, read from its bytes once llhttp has accepted it.

The upstream connection's parser has no per-line callbacks (`upstream.py`): llhttp still checks
every line of the head and decides the framing, but the proxy reads the head from its bytes
when it is complete, in one pass over its lines that also makes the upstream's part of the
client's head (`heads.response_fields`), instead of a Python call per header line and two more
loops over the fields. An upstream often sends the same head again and again (nginx's static
files differ by the ``Date`` second), so what a head says is kept by its bytes (`read_head`):
the next response with that head costs a look-up. Heads that never come back (an echoed
request id, a body's own length) would only churn the table: when a whole table's worth of
heads brought fewer look-ups that found one than heads kept, keeping pauses for `PAUSE` heads
(`keptheads.KeptHeads`). Bounded: heads up to `KEEP_MAX` bytes, `TABLE_MAX` of them; the
table starts over when full.
"""

from __future__ import annotations

from typing import Final

from splitproxy.dataplane.heads import Fields, response_fields
from splitproxy.dataplane.http11 import ResponseBody
from splitproxy.dataplane.keptheads import KeptHeads

KEEP_MAX: Final = 2048  # bytes of a head kept with what it says (nginx's are ~300)
TABLE_MAX: Final = 256
PAUSE: Final = 4096  # heads read without keeping them, after a table that did not pay


class HeadError(Exception):
    """The head cannot be relayed safely (its ``args[0]`` says why)."""


# head bytes -> (reason, fields, body, length, why its body cannot be relayed or "")
Head = tuple[bytes, Fields, ResponseBody, int, str]


def _Kept() -> KeptHeads[Head]:
    """An empty table of heads (the data path's is `KEPT`)."""
    return KeptHeads(KEEP_MAX, TABLE_MAX, PAUSE)


KEPT: Final = _Kept()


def read_head(head: bytes, status: int, max_fields: int) -> Head:
    """What ``head`` says (from its status line to its last header line, without the blank
    line; llhttp has accepted it, and found ``status`` in it): `heads.response_fields`, or
    what it said of the same bytes before. More than ``max_fields`` fields: `HeadError`.

    A head's fields (`heads.Fields`) are shared by every response with that head: they are
    never changed once made."""
    kept = KEPT
    known = kept.heads.get(head)
    if known is not None:
        kept.hits += 1
        return known
    lines = head.split(b"\r\n")
    if len(lines) > max_fields + 1:  # (the status line, then one per header)
        raise HeadError(f"more than {max_fields} response headers")
    known = response_fields(status, lines)
    if kept.keeping(head):
        kept.keep(head, known)
    return known
