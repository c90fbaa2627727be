"""Static settings: defaults, SPLITPROXY_* environment variables, and flags over both."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.settings import Settings, parse_address


def test_defaults_listen_everywhere_and_keep_admin_on_loopback() -> None:
    s = Settings()
    assert s.listen_address == ("0.0.0.0", 8080)
    assert s.admin_address == ("127.0.0.1", 9901)
    assert s.log_format == "text"
    assert s.access_log is True


def test_environment_sets_values_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_LISTEN", "127.0.0.1:7000")
    monkeypatch.setenv("SPLITPROXY_LOG_FORMAT", "json")
    monkeypatch.setenv("SPLITPROXY_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("SPLITPROXY_CONFIG", "/etc/splitproxy/routes.yaml")
    s = Settings(listen="127.0.0.1:7001")  # a flag, passed as a keyword
    assert s.listen_address == ("127.0.0.1", 7001)
    assert s.log_format == "json"
    assert s.read_timeout == 2.5
    assert s.admin_token is not None
    assert s.admin_token.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s)  # secrets stay out of logs
    assert str(s.config) == "/etc/splitproxy/routes.yaml"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("listen", "nowhere"),
        ("log_format", "xml"),
        ("read_timeout", 0),
        ("trusted_proxies", ["10.0.0.0/33"]),
    ],
)
def test_invalid_settings_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_unknown_environment_names_are_ignored_but_unknown_fields_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPLITPROXY_NOT_A_SETTING", "1")
    Settings()
    with pytest.raises(ValidationError):
        Settings(not_a_setting=1)  # type: ignore[call-arg]


def test_addresses() -> None:
    assert parse_address(":8080") == ("0.0.0.0", 8080)
    assert parse_address("[::1]:9901") == ("::1", 9901)
    with pytest.raises(ValueError, match="host:port"):
        parse_address("localhost")
