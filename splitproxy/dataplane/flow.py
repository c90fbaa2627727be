"""Back-pressure between a client's transport and the upstream connection serving it.

Either side's full write buffer pauses reading on the other: a client that does not take the
response pauses the upstream's reads (`client_write_paused`), an upstream that does not take
the request body pauses the client's reads (`upstream_write_paused`, then the connection's
`ClientConnection.update_reading`). Which way the client's reading should go also depends on
the connection's queue and state, so the connection decides that and `set_client_reading`
only applies it, once per change.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitproxy.dataplane.upstream import UpstreamConnection


class FlowControl:
    """The pause/resume state of one client connection and the upstream it talks to."""

    __slots__ = ("client_full", "full_since", "reading", "transport", "upstream_full")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # the client's, once connected
        self.client_full = False  # our write buffer to the client is full
        self.full_since = 0.0  # since when (the body timeout cuts a client that stays full)
        self.upstream_full = False  # the upstream's write buffer is full
        self.reading = True  # the client transport is being read

    def client_write_paused(self, now: float, up: UpstreamConnection | None) -> None:
        """The client stopped taking the response: stop reading the upstream."""
        self.client_full = True
        self.full_since = now
        if up is not None:
            up.pause_reading()

    def client_write_resumed(self, now: float, up: UpstreamConnection | None) -> None:
        """The client takes bytes again: read the upstream again."""
        self.client_full = False
        if up is not None:
            up.last_read = now  # the read timeout restarts from here
            up.resume_reading()

    def upstream_attached(self, up: UpstreamConnection) -> None:
        """A new upstream connection serves the client: hold it if the client is full."""
        if self.client_full:
            up.pause_reading()  # the client has not taken the previous response yet

    def upstream_write_paused(self, full: bool) -> None:
        """The upstream's write buffer filled (``True``) or drained (``False``)."""
        self.upstream_full = full

    def set_client_reading(self, want: bool) -> bool:
        """Read the client or not; True when that changed (and was applied)."""
        transport = self.transport
        if want == self.reading or transport is None:
            return False
        self.reading = want
        if want:
            transport.resume_reading()
        else:
            transport.pause_reading()
        return True
