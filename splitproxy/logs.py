"""Logging: the process log (text or JSON lines on stderr) and the access log (a line a request)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitproxy.proxy import Exchange, ExchangeObserver

ACCESS_LOGGER = "splitproxy.access"


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


class AccessLog:
    """Writes one line per finished exchange to the ``splitproxy.access`` logger."""

    def __init__(self, log_format: str, revision: Any) -> None:
        self.json = log_format == "json"
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._revision = revision  # a callable returning the current config revision

    def fields(self, ex: Exchange) -> dict[str, Any]:
        snap = ex.snapshot
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "duration_ms": round(ex.duration * 1000, 3),
            "method": ex.method.decode("latin-1"),
            "path": ex.target.decode("latin-1"),
            "status": ex.status,
            "route": ex.route.name if ex.route else "",
            "version": ex.version,
            "reason": ex.decision.reason if ex.decision else "",
            "upstream": ex.upstream_url,
            "upstream_status": ex.upstream_status or None,
            "upstream_duration_ms": round(ex.upstream_duration * 1000, 3)
            if ex.upstream_status
            else None,
            "bytes": ex.bytes_out,
            "client": ex.conn.peer_ip,
            "request_id": ex.request_id.decode("latin-1"),
            "config_revision": snap.revision if snap is not None else "",
            "error": ex.error_kind or None,
        }

    def log(self, ex: Exchange) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        f = self.fields(ex)
        if self.json:
            self.logger.info("request", extra={"fields": f})
        else:
            self.logger.info(
                '%s "%s %s" %s %s %sms route=%s version=%s reason=%s upstream=%s rid=%s rev=%s%s',
                f["client"], f["method"], f["path"], f["status"], f["bytes"], f["duration_ms"],
                f["route"] or "-", f["version"] or "-", f["reason"] or "-", f["upstream"] or "-",
                f["request_id"], f["config_revision"] or "-",
                f" error={f['error']}" if f["error"] else "",
            )  # fmt: skip


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

    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None:
        self.recorder.attempt_failed(ex, version, kind)
