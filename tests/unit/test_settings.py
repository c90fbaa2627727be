"""Static settings: defaults, SPLITPROXY_* environment variables, and flags over both."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.settings import InvalidSettings, Settings, load_settings, parse_address


def test_defaults_listen_everywhere_and_keep_admin_on_loopback() -> None:
    s = Settings()
    assert s.listen_address == ("0.0.0.0", 8080)
    assert s.admin_address == ("127.0.0.1", 9901)
    assert s.log_format == "text"
    assert s.access_log is True
    assert s.preview_address is None  # no preview listener unless it is set


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
        ("preview_listen", "nowhere"),
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


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("10.0.0.0/8", ("10.0.0.0/8",)),
        ("10.0.0.0/8, 192.168.0.0/16", ("10.0.0.0/8", "192.168.0.0/16")),
        (" 10.0.0.0/8,,fd00::/8 ,", ("10.0.0.0/8", "fd00::/8")),
        ('["10.0.0.0/8"]', ("10.0.0.0/8",)),
        ('  ["10.0.0.0/8", "192.168.0.0/16"] ', ("10.0.0.0/8", "192.168.0.0/16")),
        ("", ()),
    ],
)
def test_list_settings_read_comma_separated_values_or_a_json_list(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("SPLITPROXY_TRUSTED_PROXIES", env)
    assert Settings().trusted_proxies == expected


def test_a_list_flag_is_taken_as_it_is_and_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPLITPROXY_TRUSTED_PROXIES", "10.0.0.0/8")
    assert Settings(trusted_proxies=["192.168.0.0/16"]).trusted_proxies == ("192.168.0.0/16",)


def test_every_list_setting_skips_the_json_decoding_of_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "10.0.0.0/8" is not JSON: a list setting that did not split its variable would refuse it
    # (it was pydantic-settings' NoDecode marker; the settings now read the environment
    # themselves, so the test asks for the behaviour instead)
    listed = {
        name: field
        for name, field in Settings.model_fields.items()
        if typing.get_origin(field.annotation) in (list, tuple, set, frozenset)
    }
    assert "trusted_proxies" in listed
    for name in listed:
        monkeypatch.setenv(f"SPLITPROXY_{name.upper()}", "10.0.0.0/8")
        assert getattr(Settings(), name) == ("10.0.0.0/8",), name


@pytest.mark.parametrize(
    ("env", "value", "line"),
    [
        (
            "SPLITPROXY_TRUSTED_PROXIES",
            "10.0.0.0/8, 10.0.0.0/33",
            "splitproxy: invalid setting trusted_proxies (SPLITPROXY_TRUSTED_PROXIES): "
            "'10.0.0.0/33' is not a network",
        ),
        (
            "SPLITPROXY_TRUSTED_PROXIES",
            '["10.0.0.0/8"',
            "splitproxy: invalid setting trusted_proxies (SPLITPROXY_TRUSTED_PROXIES): "
            "'[\"10.0.0.0/8\"' is neither a JSON list nor comma-separated",
        ),
        (
            "SPLITPROXY_LOG_FORMAT",
            "xml",
            "splitproxy: invalid setting log_format (SPLITPROXY_LOG_FORMAT): "
            "Input should be 'text' or 'json', got 'xml'",
        ),
        (
            "SPLITPROXY_LISTEN",
            "nowhere",
            "splitproxy: invalid setting listen (SPLITPROXY_LISTEN): 'nowhere' is not host:port",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_the_setting_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, line: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert info.value.lines == [line]


def test_a_bad_flag_names_its_variable_and_a_bad_secret_is_not_echoed() -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(read_timeout=0, admin_token=12345)
    assert info.value.lines == [  # one line per bad setting, in the order of the table
        "splitproxy: invalid setting admin_token (SPLITPROXY_ADMIN_TOKEN): "
        "Input should be a valid string",
        "splitproxy: invalid setting read_timeout (SPLITPROXY_READ_TIMEOUT): "
        "Input should be greater than 0, got 0",
    ]


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_an_empty_admin_token_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", value)
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert len(info.value.lines) == 1
    assert "SPLITPROXY_ADMIN_TOKEN" in info.value.lines[0]
    assert "must not be empty" in info.value.lines[0]


def test_the_admin_token_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-from-file\n")
    assert load_settings(admin_token_file=path).admin_secret == "s3cret-from-file"
    assert load_settings().admin_secret is None


@pytest.mark.parametrize("kind", ["empty", "missing", "fifo", "huge", "spaces"])
def test_a_bad_token_file_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "token"
    if kind == "empty":
        path.write_text("\n")
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would block forever: never opened
    elif kind == "huge":
        path.write_text("x" * 10_000)
    elif kind == "spaces":
        path.write_text("two words")
    with pytest.raises(InvalidSettings) as info:
        load_settings(admin_token_file=path)
    (line,) = info.value.lines
    assert "admin_token_file (SPLITPROXY_ADMIN_TOKEN_FILE)" in line
    assert "two words" not in line  # the secret is never echoed


def test_a_token_and_a_token_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("a")
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", "b")
    with pytest.raises(InvalidSettings) as info:
        load_settings(admin_token_file=path)
    assert "not both" in info.value.lines[0]


def test_the_preview_listener_is_set_like_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_PREVIEW_LISTEN", ":8081")
    assert Settings().preview_address == ("0.0.0.0", 8081)
    assert Settings(preview_listen="127.0.0.1:0").preview_address == ("127.0.0.1", 0)
    with pytest.raises(InvalidSettings, match="SPLITPROXY_PREVIEW_LISTEN"):
        load_settings(preview_listen="8081")
