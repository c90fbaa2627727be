"""Durable rollout state: one JSON document per route in ``state_dir``, written atomically,
and an append-only record of the verdicts of finished revisions.

`StateBackend` is what `persistence.Persistence` needs of a store; `StateStore` (files, this
module) and ``replicas.redisstore.RedisStateStore`` (one Redis shared by replicas) implement
it. A backend that is ``fenced`` refuses a write whose fencing token is older than the newest
it has seen (`Fenced`); one that cannot be reached raises `StateUnavailable` (an OSError, so a
failed write is tried again like a failed disk write).

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over
the old file (``os.replace`` is atomic on POSIX), and the directory entry is synced: a crash at
any moment leaves either the old state or the new one, never half of either.

Reads treat the directory as input: only a regular file is opened (without blocking, so a
FIFO or a device put in its place cannot hang start-up), at most `MAX_STATE_BYTES` are read,
and what cannot be read or decoded raises `StateUnreadable` with the path and the reason.

``verdicts.jsonl`` (`VerdictRecord`) holds one JSON line per finished revision: promoted,
rolled back, or retried by hand (which cancels an earlier verdict). Lines are only appended,
each with an fsync, so losing or truncating a route's state file cannot bring a rolled-back
revision back: its verdict is still on record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

logger = logging.getLogger("splitproxy.rollout.store")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")

MAX_STATE_BYTES: Final = 32 * 1024 * 1024  # a route's state is ~0.1-0.3 MB at high traffic
MAX_VERDICT_BYTES: Final = 16 * 1024 * 1024
VERDICTS_FILE: Final = "verdicts.jsonl"
COMPACT_AFTER: Final = 4096  # lines in the verdict record before it is rewritten compacted
KEPT_PER_ROUTE: Final = 64  # newest finished revisions per route a compaction keeps


class StateUnreadable(Exception):
    """A saved state that cannot be used: ``where`` (a file's path, a Redis key) and ``reason``
    say which and why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class StateUnavailable(OSError):
    """The state backend cannot be reached now (Redis down, a timeout): try again later."""


class Fenced(Exception):
    """A write refused for its fencing token: a newer leader has written since (``token``,
    the write's; ``fence``, the newest the backend has seen). Never retried: the newer
    leader's decision stands."""

    def __init__(self, token: int, fence: int) -> None:
        super().__init__(f"fencing token {token} is older than {fence}: a newer leader writes")
        self.token = token
        self.fence = fence


class VerdictLog(Protocol):
    """The append-only record of finished revisions (see `VerdictRecord`)."""

    def append(self, entries: Iterable[VerdictEntry], token: int | None = None) -> None: ...

    def load(self) -> dict[str, dict[str, VerdictEntry]]: ...


class StateBackend(Protocol):
    """Where `persistence.Persistence` keeps the routes' state documents and the verdicts."""

    @property
    def location(self) -> str:
        """For the status: the directory, or the Redis URL without its password."""
        ...

    @property
    def fenced(self) -> bool:
        """True when writes carry a fencing token (and a stale one is refused)."""
        ...

    def where(self, route: str) -> str:
        """Where ``route``'s document lives, for messages (a path, a Redis key)."""
        ...

    def load(self, route: str) -> dict[str, Any] | None:
        """``route``'s document; None when there is none; `StateUnreadable` when it cannot be
        read or is not a JSON object; `StateUnavailable` when the backend is out of reach."""
        ...

    def save(self, route: str, data: dict[str, Any], token: int | None = None) -> None:
        """Replace ``route``'s document (`Fenced` when ``token`` is stale)."""
        ...

    def delete(self, route: str) -> None: ...

    def routes(self) -> list[str]: ...

    def set_aside(self, route: str) -> str:
        """Keep a copy of ``route``'s (unreadable) document for a human; where it is kept."""
        ...

    def verdicts(self) -> VerdictLog: ...


def parse_document(raw: bytes, where: str) -> dict[str, Any]:
    """A saved document's bytes as a JSON object; `StateUnreadable` for anything else."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateUnreadable(where, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StateUnreadable(where, f"a JSON {type(data).__name__}, not an object")
    return data


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file ``path`` (None when it does not exist).

    Raises `StateUnreadable` for anything else in its place (a FIFO is opened without
    blocking and refused before any read) and for a file over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateUnreadable(str(path), exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateUnreadable(str(path), "not a regular file")
        if info.st_size > limit:
            raise StateUnreadable(str(path), f"{info.st_size} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # grew while being read
                raise StateUnreadable(str(path), f"more than the {limit} bytes allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise StateUnreadable(str(path), exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


class StateStore:
    """Reads and writes ``<state_dir>/<route>.json`` (a `StateBackend`; never fenced: one
    process owns the directory)."""

    fenced: Final = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.directory)

    def path(self, route: str) -> Path:
        return self.directory / f"{_SAFE.sub('_', route)}.json"

    def where(self, route: str) -> str:
        return str(self.path(route))

    def load(self, route: str) -> dict[str, Any] | None:
        """The saved state of ``route``, or None when there is none.

        Raises `StateUnreadable` when the file cannot be read or is not a JSON object."""
        path = self.path(route)
        raw = read_bounded(path, MAX_STATE_BYTES)
        if raw is None:
            return None
        return parse_document(raw, str(path))

    def save(self, route: str, data: dict[str, Any], token: int | None = None) -> None:
        """Replace the saved state of ``route`` atomically (``token`` is not used)."""
        path = self.path(route)
        text = json.dumps(data, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._sync_directory()

    def delete(self, route: str) -> None:
        self.path(route).unlink(missing_ok=True)

    def routes(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def set_aside(self, route: str) -> str:
        """Copy ``<route>.json`` to ``<route>.json.rejected`` (the next save replaces the
        original; the copy stays for a human)."""
        path = self.path(route)
        kept = path.with_name(path.name + ".rejected")
        if path.is_file():
            shutil.copyfile(path, kept)
        return str(kept)

    def verdicts(self) -> VerdictRecord:
        """The append-only record of finished revisions in this directory."""
        return VerdictRecord(self.directory / VERDICTS_FILE)

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


Verdict = Literal["promoted", "rolled_back", "retried"]
VERDICTS: Final[frozenset[str]] = frozenset({"promoted", "rolled_back", "retried"})


@dataclass(frozen=True, slots=True)
class VerdictEntry:
    """One line of the verdict record."""

    route: str
    revision: str
    verdict: Verdict
    at: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "revision": self.revision,
            "verdict": self.verdict,
            "at": self.at,
            "reason": self.reason,
        }


def _entry(line: bytes) -> VerdictEntry | None:
    """A line of the record, or None when it is not one (a torn last write, an edit)."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    route, revision, verdict, at = d.get("route"), d.get("revision"), d.get("verdict"), d.get("at")
    reason = d.get("reason", "")
    if not (isinstance(route, str) and isinstance(revision, str) and verdict in VERDICTS):
        return None
    if not isinstance(at, int | float) or isinstance(at, bool) or not isinstance(reason, str):
        return None
    return VerdictEntry(route, revision, verdict, float(at), reason[:500])


def fold_verdicts(
    lines: Iterable[bytes],
) -> tuple[dict[tuple[str, str], VerdictEntry], int, int]:
    """The record's lines folded: (route, revision) -> its latest entry, in the order of the
    latest; the number of lines (blank ones aside); how many were not entries."""
    latest: dict[tuple[str, str], VerdictEntry] = {}
    count = skipped = 0
    for line in lines:
        if not line.strip():
            continue
        count += 1
        entry = _entry(line)
        if entry is None:
            skipped += 1
            continue
        key = (entry.route, entry.revision)
        latest.pop(key, None)  # re-inserted: the dict keeps the order of the latest
        latest[key] = entry
    return latest, count, skipped


def by_route(latest: Mapping[tuple[str, str], VerdictEntry]) -> dict[str, dict[str, VerdictEntry]]:
    """Route -> revision -> entry, ``retried`` ones left out."""
    out: dict[str, dict[str, VerdictEntry]] = {}
    for (route, revision), entry in latest.items():
        if entry.verdict != "retried":
            out.setdefault(route, {})[revision] = entry
    return out


def compacted(entries: Iterable[VerdictEntry]) -> list[VerdictEntry]:
    """What a compaction keeps: the newest `KEPT_PER_ROUTE` finished revisions per route,
    oldest first."""
    per_route: dict[str, list[VerdictEntry]] = {}
    for e in entries:
        if e.verdict != "retried":
            per_route.setdefault(e.route, []).append(e)
    return sorted((e for route in per_route.values() for e in route[-KEPT_PER_ROUTE:]),
                  key=lambda e: e.at)  # fmt: skip


def entry_line(entry: VerdictEntry) -> bytes:
    """An entry as a line of the record (without the newline)."""
    return json.dumps(entry.to_dict(), sort_keys=True).encode()


class VerdictRecord:
    """``verdicts.jsonl``: the verdicts of finished revisions, one JSON line each, appended.

    `latest` folds the record into each route's revisions and their latest verdict (a
    ``retried`` cancels what came before). Lines that are not entries (a torn last line, a
    hand edit) are skipped and counted in ``skipped``. Past `COMPACT_AFTER` lines, `load`
    rewrites the record with only the latest entry per revision (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def append(self, entries: Iterable[VerdictEntry], token: int | None = None) -> None:
        """Add ``entries`` at the end, durably (one write, then fsync; ``token`` is not
        used)."""
        data = b"".join(entry_line(e) + b"\n" for e in entries)
        if not data:
            return
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
        fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.path} is not a regular file")
            if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                data = b"\n" + data  # never glue an entry to a torn line
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return os.pread(fd, 1, size - 1) == b"\n"

    def load(self) -> dict[str, dict[str, VerdictEntry]]:
        """Route -> revision -> its latest entry (``retried`` ones left out).

        Raises `StateUnreadable` when the record exists but cannot be read."""
        raw = read_bounded(self.path, MAX_VERDICT_BYTES)
        if raw is None:
            return {}
        latest, lines, self.skipped = fold_verdicts(raw.splitlines())
        if self.skipped:
            logger.warning("%s: skipped %d lines that are not verdicts", self.path, self.skipped)
        if lines > COMPACT_AFTER:
            self._compact(latest.values())
        return by_route(latest)

    def _compact(self, entries: Iterable[VerdictEntry]) -> None:
        kept = compacted(entries)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                for e in kept:
                    f.write(entry_line(e) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            logger.warning("could not compact %s: %s", self.path, exc)


def finished_from(
    entries: Mapping[str, VerdictEntry],
) -> dict[str, Literal["promoted", "rolled_back"]]:
    """A route's revisions and their final phase, oldest first, from its record entries."""
    out: dict[str, Literal["promoted", "rolled_back"]] = {}
    for revision, entry in sorted(entries.items(), key=lambda kv: kv[1].at):
        if entry.verdict != "retried":
            out[revision] = entry.verdict
    return out
