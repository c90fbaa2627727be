"""Logging: the process log (text or JSON lines on stderr) and the access log (a line a request).

The access log does not go through `logging`: a record, a handler and a formatter cost about
10 µs a line, a large share of what the proxy spends on a request. `AccessLog` formats the line
itself (about 3.5 µs) and writes the lines of one event-loop pass together to stderr, at the
start of the next pass: one write per pass, not per request, yet no line waits for a timer
(measurements in ``docs/observability.md``). Its switch is ``Settings.access_log``, not the
log level.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitproxy.config.vocabulary import FailureKind, Version
    from splitproxy.dataplane.context import ExchangeObserver
    from splitproxy.dataplane.exchange import Exchange

ACCESS_LOGGER = "splitproxy.access"
_PREVIEW_JSON = ',"listener":"preview"'  # the JSON line's key for the preview listener


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


def configure(log_format: str = "text", level: str = "info") -> None:
    """Send the process log to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("splitproxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# bytes of a request target that a text line shows escaped: controls, space, '"', '\', non-ASCII
_UNSAFE = re.compile(rb'[^\x21-\x7e]|["\\]')
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _target(raw: bytes) -> str:
    text = raw.decode("latin-1")
    if _UNSAFE.search(raw) is None:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


class AccessLog:
    """Writes one line per finished exchange: text (``log_format="text"``) or JSON.

    Text::

        2025-01-31T12:00:00.123Z 10.0.0.7 "GET /cart HTTP/1.1" 200 512 3.215ms route=shop
        version=candidate reason=weight upstream=http://shop-v2:8080 upstream_status=200
        upstream_ms=2.901 rid=5f0c2a91e3b4-1a rev=2.4+3ad0c9e1b2f4

    (one line; ``-`` for what does not apply, `` listener=preview`` when the request came in on
    the preview listener, `` error=KIND`` at the end when something failed). JSON: an object
    with the keys of `fields` plus ``"logger": "splitproxy.access"`` (and ``"listener":
    "preview"`` for the preview listener's requests).

    Lines go to ``stream``, stderr by default (the one in force when the log is created).
    """

    def __init__(
        self,
        log_format: str = "text",
        stream: IO[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.json = log_format == "json"
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._second = -1
        self._stamp = ""
        self.dropped = 0  # lines the stream refused (a closed or broken stderr)
        self._pending: list[str] = []

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def fields(self, ex: Exchange) -> dict[str, Any]:
        """The line's fields, as the JSON format writes them."""
        snap = ex.snapshot
        route = ex.route
        decision = ex.decision
        upstream_ms = round(ex.upstream_duration * 1000, 3) if ex.upstream_duration else None
        listener = {"listener": "preview"} if ex.preview else {}
        return {
            "time": self._time(self.clock()),
            "client": ex.conn.peer_ip or None,
            "method": ex.method.decode("latin-1"),
            "path": ex.target.decode("latin-1"),
            "protocol": "HTTP/1.1" if ex.http11 else "HTTP/1.0",
            "status": ex.status,
            "bytes": ex.bytes_out,
            "duration_ms": round(ex.duration * 1000, 3),
            "route": route.name if route is not None else None,
            "version": ex.version or None,
            "reason": decision.reason if decision is not None else None,
            "upstream": ex.upstream_url or None,
            "upstream_status": ex.upstream_status or None,
            "upstream_duration_ms": upstream_ms,
            "request_id": ex.request_id.decode("latin-1") or None,
            "config_revision": snap.revision if snap is not None else None,
            "error": ex.error_kind or None,
            **listener,
        }

    def line(self, ex: Exchange) -> str:
        """The access log line for ``ex`` (without the newline)."""
        if self.json:
            return self._json_line(ex)
        route = ex.route
        decision = ex.decision
        snap = ex.snapshot
        error = ex.error_kind
        return (
            f"{self._time(self.clock())} {ex.conn.peer_ip or '-'} "
            f'"{ex.method.decode("latin-1")} {_target(ex.target)} '
            f'{"HTTP/1.1" if ex.http11 else "HTTP/1.0"}" {ex.status} {ex.bytes_out} '
            f"{ex.duration * 1000:.3f}ms route={route.name if route is not None else '-'} "
            f"version={ex.version or '-'} "
            f"reason={decision.reason if decision is not None else '-'} "
            f"upstream={ex.upstream_url or '-'} upstream_status={ex.upstream_status or '-'} "
            f"upstream_ms={f'{ex.upstream_duration * 1000:.3f}' if ex.upstream_duration else '-'} "
            f"rid={ex.request_id.decode('latin-1') or '-'} "
            f"rev={snap.revision if snap is not None else '-'}"
            f"{' listener=preview' if ex.preview else ''}"
            f"{f' error={error}' if error else ''}"
        )

    def _json_line(self, ex: Exchange) -> str:
        # what json.dumps({"logger": ..., **self.fields(ex)}) writes, at a third of the cost
        route = ex.route
        decision = ex.decision
        snap = ex.snapshot
        q = _quote
        up_ms = repr(round(ex.upstream_duration * 1000, 3)) if ex.upstream_duration else "null"
        rid = ex.request_id
        peer = ex.conn.peer_ip
        return (
            f'{{"logger":"{ACCESS_LOGGER}","time":"{self._time(self.clock())}",'
            f'"client":{q(peer) if peer else "null"},"method":{q(ex.method.decode("latin-1"))},'
            f'"path":{q(ex.target.decode("latin-1"))},'
            f'"protocol":"{"HTTP/1.1" if ex.http11 else "HTTP/1.0"}","status":{ex.status},'
            f'"bytes":{ex.bytes_out},"duration_ms":{round(ex.duration * 1000, 3)!r},'
            f'"route":{q(route.name) if route is not None else "null"},'
            f'"version":{q(ex.version) if ex.version else "null"},'
            f'"reason":{q(decision.reason) if decision is not None else "null"},'
            f'"upstream":{q(ex.upstream_url) if ex.upstream_url else "null"},'
            f'"upstream_status":{ex.upstream_status or "null"},'
            f'"upstream_duration_ms":{up_ms},'
            f'"request_id":{q(rid.decode("latin-1")) if rid else "null"},'
            f'"config_revision":{q(snap.revision) if snap is not None else "null"},'
            f'"error":{q(ex.error_kind) if ex.error_kind else "null"}'
            f"{_PREVIEW_JSON if ex.preview else ''}}}"
        )

    def log(self, ex: Exchange) -> None:
        """Queue the line; the lines of one event-loop pass go out in one write, at the start
        of the next pass (without a running loop, at once)."""
        pending = self._pending
        pending.append(self.line(ex))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        pending.append("")  # the last newline
        try:
            self.stream.write("\n".join(pending))
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not break the proxy
            self.dropped += len(pending) - 1


class Observers:
    """Fans one exchange out to the recorder and the access log."""

    def __init__(self, recorder: ExchangeObserver, access_log: AccessLog | None) -> None:
        self.recorder = recorder
        self.access_log = access_log

    def exchange_started(self, ex: Exchange) -> None:
        self.recorder.exchange_started(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        self.recorder.exchange_finished(ex)
        if self.access_log is not None:
            self.access_log.log(ex)

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        self.recorder.attempt_failed(ex, version, kind)
