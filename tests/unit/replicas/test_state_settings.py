"""The ``state`` settings: a Redis URL checked at start-up, its password never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.cli import main
from splitproxy.replicas.connection import check_url, redact
from splitproxy.replicas.keys import Keys
from splitproxy.settings import InvalidSettings, load_settings


def test_a_redis_url_and_a_namespace_are_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPLITPROXY_STATE", "rediss://:s3cret@cache.internal:6380/2")
    monkeypatch.setenv("SPLITPROXY_STATE_NAMESPACE", "shop.prod:eu-1")
    settings = load_settings()
    assert settings.state == "rediss://:s3cret@cache.internal:6380/2"
    assert settings.state_namespace == "shop.prod:eu-1"
    assert (settings.state_dir, load_settings(state=None).state) == (None, None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379/0", "http://cache:6379/0 is not a redis:// or rediss:// URL"),
        ("/var/lib/splitproxy", "/var/lib/splitproxy is not a redis:// or rediss:// URL"),
        ("redis://:hunter2@cache:port/0", "redis://:***@cache:port/0 is not a usable Redis URL"),
        ("redis://:hunter2@/0", "redis://:***@/0 names no host"),
        ("redis://cache:6379/zero", "redis://cache:6379/zero: the database must be a number"),
    ],
)
def test_a_bad_state_url_is_one_line_naming_the_setting_without_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(state=url)
    (line,) = info.value.lines
    assert line.startswith("splitproxy: invalid setting state (SPLITPROXY_STATE): " + message)
    assert "hunter2" not in line


@pytest.mark.parametrize("namespace", ["", "a b", "x" * 65, "shop/prod", "é"])
def test_a_bad_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(state_namespace=namespace)
    (line,) = info.value.lines
    assert line.startswith("splitproxy: invalid setting state_namespace")
    assert "letters, digits" in line


def test_state_and_state_dir_together_are_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--state", "redis://:pw@127.0.0.1:1/0", "--state-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "invalid setting state (SPLITPROXY_STATE)" in err
    assert "set state (a Redis URL) or state_dir, not both" in err
    assert ":pw@" not in err


def test_the_state_flags_reach_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--state", "redis://127.0.0.1:1/0", "--state-namespace", "a b"]) == 2
    assert "invalid setting state_namespace" in capsys.readouterr().err


def test_redaction_keeps_what_says_where_and_drops_the_secret() -> None:
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:pw@h/1?password=pw") == "rediss://user:***@h/1"
    assert redact("redis://user@h") == "redis://user@h"
    assert redact("redis://[::1]:6379/0") == "redis://[::1]:6379/0"
    assert check_url("rediss://:pw@h:6380/3") == "rediss://:pw@h:6380/3"


def test_every_key_is_under_the_namespace() -> None:
    keys = Keys("shop")
    names = [getattr(keys, name) for name in dir(Keys) if isinstance(getattr(Keys, name), property)]
    assert len(names) == 9
    assert all(name.startswith("shop:") for name in names)
    with pytest.raises(ValueError, match="letters, digits"):
        Keys("shop prod")


def test_workers_and_a_redis_state_together_are_refused_naming_both() -> None:
    with pytest.raises(InvalidSettings, match="workers") as caught:
        load_settings(state="redis://127.0.0.1:6379/0", workers=2)
    assert "replicas" in str(caught.value)
    assert load_settings(state="redis://127.0.0.1:6379/0", workers=1).worker_count == 1
