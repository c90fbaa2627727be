"""Durable rollout state: atomic writes, survival across instances, damaged files."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from splitproxy.rollout.store import (
    MAX_STATE_BYTES,
    StateStore,
    StateUnreadable,
    VerdictEntry,
    finished_from,
)


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


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_a_damaged_file_is_an_error_naming_the_path_and_the_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = StateStore(tmp_path)
    store.path("shop").write_bytes(content)
    with pytest.raises(StateUnreadable) as caught:
        store.load("shop")
    assert caught.value.where == str(store.path("shop"))
    assert caught.value.reason.startswith(reason)


def test_a_fifo_a_directory_or_a_huge_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    os.mkfifo(store.path("fifo"))  # no writer: a blocking open would hang forever
    store.path("dir").mkdir()
    with store.path("huge").open("wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)  # sparse: nothing is written
    for route, reason in [
        ("fifo", "not a regular file"),
        ("dir", "not a regular file"),
        ("huge", f"{MAX_STATE_BYTES + 1} bytes, more than"),
    ]:
        with pytest.raises(StateUnreadable) as caught:
            store.load(route)
        assert caught.value.reason.startswith(reason), route


def test_verdicts_are_appended_and_the_latest_per_revision_wins(tmp_path: Path) -> None:
    record = StateStore(tmp_path).verdicts()
    assert record.load() == {}
    record.append([VerdictEntry("shop", "v2", "rolled_back", 1.0, "guard")])
    record.append([VerdictEntry("shop", "v2", "retried", 2.0)])
    record.append([VerdictEntry("shop", "v3", "promoted", 3.0)])
    record.append([VerdictEntry("cart", "v9", "rolled_back", 4.0)])
    again = StateStore(tmp_path).verdicts().load()
    assert {r: {rev: e.verdict for rev, e in revs.items()} for r, revs in again.items()} == {
        "shop": {"v3": "promoted"},
        "cart": {"v9": "rolled_back"},
    }
    assert finished_from(again["shop"]) == {"v3": "promoted"}


def test_a_torn_or_edited_line_is_skipped_and_the_next_append_starts_a_new_line(
    tmp_path: Path,
) -> None:
    record = StateStore(tmp_path).verdicts()
    record.append([VerdictEntry("shop", "v2", "rolled_back", 1.0)])
    with record.path.open("ab") as f:
        f.write(b'{"route": "shop", "revision": "v2", "verd')  # a crash mid-write
    record.append([VerdictEntry("shop", "v4", "promoted", 2.0)])
    with record.path.open("ab") as f:
        f.write(b'{"route": "shop", "revision": "v5", "verdict": "won", "at": 3}\n[]\n')
    loaded = record.load()
    assert sorted(loaded["shop"]) == ["v2", "v4"]
    assert record.skipped == 3


def test_a_long_record_is_compacted_to_the_latest_verdicts(tmp_path: Path) -> None:
    record = StateStore(tmp_path).verdicts()
    entries = [VerdictEntry("shop", f"v{i % 10}", "rolled_back", float(i)) for i in range(5000)]
    record.append(entries)
    record.append([VerdictEntry("shop", "v3", "retried", 6000.0)])
    before = record.load()
    assert len(record.path.read_text().splitlines()) == 9  # v3 was retried
    assert StateStore(tmp_path).verdicts().load() == before
    assert sorted(before["shop"]) == [f"v{i}" for i in range(10) if i != 3]


def test_route_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    store.save("../evil", {"x": 1})
    assert not (tmp_path / "evil.json").exists()
    assert store.load("../evil") == {"x": 1}
