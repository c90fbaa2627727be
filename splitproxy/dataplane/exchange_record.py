"""What an exchange records: its fields and their defaults (`ExchangeRecord`).

`exchange.Exchange` is this record with the behaviour (routing, the relay, the endings); the
metrics recorder, the access log, the mirror and the error paths read these fields. Every
exchange sets them all when it is made (a slot left unset would raise where it is read).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from splitproxy.dataplane.heads import NO_HEADERS, NO_WANTED, Forwarding
from splitproxy.dataplane.health import BackendHealth
from splitproxy.dataplane.http11 import NO_BODY, RAW
from splitproxy.dataplane.pools import UpstreamPool
from splitproxy.dataplane.routing import CompiledRoute, Decision
from splitproxy.dataplane.state import Snapshot
from splitproxy.dataplane.upstream import UpstreamConnection

if TYPE_CHECKING:
    from splitproxy.dataplane.client import ClientConnection
    from splitproxy.dataplane.mirror import MirrorTap


class ExchangeRecord:
    """An exchange's fields, as it is made: nothing read nor decided yet."""

    __slots__ = (
        "backend_health", "body_buffer", "body_buffered", "body_kind", "body_received",
        "bytes_out", "client_head_sent", "conn", "connecting", "content_length", "ctx",
        "decision", "duration", "error_kind", "expect_continue", "finished", "forwarding",
        "head_bytes", "headers", "held", "host", "http11", "keep_alive", "method", "mirror",
        "observed", "path", "pool", "preview", "reject", "replayable", "req_done", "request_id",
        "resp_mode", "retried", "route", "snapshot", "started", "status", "synthetic", "target",
        "ttfb", "tunnel", "up", "upgrade", "upstream_duration", "upstream_sent_at",
        "upstream_status", "upstream_url", "version", "wanted",
    )  # fmt: skip

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.method = b""
        self.target = b""
        # (read-only: a kept head's are shared, see `request_head`; until the head is read,
        # the immutable NO_HEADERS and NO_WANTED)
        self.headers = NO_HEADERS
        self.wanted = NO_WANTED
        # what the head sends upstream, when its bytes are kept (`heads.Forwarding`)
        self.forwarding: Forwarding | None = None
        self.keep_alive = True
        self.http11 = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.body_kind = NO_BODY
        self.content_length = 0
        self.body_received = 0
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.req_done = False
        self.replayable = False
        self.route: CompiledRoute | None = None
        self.snapshot: Snapshot | None = None
        self.decision: Decision | None = None
        self.version = ""
        self.pool: UpstreamPool | None = None
        self.backend_health: BackendHealth | None = None  # of the version it is sent to
        self.upstream_url = ""
        self.up: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.head_bytes = b""
        self.request_id = b""
        self.host = ""
        self.path = ""
        self.started = 0.0
        self.upstream_sent_at = 0.0
        self.ttfb = 0.0
        self.duration = 0.0
        self.upstream_duration = 0.0
        self.status = 0
        self.upstream_status = 0
        self.bytes_out = 0
        self.client_head_sent = False
        self.held = b""  # the response head, until its body's first bytes (upstream_body)
        self.resp_mode = RAW
        self.retried = False
        self.error_kind = ""  # a FailureKind, "client_closed", or the proxy's error code
        self.finished = False
        self.tunnel = False
        self.synthetic = False  # the proxy's own request (traffic.py), counted apart
        self.preview: bool = conn.preview  # came in on the preview listener, counted apart
        self.reject: tuple[int, str, str] | None = None  # answer this when its turn comes
        self.mirror: MirrorTap | None = None  # a copy for the candidate (mirror.py)
        # What the observer's `exchange_started` found for its `exchange_finished` (the
        # recorder's series of this route and version), so the finish need not look it up.
        self.observed: Any = None
