"""How `Settings` reads ``SPLITPROXY_*`` variables itself (it did through pydantic-settings):
names in any case, flags over variables over defaults field by field, a variable's text
validated like a flag's value, nothing read after construction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.settings import InvalidSettings, Settings, _environment, load_settings


def test_variable_names_match_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("splitproxy_listen", "127.0.0.1:7002")
    monkeypatch.setenv("SplitProxy_Log_Level", "debug")
    s = Settings()
    assert s.listen_address == ("127.0.0.1", 7002)
    assert s.log_level == "debug"


def test_only_the_prefix_and_a_field_name_make_a_setting() -> None:
    environ = {
        "SPLITPROXY_LISTEN": ":1",
        "LISTEN": ":2",
        "SPLITPROXYLISTEN": ":3",
        "SPLITPROXY_LISTEN_X": ":4",
        "SPLITPROXY_": ":5",
    }
    assert _environment(["listen", "admin"], environ) == {"listen": ":1"}


def test_an_empty_variable_is_a_value_not_an_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_READ_TIMEOUT", "")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert info.value.lines == [
        "splitproxy: invalid setting read_timeout (SPLITPROXY_READ_TIMEOUT): "
        "Input should be a valid number, unable to parse string as a number, got ''"
    ]


def test_a_variable_is_validated_like_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_ACCESS_LOG", "off")
    monkeypatch.setenv("SPLITPROXY_WORKERS", "auto")
    monkeypatch.setenv("SPLITPROXY_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("SPLITPROXY_STATE_DIR", "/var/lib/splitproxy")
    s = Settings()
    assert s.access_log is False
    assert s.workers == "auto"
    assert s.max_body_bytes == 1024
    assert s.state_dir == Path("/var/lib/splitproxy")
    monkeypatch.setenv("SPLITPROXY_WORKERS", "3")
    assert Settings().workers == 3


def test_a_git_config_from_the_environment_moves_to_config_git(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = "git+https://example.com/ops.git#main:routes.yaml"
    monkeypatch.setenv("SPLITPROXY_CONFIG", spec)
    s = Settings()
    assert s.config is None
    assert s.config_git == spec
    assert Settings(config="/etc/routes.yaml").config_git is None  # the flag wins, whole


def test_an_explicit_none_flag_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_PREVIEW_LISTEN", ":8081")
    assert Settings(preview_listen=None).preview_listen is None


def test_the_environment_is_read_once_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    monkeypatch.setenv("SPLITPROXY_LISTEN", "127.0.0.1:7003")
    assert s.listen == "0.0.0.0:8080"
    assert s.model_copy(update={"admin": "127.0.0.1:1"}).listen == "0.0.0.0:8080"


_TIMEOUTS = ("connect_timeout", "read_timeout", "header_timeout", "body_timeout")


@given(
    flags=st.dictionaries(st.sampled_from(_TIMEOUTS), st.integers(1, 10**6)),
    env=st.dictionaries(st.sampled_from(_TIMEOUTS), st.integers(1, 10**6)),
)
def test_each_field_takes_its_flag_else_its_variable_else_its_default(
    flags: dict[str, int], env: dict[str, int]
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(f"SPLITPROXY_{name.upper()}", str(value))
        s = Settings(**flags)
        defaults = Settings.model_fields
    for name in _TIMEOUTS:
        want = flags.get(name, env.get(name, defaults[name].default))
        assert getattr(s, name) == want, name
