"""Durable rollout state: one JSON document per route in ``state_dir``, written atomically.

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over
the old file (``os.replace`` is atomic on POSIX), and the directory entry is synced: a crash at
any moment leaves either the old state or the new one, never half of either.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("splitproxy.rollout.store")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StateStore:
    """Reads and writes ``<state_dir>/<route>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, route: str) -> Path:
        return self.directory / f"{_SAFE.sub('_', route)}.json"

    def load(self, route: str) -> dict[str, Any] | None:
        """The saved state of ``route``, or None when there is none (or it is unreadable)."""
        path = self.path(route)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Never crash start-up on a damaged file; keep it for a human to look at.
            logger.error("ignoring unreadable rollout state %s: %s", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def save(self, route: str, data: dict[str, Any]) -> None:
        """Replace the saved state of ``route`` atomically."""
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
