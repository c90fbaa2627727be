"""Durable rollout state: the analyzer state documents and the ledgers, written and read back.

`Persistence` owns every state write. The controller queues a route's state with `mark`
(every tick that emitted an event or moved the weight, every ``checkpoint`` seconds while a
rollout is active, and at shutdown); the writes go out through a `store.StateBackend` (the
files of `store.StateStore`, or the Redis replicas share) from a thread, one flush at a time,
newest state wins. After `start` a background
writer flushes as soon as something is queued (and retries failed writes); `flush` writes
the queue now (a manual command is durable before the admin API says it happened); `close`
stops the writer and writes what is left.

A route's document is ``{"format": 1, "route", "saved_at", "analyzer": codec.encode(analyzer),
"ledger": [...]}``. Without a store the state lives in memory only: a dropped rollout's
state is kept (`retire`) so that putting its ``rollout:`` back resumes it.

*Fencing.* With a fenced backend (Redis, shared by replicas) only the leader writes: `token`
is the fencing token of the lease it holds (None: not leading). `mark` and `verdict` capture the
token of that moment with what they queue, and queue nothing without one; a write the backend
refuses for its token (`store.Fenced`: a newer leader has written) is dropped, not retried, and
``on_fenced`` is called so the replica steps down.

*Reading is input handling.* `restore` (= `load` + `resume`) checks a document field by field
(`validation.check_analyzer`) before decoding it; a document that cannot be read, decoded or
trusted is set aside (``<route>.json.rejected``, or the Redis ``rejected`` hash), logged with
where it was and the reason, and comes back as `Rejected`: the controller then holds the route
on stable, paused. `resume` alone checks a document fetched elsewhere (a follower adopting the
leader's) the same way, and sets nothing aside unless asked.

*Verdicts.* Each promotion, rollback and ``retry`` is also appended to the store's
`store.VerdictRecord` (before the state documents of the same flush). `verdicts` returns a
route's finished revisions from it, so a rolled-back revision stays rolled back when its state
file is lost, truncated or older than the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout.analyzer import FINISHED_KEPT, Analyzer, spec_digest
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.phases import Phase
from splitproxy.rollout.revert import WarmStable
from splitproxy.rollout.store import (
    Fenced,
    StateBackend,
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
    where: str  # "from disk", "from Redis" or "from memory"
    warm: WarmStable | None = None  # a revert window still to honour


@dataclass(frozen=True, slots=True)
class Rejected:
    """A route's saved state that cannot be trusted: where it was, why, and where a copy is
    kept for a human ("" when none was made)."""

    path: str
    reason: str
    kept: str = field(default="", compare=False)


Queued = tuple[dict[str, Any], int | None]  # a document and the fencing token of its moment


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

    def __init__(
        self,
        store: StateBackend | None,
        *,
        retry: float = 1.0,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.retry = retry  # seconds before a failed write is tried again
        self.last_error: str | None = None
        # the fencing token of the lease in force (set by the replica link); None: not leading
        self.token: int | None = None
        self.on_fenced = on_fenced  # called (on the loop) when a write was refused for its token
        self._fenced_logged: int | None = None  # the refused token last logged (log it once)
        self._dirty: dict[str, Queued] = {}  # route -> the document to write, with its token
        # appended before the next documents, each with its token
        self._verdicts_due: list[tuple[VerdictEntry, int | None]] = []
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

    @property
    def backend(self) -> Literal["file", "redis"] | None:
        """Which kind of store keeps the state (None: memory only)."""
        if self.store is None:
            return None
        return "file" if isinstance(self.store, StateStore) else "redis"

    def _writes(self) -> bool:
        """True when a write may be queued now: a store, and with a fenced one, a token."""
        store = self.store
        return store is not None and (not store.fenced or self.token is not None)

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
        """Queue the route's state for the next flush, with the fencing token of this moment
        (nothing to do without a store, or with a fenced one while not leading)."""
        if self._writes():
            self._dirty[name] = (self.document(name, analyzer, ledger, now, warm), self.token)
            self._queued.set()

    def retire(
        self, name: str, analyzer: Analyzer, ledger: Iterable[dict[str, Any]], now: float
    ) -> None:
        """A route lost its rollout: without a store, keep its state in memory (so a finished
        revision stays finished if the rollout comes back); with one, the store keeps it."""
        if self.store is None:
            self._retired[name] = self.document(name, analyzer, ledger, now)

    def verdict(
        self, name: str, revision: str, verdict: Verdict, at: float, reason: str = ""
    ) -> None:
        """Record a finished revision (or a ``retried`` one) in the append-only record; it is
        written before the state documents of the next flush (with a fenced store, only by
        the leader: a follower learns verdicts from the record)."""
        if not self._writes():
            return
        entry = VerdictEntry(name, revision, verdict, at, reason)
        known = self._load_verdicts().setdefault(name, {})
        if verdict == "retried":
            known.pop(revision, None)
        else:
            known[revision] = entry
        self._verdicts_due.append((entry, self.token))
        self._queued.set()

    def verdicts(self, name: str) -> dict[str, Phase]:
        """The route's finished revisions on record and their final phase, oldest first."""
        if self.store is None:
            return {}
        return dict(finished_from(self._load_verdicts().get(name, {})))

    def refresh_verdicts(self) -> None:
        """Read the record again at the next use (a follower: the leader has appended)."""
        self._verdicts = None

    def _load_verdicts(self) -> dict[str, dict[str, VerdictEntry]]:
        if self._verdicts is None:
            assert self.store is not None
            record = self.store.verdicts()
            try:
                self._verdicts = record.load()
            except StateUnreadable as exc:
                logger.error("cannot read the verdicts of finished revisions: %s", exc)
                self._verdicts = {}
            except OSError as exc:  # out of reach (StateUnavailable): read it at the next use
                logger.error("cannot read the verdicts of finished revisions now: %s", exc)
                return {}
        return self._verdicts

    async def flush(self) -> None:
        """Write the queued verdicts, then the queued states (in a thread, one flush at a
        time, newest state wins)."""
        if self.store is None or not (self._dirty or self._verdicts_due):
            return
        async with self._lock:
            fenced: Fenced | None = None
            verdicts, self._verdicts_due = self._verdicts_due, []
            if verdicts:
                unwritten, error, fenced = await asyncio.to_thread(self._append, verdicts)
                if error is not None:
                    self._verdicts_due[:0] = unwritten  # try again on the next flush
                    if self.last_error != error:
                        entries = [entry for entry, _ in unwritten]
                        logger.error("cannot record the verdicts of %s: %s", entries, error)
                    self.last_error = error
            docs, self._dirty = self._dirty, {}
            if docs:
                failed, refused = await asyncio.to_thread(self._write, docs)
                for name, error in failed.items():
                    self._dirty.setdefault(name, docs[name])  # try again on the next flush
                    if self.last_error != error:
                        logger.error("cannot save the rollout state of route %r: %s", name, error)
                self.last_error = next(iter(failed.values()), None)
                fenced = fenced or refused
            if fenced is not None:
                self._refused(fenced)

    def _refused(self, fenced: Fenced) -> None:
        """Writes were refused for their token: a newer leader's decisions stand."""
        if self._fenced_logged != fenced.token:
            self._fenced_logged = fenced.token
            logger.warning("rollout state writes dropped: %s", fenced)
        if self.on_fenced is not None:
            self.on_fenced()

    def _append(
        self, entries: list[tuple[VerdictEntry, int | None]]
    ) -> tuple[list[tuple[VerdictEntry, int | None]], str | None, Fenced | None]:
        """Append in runs of one token each: the entries not written (to try again), the
        error that stopped them, and the refusal of a stale token (those entries dropped)."""
        assert self.store is not None
        record = self.store.verdicts()
        runs: list[tuple[int | None, list[VerdictEntry]]] = []
        for entry, token in entries:
            if runs and runs[-1][0] == token:
                runs[-1][1].append(entry)
            else:
                runs.append((token, [entry]))
        fenced: Fenced | None = None
        done = 0
        for token, run in runs:
            try:
                record.append(run, token)
            except Fenced as exc:
                fenced = exc  # dropped: a newer leader's record stands
            except OSError as exc:
                return entries[done:], str(exc), fenced
            done += len(run)
        return [], None, fenced

    def _write(self, docs: Mapping[str, Queued]) -> tuple[dict[str, str], Fenced | None]:
        assert self.store is not None
        failed: dict[str, str] = {}
        fenced: Fenced | None = None
        for name, (doc, token) in docs.items():
            try:
                self.store.save(name, doc, token)
            except Fenced as exc:
                fenced = exc  # dropped: never retried
            except (OSError, ValueError) as exc:
                failed[name] = str(exc)
        return failed, fenced

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
                    async with asyncio.timeout(self.retry):
                        await self._queued.wait()
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
        `Rejected` when there is one that cannot be trusted (`load`, then `resume`).

        A document that cannot be read, checked or decoded is logged with where it was and the
        reason and set aside (the next save replaces it); memory-only state is always ours, so
        a failure to resume it is a bug and raises."""
        store = self.store
        if store is None:
            data = self._retired.pop(name, None)
            if data is None:
                return None
            analyzer = decode(
                name, spec, data["analyzer"], gates=gates, path_class_slots=path_class_slots
            )
            return Restored(analyzer, list(data["ledger"]), "from memory")
        loaded = self.load(name)
        if loaded is None or isinstance(loaded, Rejected):
            return loaded
        return self.resume(
            name, spec, gates, path_class_slots, loaded, store.where(name), set_aside=True
        )

    def load(self, name: str, *, set_aside: bool = True) -> dict[str, Any] | Rejected | None:
        """The saved document of ``name`` as the store holds it (None: none; `Rejected`: it
        cannot be read, and is set aside if ``set_aside``; or the store cannot be reached,
        and nothing is set aside)."""
        store = self.store
        if store is None:
            return None
        where = store.where(name)
        try:
            return store.load(name)
        except StateUnreadable as exc:
            return self._reject(name, where, exc.reason, set_aside)
        except OSError as exc:  # out of reach (StateUnavailable): there is nothing to keep
            return self._reject(name, where, f"cannot be read now ({exc})", set_aside=False)

    def resume(
        self,
        name: str,
        spec: Rollout,
        gates: Iterable[Gate],
        path_class_slots: int,
        data: dict[str, Any],
        where: str,
        *,
        set_aside: bool = False,
    ) -> Restored | Rejected:
        """The document ``data`` (read from ``where``) resumed under ``spec``, checked exactly
        as `restore` checks what it loads. Nothing is written, and a document that cannot be
        trusted is set aside only if ``set_aside`` (a follower adopting the leader's documents
        leaves them to the leader)."""
        try:
            raw = check_document(data, name)
            check_analyzer(raw, name, spec, spec_digest(spec))
            analyzer = decode(name, spec, raw, gates=gates, path_class_slots=path_class_slots)
            ledger = [e for e in data.get("ledger", ()) if isinstance(e, dict)]
            warm = WarmStable.from_dict(data["warm"]) if data.get("warm") is not None else None
        except InvalidState as exc:
            return self._reject(name, where, str(exc), set_aside)
        except Exception as exc:  # a damaged or foreign document must never stop the proxy
            return self._reject(name, where, f"cannot be decoded ({exc!r})", set_aside)
        self.rejected.pop(name, None)
        source = "from disk" if self.backend in ("file", None) else "from Redis"
        return Restored(analyzer, ledger, source, warm)

    def _reject(self, name: str, where: str, reason: str, set_aside: bool) -> Rejected:
        kept = ""
        if set_aside and self.store is not None:
            try:  # keep it for a human; the next save replaces the original
                kept = self.store.set_aside(name)
            except OSError as exc:
                logger.warning("cannot keep a copy of %s: %s", where, exc)
        copy = f" (a copy is kept as {kept})" if kept else ""
        logger.error(
            "cannot resume the rollout state of route %r from %s: %s; the route is held on "
            "stable with its rollout paused%s",
            name, where, reason, copy,
        )  # fmt: skip
        rejected = self.rejected[name] = Rejected(where, reason, kept)
        return rejected

    def summary(self) -> dict[str, Any]:
        """Where rollout state lives, for the top of the status."""
        if self.store is None:
            return {
                "state_dir": None,
                "persistent": False,
                "note": "memory only: rollout state is lost on restart (set --state-dir)",
            }
        file = isinstance(self.store, StateStore)
        return {
            "backend": self.backend,
            "location": self.store.location,
            "state_dir": self.store.location if file else None,
            "persistent": True,
            "last_error": self.last_error,
        }

    def route_state(self, name: str) -> dict[str, Any]:
        """The ``state`` part of a route's rollout status."""
        store = self.store
        rejected = self.rejected.get(name)
        return {
            "persistent": store is not None,
            "file": store.where(name) if store is not None else None,
            "last_error": self.last_error,
            "rejected": None
            if rejected is None
            else {"path": rejected.path, "reason": rejected.reason},
        }


__all__ = ["STATE_FORMAT", "Persistence", "Rejected", "Restored", "adopt_verdicts"]
