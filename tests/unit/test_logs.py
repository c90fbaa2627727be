"""The access log: one line per request, text or JSON, every field an operator looks for."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from splitproxy.config.vocabulary import FailureKind, Version
from splitproxy.dataplane.exchange import Exchange
from splitproxy.logs import AccessLog, Observers
from tests.unit.fakes import exchange, runtime_state

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def write(log_format: str, ex: Exchange) -> str:
    out = io.StringIO()
    AccessLog(log_format, out, clock=lambda: NOW).log(ex)
    return out.getvalue()


def test_a_text_line_has_every_field() -> None:
    state = runtime_state()
    ex = exchange(state, "shop", "candidate", "sticky", duration=0.0123)
    line = write("text", ex)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    revision = state.snapshot.revision  # type: ignore[union-attr]
    assert line == (
        '2023-11-14T22:13:20.250Z 203.0.113.7 "GET /cart?id=1 HTTP/1.1" 200 512 12.300ms '
        "route=shop version=candidate reason=sticky upstream=http://shop-candidate:8080 "
        f"upstream_status=200 upstream_ms=11.300 rid=abc-1 rev={revision}\n"
    )


def test_a_text_line_for_a_request_the_proxy_answered_itself() -> None:
    ex = exchange(runtime_state(), None, status=404, ttfb=0, duration=0.0002)
    line = write("text", ex)
    assert '"GET /cart?id=1 HTTP/1.1" 404 0 0.200ms route=- version=- reason=- upstream=-' in line
    assert "upstream_status=- upstream_ms=- rid=abc-1" in line
    failed = exchange(runtime_state(), "shop", "stable", status=502, ttfb=0, error_kind="connect")
    assert write("text", failed).endswith(" error=connect\n")


def test_a_json_line_has_every_field() -> None:
    state = runtime_state()
    ex = exchange(state, "shop", "stable", "weight", status=503, error_kind="timeout")
    line = write("json", ex)
    assert line.endswith("}\n")
    data = json.loads(line)
    assert data == {
        "logger": "splitproxy.access",
        "time": "2023-11-14T22:13:20.250Z",
        "client": "203.0.113.7",
        "method": "GET",
        "path": "/cart?id=1",
        "protocol": "HTTP/1.1",
        "status": 503,
        "bytes": 512,
        "duration_ms": 10.0,
        "route": "shop",
        "version": "stable",
        "reason": "weight",
        "upstream": "http://shop-stable:8080",
        "upstream_status": 503,
        "upstream_duration_ms": 9.0,
        "request_id": "abc-1",
        "config_revision": state.snapshot.revision,  # type: ignore[union-attr]
        "error": "timeout",
    }


@pytest.mark.parametrize(
    "ex_attrs",
    [
        {},
        {"route": None, "decision": None, "version": "", "snapshot": None, "upstream_url": ""},
        {"request_id": b"", "upstream_status": 0, "upstream_duration": 0.0, "http11": False},
        {"target": b'/a b"c\\d?\xe9=\x01', "method": b"PURGE"},
    ],
)
def test_the_json_line_is_the_fields(ex_attrs: dict[str, Any]) -> None:
    ex = exchange(runtime_state(), "shop", "candidate")
    for name, attr in ex_attrs.items():
        setattr(ex, name, attr)
    log = AccessLog("json", io.StringIO(), clock=lambda: NOW)
    assert json.loads(log.line(ex)) == {"logger": "splitproxy.access", **log.fields(ex)}


def test_odd_characters_in_a_path_cannot_forge_a_line_or_a_field() -> None:
    ex = exchange(runtime_state(), "shop", target=b'/x" 200 0 route=evil\\ \xe9\x1b[31m')
    line = write("text", ex)
    assert line.count("\n") == 1
    assert "\x1b" not in line
    assert r'"GET /x\" 200 0 route=evil\\ \xe9\x1b[31m HTTP/1.1"' in line
    data = json.loads(write("json", ex))
    assert data["path"] == '/x" 200 0 route=evil\\ \xe9\x1b[31m'


def test_lines_go_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("text").log(exchange(runtime_state()))
    assert '"GET /cart?id=1 HTTP/1.1" 200' in capsys.readouterr().err


def test_a_broken_stream_does_not_break_the_proxy() -> None:
    out = io.StringIO()
    log = AccessLog("text", out)
    out.close()
    log.log(exchange(runtime_state()))
    assert log.dropped == 1


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def exchange_started(self, ex: Exchange) -> None:
        self.calls.append(("started", ex.version))

    def exchange_finished(self, ex: Exchange) -> None:
        self.calls.append(("finished", ex.version))

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        self.calls.append(("failed", kind))


def test_observers_fan_out_to_the_recorder_and_the_access_log() -> None:
    recorder, out = Recording(), io.StringIO()
    observers = Observers(recorder, AccessLog("text", out))
    ex = exchange(runtime_state(), "shop", "candidate")
    observers.exchange_started(ex)
    observers.attempt_failed(ex, "candidate", "reset")
    observers.exchange_finished(ex)
    assert recorder.calls == [
        ("started", "candidate"),
        ("failed", "reset"),
        ("finished", "candidate"),
    ]
    assert out.getvalue().count("\n") == 1  # one line per request, at its end

    quiet = Observers(Recording(), None)  # the access log turned off
    quiet.exchange_finished(ex)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_preview_request_says_its_listener_and_reason(log_format: str) -> None:
    state = runtime_state()
    ex = exchange(state, "shop", "candidate", "preview", preview=True)
    line = write(log_format, ex)
    if log_format == "text":
        assert " reason=preview " in line
        assert line.endswith(" listener=preview\n")
        user = write("text", exchange(state, "shop", "candidate", "weight"))
        assert "listener=" not in user
    else:
        data = json.loads(line)
        assert (data["reason"], data["listener"]) == ("preview", "preview")
        fields = AccessLog("json", clock=lambda: NOW).fields(ex)
        assert data == {"logger": "splitproxy.access", **fields}
