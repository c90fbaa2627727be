"""``workers`` / ``SPLITPROXY_WORKERS`` / ``--workers``: how many processes ``serve`` runs."""

from __future__ import annotations

import os

import pytest

from splitproxy.cli import main
from splitproxy.settings import InvalidSettings, load_settings


def test_one_process_unless_asked() -> None:
    assert load_settings().worker_count == 1


def test_a_number_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(workers="3").worker_count == 3
    monkeypatch.setenv("SPLITPROXY_WORKERS", "4")
    assert load_settings().worker_count == 4


def test_auto_is_one_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPROXY_WORKERS", "auto")
    assert load_settings().worker_count == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "65", "-1", "many"])
def test_a_bad_count_names_the_setting(value: str) -> None:
    with pytest.raises(InvalidSettings) as caught:
        load_settings(workers=value)
    assert all("SPLITPROXY_WORKERS" in line for line in caught.value.lines)


def test_serve_refuses_a_bad_count_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "-c", "routes.yaml", "--workers", "0"]) == 2
    assert "SPLITPROXY_WORKERS" in capsys.readouterr().err
