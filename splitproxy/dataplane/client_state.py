"""Where a client connection is in its life (`ClientState`), and the timeouts of each state.

The states and their moves are drawn in `client.py`'s docstring. `check_timeouts` enforces, at
the sweeper's clock, the timeouts listed there: ``header_timeout`` from a request's first byte
to the end of its headers (408); ``body_timeout`` between request body bytes, and for a client
that stops taking the response; ``read_timeout`` while waiting on the upstream (504 before the
response, a cut connection after); ``client_idle_timeout`` between requests; the lingering
close's bounds; a tunnel's idle time. `head_progress` bounds a request head that spans reads
before its end arrives. `DISCARD` stands in for the parser of a connection that reads no more
requests.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from splitproxy.dataplane.client import ClientConnection

# After answering a request whose body was not read (413, an early error), the proxy half-closes
# and reads and discards what the client still sends, for at most this long (nginx's lingering
# close): closing at once with unread bytes would reset the connection and lose the answer.
_LINGER_IDLE: Final = 2.0
_LINGER_MAX: Final = 10.0


class ClientState(enum.Enum):
    """Where a client connection is in its life (see `client.py`'s docstring)."""

    OPEN = enum.auto()  # requests are parsed as they come
    LAST_REQUEST = enum.auto()  # no further request is read; those read are answered in turn
    TUNNEL = enum.auto()  # after a 101: raw bytes relayed both ways
    LINGERING = enum.auto()  # answered and half-closed: what the client sends is discarded
    CLOSED = enum.auto()  # closing or gone: nothing more is read, parsed or written


OPEN: Final = ClientState.OPEN
LAST_REQUEST: Final = ClientState.LAST_REQUEST
TUNNEL: Final = ClientState.TUNNEL
LINGERING: Final = ClientState.LINGERING
CLOSED: Final = ClientState.CLOSED


class Feed(Protocol):
    """What a connection feeds its reads to: its request parser, or `DISCARD`."""

    def feed_data(self, data: bytes) -> None: ...


class _Discard:
    """Stands in for the request parser once no more requests are read from a connection."""

    __slots__ = ()

    def feed_data(self, data: bytes) -> None:
        pass


DISCARD: Final = _Discard()


def check_timeouts(conn: ClientConnection, now: float) -> None:
    """Enforce ``conn``'s timeouts at ``now`` (the sweeper's clock)."""
    ctx = conn.ctx
    state = conn.state
    if state is LINGERING:
        if now - conn.last_activity > _LINGER_IDLE or now - conn.linger_began > _LINGER_MAX:
            assert conn.transport is not None
            conn.transport.close()
        return
    if state is TUNNEL:
        tunnel = conn.tunnel
        up = tunnel.up if tunnel is not None else None
        last = max(conn.last_activity, up.last_read) if up is not None else conn.last_activity
        if now - last > ctx.tunnel_idle_timeout:
            conn.abort()  # no byte either way: a dead peer must not hold two sockets
        return
    flow = conn.flow
    ex = conn.current
    if ex is not None and not ex.finished:
        if flow.client_full and now - flow.full_since > ctx.body_timeout:
            conn.abort()  # the client stopped reading the response
            return
        up = ex.up
        if up is not None and not flow.client_full and (ex.req_done or flow.upstream_full):
            # Waiting on the upstream: for the response (from the later of the request's
            # last byte and the upstream's last byte), or for it to take the body.
            since = max(up.last_read, ex.upstream_sent_at, conn.last_activity)
            if now - since > ctx.read_timeout:
                ex.upstream_failed("timeout")
                return
        if not ex.req_done and flow.reading and now - conn.last_activity > ctx.body_timeout:
            conn.abort()
        return
    parsing = conn.parsing
    if parsing is not None:
        if now - conn.request_began > ctx.header_timeout:
            conn._reject(408, "request_timeout", "the request headers took too long")
    elif conn.blank_since and now - conn.blank_since > ctx.header_timeout:
        conn.close()  # only empty lines since: no request is coming
    elif now - conn.last_activity > ctx.client_idle_timeout:
        conn.close()


def head_progress(conn: ClientConnection, n: int) -> None:
    """``n`` more bytes of a request head that spans reads: bound it before its end arrives
    (a header line that never ends would otherwise grow in the parser's buffer)."""
    if conn.head_seen < 0:
        conn.head_seen = 0  # the read the request began in is bounded by the read size
        return
    conn.head_seen += n
    if conn.head_seen > 2 * conn.ctx.max_header_bytes + 4096:
        # (here: `request_head` imports `exchange`, which imports this module)
        from splitproxy.dataplane.request_head import REJECT_MESSAGES

        conn._reject(431, "headers_too_large", REJECT_MESSAGES["headers_too_large"])
