"""Persistence over a fenced backend (an in-memory one here; tests/integration/test_redis_store.py
runs the same against Redis): only a leader writes, each write carries the token of its moment,
a refused write is dropped, and a follower checks documents without touching the store."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pytest

from splitproxy.config import Rollout
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.persistence import Persistence, Rejected, Restored
from splitproxy.rollout.store import Fenced, StateUnavailable, VerdictEntry

SPEC = Rollout.model_validate({"steps": [20, 50]})


class FencedMemory:
    """A `StateBackend` that fences like the Redis one, in a dict."""

    fenced = True
    location = "memory://test"

    def __init__(self) -> None:
        self.fence = 0
        self.docs: dict[str, tuple[dict[str, Any], int]] = {}  # route -> (document, token)
        self.lines: list[tuple[VerdictEntry, int]] = []
        self.kept: dict[str, dict[str, Any]] = {}
        self.down = False

    def _check(self, token: int | None) -> int:
        if self.down:
            raise StateUnavailable("memory://test: connection refused")
        assert token is not None, "a fenced write without a token"
        if token < self.fence:
            raise Fenced(token, self.fence)
        self.fence = token
        return token

    def where(self, route: str) -> str:
        return f"memory://test {route}"

    def load(self, route: str) -> dict[str, Any] | None:
        if self.down:
            raise StateUnavailable("memory://test: connection refused")
        found = self.docs.get(route)
        return None if found is None else found[0]

    def save(self, route: str, data: dict[str, Any], token: int | None = None) -> None:
        self.docs[route] = (data, self._check(token))

    def delete(self, route: str) -> None:
        self.docs.pop(route, None)

    def routes(self) -> list[str]:
        return sorted(self.docs)

    def set_aside(self, route: str) -> str:
        self.kept[route] = self.docs[route][0]
        return f"memory://test rejected {route}"

    def verdicts(self) -> Record:
        return Record(self)

    def append(self, entries: Iterable[VerdictEntry], token: int | None = None) -> None:
        checked = self._check(token)
        self.lines += [(e, checked) for e in entries]

    def load_verdicts(self) -> dict[str, dict[str, VerdictEntry]]:
        out: dict[str, dict[str, VerdictEntry]] = {}
        for entry, _ in self.lines:
            out.setdefault(entry.route, {})[entry.revision] = entry
        return out


class Record:
    def __init__(self, backend: FencedMemory) -> None:
        self.backend = backend

    def append(self, entries: Iterable[VerdictEntry], token: int | None = None) -> None:
        self.backend.append(entries, token)

    def load(self) -> dict[str, dict[str, VerdictEntry]]:
        return self.backend.load_verdicts()


def persistence(backend: FencedMemory, **kw: Any) -> Persistence:
    return Persistence(backend, **kw)


async def test_a_replica_without_the_lease_writes_nothing_and_a_leader_writes_with_its_token() -> (
    None
):
    backend = FencedMemory()
    p = persistence(backend)
    p.mark("shop", Analyzer("shop", SPEC), [], 1.0)
    p.verdict("shop", "v1", "promoted", 1.0)
    await p.flush()
    assert (backend.docs, backend.lines) == ({}, [])
    assert p.verdicts("shop") == {}  # not even in its own memory: the record is the leader's

    p.token = 3
    p.mark("shop", Analyzer("shop", SPEC), [], 2.0)
    p.verdict("shop", "v1", "promoted", 2.0)
    await p.flush()
    assert backend.docs["shop"][0]["saved_at"] == 2.0
    assert backend.docs["shop"][1] == 3
    assert [(e.revision, token) for e, token in backend.lines] == [("v1", 3)]


async def test_a_write_carries_the_token_of_the_moment_it_was_queued() -> None:
    backend = FencedMemory()
    p = persistence(backend)
    p.token = 3
    p.mark("shop", Analyzer("shop", SPEC), [], 1.0)
    p.verdict("shop", "v1", "rolled_back", 1.0)
    p.token = None  # the lease was lost before the flush
    await p.flush()
    assert backend.docs["shop"][1] == 3  # written as the leader it was; the fence decides
    assert backend.lines[0][1] == 3


async def test_a_refused_write_is_dropped_logged_once_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FencedMemory()
    backend.fence = 5  # a newer leader has written
    calls: list[None] = []
    p = persistence(backend, on_fenced=lambda: calls.append(None))
    p.token = 4
    for at in (1.0, 2.0):
        p.mark("shop", Analyzer("shop", SPEC), [], at)
        p.verdict("shop", f"v{at:g}", "promoted", at)
        with caplog.at_level(logging.WARNING, "splitproxy.rollout.persistence"):
            await p.flush()
    assert (backend.docs, backend.lines) == ({}, [])
    assert len(calls) == 2  # each flush that was refused tells the replica
    refused = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(refused) == 1
    assert "fencing token 4 is older than 5" in refused[0].getMessage()
    assert p.last_error is None  # not an error to retry: nothing is queued again
    p.token = 6
    await p.flush()
    assert backend.docs == {}


async def test_an_unreachable_backend_keeps_the_write_for_the_next_flush() -> None:
    backend = FencedMemory()
    p = persistence(backend)
    p.token = 2
    backend.down = True
    p.verdict("shop", "v1", "promoted", 1.0)
    p.mark("shop", Analyzer("shop", SPEC), [], 1.0)
    await p.flush()
    assert p.last_error == "memory://test: connection refused"
    backend.down = False
    await p.flush()
    assert (backend.docs["shop"][1], backend.lines[0][1]) == (2, 2)
    assert p.summary()["last_error"] is None


def test_a_follower_checks_a_document_as_restore_does_and_sets_nothing_aside() -> None:
    backend = FencedMemory()
    backend.docs["shop"] = ({"format": 99}, 1)
    p = persistence(backend)
    rejected = p.resume("shop", SPEC, (), 0, {"format": 99}, backend.where("shop"))
    assert rejected == Rejected("memory://test shop", "format: 99 is not 1")
    assert (rejected.kept, backend.kept) == ("", {})
    assert p.route_state("shop")["rejected"] == {
        "path": "memory://test shop",
        "reason": "format: 99 is not 1",
    }
    kept = p.restore("shop", SPEC, (), 0)  # the leader's restore keeps a copy
    assert isinstance(kept, Rejected)
    assert (kept.kept, backend.kept) == ("memory://test rejected shop", {"shop": {"format": 99}})

    doc = Persistence.document("shop", Analyzer("shop", SPEC), [{"kind": "started"}], 1.0)
    restored = p.resume("shop", SPEC, (), 0, doc, backend.where("shop"))
    assert isinstance(restored, Restored)
    assert restored.ledger == [{"kind": "started"}]
    assert "shop" not in p.rejected


def test_a_backend_out_of_reach_at_start_is_rejected_without_a_copy() -> None:
    backend = FencedMemory()
    backend.down = True
    p = persistence(backend)
    rejected = p.restore("shop", SPEC, (), 0)
    assert isinstance(rejected, Rejected)
    assert rejected.reason.startswith("cannot be read now (memory://test: connection refused")
    assert rejected.kept == ""
