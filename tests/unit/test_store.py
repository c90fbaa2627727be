"""Durable rollout state: atomic writes, survival across instances, damaged files."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from splitproxy.rollout.store import StateStore


def test_saved_state_survives_a_new_store(tmp_path: Path) -> None:
    StateStore(tmp_path / "state").save("shop", {"phase": "progressing", "step": 2, "weight": 25.0})
    again = StateStore(tmp_path / "state")
    assert again.load("shop") == {"phase": "progressing", "step": 2, "weight": 25.0}
    assert again.load("other") is None
    assert again.routes() == ["shop"]


def test_a_failed_write_keeps_the_old_state_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save("shop", {"phase": "progressing"})
    with (
        mock.patch("splitproxy.rollout.store.os.replace", side_effect=OSError("disk full")),
        pytest.raises(OSError, match="disk full"),
    ):
        store.save("shop", {"phase": "promoted"})
    assert store.load("shop") == {"phase": "progressing"}
    assert sorted(os.listdir(tmp_path)) == ["shop.json"]


def test_a_damaged_file_is_ignored_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path)
    store.path("shop").write_text("{not json")
    assert store.load("shop") is None
    assert "unreadable rollout state" in caplog.text


def test_route_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    store.save("../evil", {"x": 1})
    assert not (tmp_path / "evil.json").exists()
    assert store.load("../evil") == {"x": 1}
