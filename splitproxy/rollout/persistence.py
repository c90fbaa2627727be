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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.store import StateStore

logger = logging.getLogger("splitproxy.rollout.persistence")

STATE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class Restored:
    """A route's resumed state: its analyzer and the ledger saved with it."""

    analyzer: Analyzer
    ledger: list[dict[str, Any]]
    where: str  # "from disk" or "from memory"


class Persistence:
    """Writes and reads the rollout state documents; see the module docstring."""

    def __init__(self, store: StateStore | None, *, retry: float = 1.0) -> None:
        self.store = store
        self.retry = retry  # seconds before a failed write is tried again
        self.last_error: str | None = None
        self._dirty: dict[str, dict[str, Any]] = {}  # route -> the document to write
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
        name: str, analyzer: Analyzer, ledger: Iterable[dict[str, Any]], now: float
    ) -> dict[str, Any]:
        """The document saved for a route."""
        return {
            "format": STATE_FORMAT,
            "route": name,
            "saved_at": now,
            "analyzer": encode(analyzer),
            "ledger": list(ledger),
        }

    def mark(
        self, name: str, analyzer: Analyzer, ledger: Iterable[dict[str, Any]], now: float
    ) -> None:
        """Queue the route's state for the next flush (nothing to do without a store)."""
        if self.store is not None:
            self._dirty[name] = self.document(name, analyzer, ledger, now)
            self._queued.set()

    def retire(
        self, name: str, analyzer: Analyzer, ledger: Iterable[dict[str, Any]], now: float
    ) -> None:
        """A route lost its rollout: without a store, keep its state in memory (so a finished
        revision stays finished if the rollout comes back); with one, the file keeps it."""
        if self.store is None:
            self._retired[name] = self.document(name, analyzer, ledger, now)

    async def flush(self) -> None:
        """Write the queued states (in a thread, one flush at a time, newest state wins)."""
        if self.store is None or not self._dirty:
            return
        async with self._lock:
            docs, self._dirty = self._dirty, {}
            if not docs:
                return
            failed = await asyncio.to_thread(self._write, docs)
            for name, error in failed.items():
                self._dirty.setdefault(name, docs[name])  # try again on the next flush
                if self.last_error != error:
                    logger.error("cannot save the rollout state of route %r: %s", name, error)
            self.last_error = next(iter(failed.values()), None)

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
            if self._dirty:  # a failed write waits a little before it is tried again
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
    ) -> Restored | None:
        """The saved state of ``name`` resumed under ``spec``, or None when there is none.

        A file that cannot be used (damaged, foreign) is logged, copied aside as
        ``<route>.json.rejected`` and ignored; memory-only state is always ours, so a failure
        to resume it is a bug and raises."""
        store = self.store
        data = store.load(name) if store is not None else self._retired.pop(name, None)
        if data is None:
            return None
        try:
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            analyzer = decode(
                name, spec, data["analyzer"], gates=gates, path_class_slots=path_class_slots
            )
            ledger = [e for e in data.get("ledger", ()) if isinstance(e, dict)]
        except Exception as exc:  # a damaged or foreign file must never stop the proxy
            if store is None:
                raise
            path = store.path(name)
            kept = path.with_name(path.name + ".rejected")
            with contextlib.suppress(OSError):  # keep it for a human; the next save replaces it
                shutil.copyfile(path, kept)
            logger.error(
                "cannot resume the rollout state of route %r from %s (%r); starting afresh "
                "(a copy is kept as %s)",
                name, path, exc, kept,
            )  # fmt: skip
            return None
        return Restored(analyzer, ledger, "from disk" if store is not None else "from memory")

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
        return {
            "persistent": store is not None,
            "file": str(store.path(name)) if store is not None else None,
            "last_error": self.last_error,
        }


__all__ = ["STATE_FORMAT", "Persistence", "Restored"]
