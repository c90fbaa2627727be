"""Durable rollout state: the analyzer state documents and the ledgers, written and read back.

`Persistence` owns every state write. The controller queues a route's state with `mark`
(every tick that emitted an event or moved the weight, every ``checkpoint`` seconds while a
rollout is active, and at shutdown); the writes go out through `store.StateStore` (atomic
rename) from a thread, one flush at a time, newest state wins. After `start` a background
writer flushes as soon as something is queued (and retries failed writes); `flush` writes
the queue now (a manual command is durable before the admin API says it happened); `close`
stops the writer and writes what is left.

A route's document is ``{"format": 1, "route", "saved_at", "analyzer": codec.encode(analyzer),
"ledger": [...]}``. Without a store the state lives in memory only: a dropped rollout's
state is kept (`retire`) so that putting its ``rollout:`` back resumes it.

*Reading is input handling.* `restore` checks a document field by field
(`validation.check_analyzer`) before decoding it; a file that cannot be read, decoded or
trusted is copied aside as ``<route>.json.rejected``, logged with its path and the reason, and
comes back as `Rejected`: the controller then holds the route on stable, paused.

*Verdicts.* Each promotion, rollback and ``retry`` is also appended to the store's
`store.VerdictRecord` (before the state documents of the same flush). `verdicts` returns a
route's finished revisions from it, so a rolled-back revision stays rolled back when its state
file is lost, truncated or older than the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout.analyzer import FINISHED_KEPT, Analyzer, spec_digest
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.phases import Phase
from splitproxy.rollout.revert import WarmStable
from splitproxy.rollout.store import (
    StateStore,
    StateUnreadable,
    Verdict,
    VerdictEntry,
    finished_from,
)
from splitproxy.rollout.validation import InvalidState, check_analyzer, check_document

logger = logging.getLogger("splitproxy.rollout.persistence")

STATE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class Restored:
    """A route's resumed state: its analyzer and the ledger saved with it."""

    analyzer: Analyzer
    ledger: list[dict[str, Any]]
    where: str  # "from disk" or "from memory"
    warm: WarmStable | None = None  # a revert window still to honour


@dataclass(frozen=True, slots=True)
class Rejected:
    """A route's saved state that cannot be trusted: where it was and why."""

    path: str
    reason: str


def adopt_verdicts(analyzer: Analyzer, verdicts: Mapping[str, Phase]) -> bool:
    """Give ``analyzer`` the verdicts on record (revision -> promoted/rolled_back, oldest
    first) as finished revisions. True when they contradict its own rollout (a state older
    than its verdict): the caller then starts from a fresh analyzer holding them."""
    for revision, phase in verdicts.items():
        analyzer.finished.pop(revision, None)
        analyzer.finished[revision] = phase
    while len(analyzer.finished) > FINISHED_KEPT:
        analyzer.finished.pop(next(iter(analyzer.finished)))
    ended = verdicts.get(analyzer.revision) if analyzer.revision is not None else None
    return ended is not None and ended != analyzer.phase


class Persistence:
    """Writes and reads the rollout state documents; see the module docstring."""

    def __init__(self, store: StateStore | None, *, retry: float = 1.0) -> None:
        self.store = store
        self.retry = retry  # seconds before a failed write is tried again
        self.last_error: str | None = None
        self._dirty: dict[str, dict[str, Any]] = {}  # route -> the document to write
        self._verdicts_due: list[VerdictEntry] = []  # appended before the next documents
        self._verdicts: dict[str, dict[str, VerdictEntry]] | None = None  # read at first use
        self.rejected: dict[str, Rejected] = {}  # route -> its state that was set aside
        self._retired: dict[str, dict[str, Any]] = {}  # memory only: dropped rollouts' state
        self._lock = asyncio.Lock()
        self._queued = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def persistent(self) -> bool:
        return self.store is not None

    # --- writing ------------------------------------------------------------------------------

    @staticmethod
    def document(
        name: str,
        analyzer: Analyzer,
        ledger: Iterable[dict[str, Any]],
        now: float,
        warm: WarmStable | None = None,
    ) -> dict[str, Any]:
        """The document saved for a route (``warm``: its revert window, if open)."""
        doc = {
            "format": STATE_FORMAT,
            "route": name,
            "saved_at": now,
            "analyzer": encode(analyzer),
            "ledger": list(ledger),
        }
        if warm is not None:
            doc["warm"] = warm.to_dict()
        return doc

    def mark(
        self,
        name: str,
        analyzer: Analyzer,
        ledger: Iterable[dict[str, Any]],
        now: float,
        warm: WarmStable | None = None,
    ) -> None:
        """Queue the route's state for the next flush (nothing to do without a store)."""
        if self.store is not None:
            self._dirty[name] = self.document(name, analyzer, ledger, now, warm)
            self._queued.set()

    def retire(
        self, name: str, analyzer: Analyzer, ledger: Iterable[dict[str, Any]], now: float
    ) -> None:
        """A route lost its rollout: without a store, keep its state in memory (so a finished
        revision stays finished if the rollout comes back); with one, the file keeps it."""
        if self.store is None:
            self._retired[name] = self.document(name, analyzer, ledger, now)

    def verdict(
        self, name: str, revision: str, verdict: Verdict, at: float, reason: str = ""
    ) -> None:
        """Record a finished revision (or a ``retried`` one) in the append-only record; it is
        written before the state documents of the next flush."""
        if self.store is None:
            return
        entry = VerdictEntry(name, revision, verdict, at, reason)
        known = self._load_verdicts().setdefault(name, {})
        if verdict == "retried":
            known.pop(revision, None)
        else:
            known[revision] = entry
        self._verdicts_due.append(entry)
        self._queued.set()

    def verdicts(self, name: str) -> dict[str, Phase]:
        """The route's finished revisions on record and their final phase, oldest first."""
        if self.store is None:
            return {}
        return dict(finished_from(self._load_verdicts().get(name, {})))

    def _load_verdicts(self) -> dict[str, dict[str, VerdictEntry]]:
        if self._verdicts is None:
            assert self.store is not None
            record = self.store.verdicts()
            try:
                self._verdicts = record.load()
            except StateUnreadable as exc:
                logger.error("cannot read the verdicts of finished revisions: %s", exc)
                self._verdicts = {}
        return self._verdicts

    async def flush(self) -> None:
        """Write the queued verdicts, then the queued states (in a thread, one flush at a
        time, newest state wins)."""
        if self.store is None or not (self._dirty or self._verdicts_due):
            return
        async with self._lock:
            verdicts, self._verdicts_due = self._verdicts_due, []
            if verdicts:
                error = await asyncio.to_thread(self._append, verdicts)
                if error is not None:
                    self._verdicts_due[:0] = verdicts  # try again on the next flush
                    if self.last_error != error:
                        logger.error("cannot record the verdicts of %s: %s", verdicts, error)
                    self.last_error = error
            docs, self._dirty = self._dirty, {}
            if not docs:
                return
            failed = await asyncio.to_thread(self._write, docs)
            for name, error in failed.items():
                self._dirty.setdefault(name, docs[name])  # try again on the next flush
                if self.last_error != error:
                    logger.error("cannot save the rollout state of route %r: %s", name, error)
            self.last_error = next(iter(failed.values()), None)

    def _append(self, entries: list[VerdictEntry]) -> str | None:
        assert self.store is not None
        try:
            self.store.verdicts().append(entries)
        except OSError as exc:
            return str(exc)
        return None

    def _write(self, docs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        assert self.store is not None
        failed: dict[str, str] = {}
        for name, doc in docs.items():
            try:
                self.store.save(name, doc)
            except (OSError, ValueError) as exc:
                failed[name] = str(exc)
        return failed

    # --- the background writer ----------------------------------------------------------------

    def start(self) -> None:
        """Flush in the background whenever a state is queued (needs a running loop)."""
        if self._writer is None and self.store is not None:
            self._closing = False
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queued(), name="splitproxy-persist"
            )

    async def _write_queued(self) -> None:
        while not self._closing:
            if self._dirty or self._verdicts_due:  # a failed write waits before a retry
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), self.retry)
            else:
                await self._queued.wait()
            self._queued.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not stop saving for good
                logger.exception("saving the rollout state failed")

    async def close(self) -> None:
        """Stop the writer (a write under way completes: never two at once), then write
        what is queued."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._closing = True
            self._queued.set()
            try:
                await writer
            except Exception:
                logger.exception("saving the rollout state failed")
        await self.flush()

    # --- reading ------------------------------------------------------------------------------

    def restore(
        self, name: str, spec: Rollout, gates: Iterable[Gate], path_class_slots: int
    ) -> Restored | Rejected | None:
        """The saved state of ``name`` resumed under ``spec``; None when there is none;
        `Rejected` when there is one that cannot be trusted.

        A file that cannot be read, checked or decoded is logged with its path and the reason
        and copied aside as ``<route>.json.rejected`` (the next save replaces it); memory-only
        state is always ours, so a failure to resume it is a bug and raises."""
        store = self.store
        if store is None:
            data = self._retired.pop(name, None)
            if data is None:
                return None
            analyzer = decode(
                name, spec, data["analyzer"], gates=gates, path_class_slots=path_class_slots
            )
            return Restored(analyzer, list(data["ledger"]), "from memory")
        path = store.path(name)
        try:
            data = store.load(name)
            if data is None:
                return None
            raw = check_document(data, name)
            check_analyzer(raw, name, spec, spec_digest(spec))
            analyzer = decode(name, spec, raw, gates=gates, path_class_slots=path_class_slots)
            ledger = [e for e in data.get("ledger", ()) if isinstance(e, dict)]
            warm = WarmStable.from_dict(data["warm"]) if data.get("warm") is not None else None
        except StateUnreadable as exc:
            return self._reject(name, path, exc.reason)
        except InvalidState as exc:
            return self._reject(name, path, str(exc))
        except Exception as exc:  # a damaged or foreign file must never stop the proxy
            return self._reject(name, path, f"cannot be decoded ({exc!r})")
        self.rejected.pop(name, None)
        return Restored(analyzer, ledger, "from disk", warm)

    def _reject(self, name: str, path: Path, reason: str) -> Rejected:
        kept = path.with_name(path.name + ".rejected")
        with contextlib.suppress(OSError):  # keep it for a human; the next save replaces it
            if path.is_file():
                shutil.copyfile(path, kept)
        logger.error(
            "cannot resume the rollout state of route %r from %s: %s; the route is held on "
            "stable with its rollout paused (a copy is kept as %s)",
            name, path, reason, kept,
        )  # fmt: skip
        rejected = self.rejected[name] = Rejected(str(path), reason)
        return rejected

    def summary(self) -> dict[str, Any]:
        """Where rollout state lives, for the top of the status."""
        if self.store is None:
            return {
                "state_dir": None,
                "persistent": False,
                "note": "memory only: rollout state is lost on restart (set --state-dir)",
            }
        return {
            "state_dir": str(self.store.directory),
            "persistent": True,
            "last_error": self.last_error,
        }

    def route_state(self, name: str) -> dict[str, Any]:
        """The ``state`` part of a route's rollout status."""
        store = self.store
        rejected = self.rejected.get(name)
        return {
            "persistent": store is not None,
            "file": str(store.path(name)) if store is not None else None,
            "last_error": self.last_error,
            "rejected": None
            if rejected is None
            else {"path": rejected.path, "reason": rejected.reason},
        }


__all__ = ["STATE_FORMAT", "Persistence", "Rejected", "Restored", "adopt_verdicts"]
