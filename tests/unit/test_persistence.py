"""Rollout state persistence on its own: queued documents written by the background writer,
failed writes retried, damaged files set aside, memory-only state kept for a comeback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from unittest import mock

from splitproxy.config import Rollout
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.persistence import Persistence, Rejected, Restored
from splitproxy.rollout.store import StateStore

SPEC = Rollout.model_validate({"steps": [20, 50]})


def analyzer() -> Analyzer:
    return Analyzer("shop", SPEC)


def saved(path: Path) -> dict[str, object] | None:
    return dict(json.loads(path.read_text())) if path.exists() else None


async def eventually(path: Path, saved_at: float) -> dict[str, object]:
    for _ in range(200):
        doc = saved(path)
        if doc is not None and doc["saved_at"] == saved_at:
            return doc
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never had the state saved at {saved_at}")


async def test_the_writer_saves_what_is_marked_and_close_saves_the_rest(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    persistence = Persistence(store, retry=0.01)
    persistence.start()
    persistence.mark("shop", analyzer(), [{"kind": "started"}], 1.0)
    doc = await eventually(store.path("shop"), 1.0)
    assert doc["format"] == 1
    assert doc["ledger"] == [{"kind": "started"}]
    persistence.mark("shop", analyzer(), [], 2.0)
    await persistence.close()
    assert json.loads(store.path("shop").read_text())["saved_at"] == 2.0
    restored = persistence.restore("shop", SPEC, (), 0)
    assert isinstance(restored, Restored)
    assert (restored.where, restored.analyzer.phase) == ("from disk", "idle")


async def test_a_failed_write_is_reported_and_tried_again(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    persistence = Persistence(store, retry=0.01)
    with mock.patch.object(store, "save", side_effect=OSError("disk full")):
        persistence.mark("shop", analyzer(), [], 1.0)
        await persistence.flush()
    assert persistence.last_error == "disk full"
    assert persistence.summary()["last_error"] == "disk full"
    persistence.start()  # the document is still queued: the writer retries it
    await eventually(store.path("shop"), 1.0)
    await persistence.close()
    assert persistence.last_error is None


async def test_a_damaged_file_is_set_aside_and_memory_only_state_comes_back(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    store.save("shop", {"format": 99})
    rejected = Persistence(store).restore("shop", SPEC, (), 0)
    assert rejected == Rejected(str(store.path("shop")), "format: 99 is not 1")
    assert json.loads((tmp_path / "shop.json.rejected").read_text()) == {"format": 99}

    memory = Persistence(None)
    memory.mark("shop", analyzer(), [], 1.0)  # nothing to write without a store
    await memory.flush()
    assert memory.restore("shop", SPEC, (), 0) is None
    memory.retire("shop", analyzer(), [{"kind": "abandoned"}], 1.0)
    restored = memory.restore("shop", SPEC, (), 0)
    assert isinstance(restored, Restored)
    assert (restored.where, restored.ledger) == ("from memory", [{"kind": "abandoned"}])
    assert memory.restore("shop", SPEC, (), 0) is None  # taken
