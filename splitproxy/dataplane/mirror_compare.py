"""How a mirrored answer is judged against the user's: pure functions and the result record.

`compare` says what differed between the primary's answer (what the user got) and the
candidate's answer to the copy, or None when they agree: the status class (2xx, 3xx, ...),
then, with ``compare: {body: hash}``, the bodies by digest, or, with ``json_ignore``, as JSON
documents with the ignored paths removed when both are small enough to parse (`JSON_LIMIT`;
larger or non-JSON bodies fall back to the digest). `MirrorOutcome` is what the recorder
counts and keeps as an example. No IO, no clock: the adapter (``mirror.py``) measures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from splitproxy.config.mirror import MirrorCompare

MirrorResult = Literal["match", "diverged", "error", "dropped", "skipped"]
RESULTS: Final[tuple[MirrorResult, ...]] = ("match", "diverged", "error", "dropped", "skipped")
JSON_LIMIT: Final = 64 * 1024  # bytes of a body kept to compare as JSON (per side)
_MISSING: Final = object()


def new_digest() -> Any:
    """The incremental hash both sides' bodies are fed to (not cryptographic use: equality)."""
    return hashlib.blake2b(digest_size=16)


@dataclass(frozen=True, slots=True)
class Answer:
    """One side's answer: its status, its body's digest (None: not hashed), and its body when
    it is at most `JSON_LIMIT` bytes and JSON is compared (None otherwise)."""

    status: int
    digest: bytes | None = None
    small: bytes | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class MirrorOutcome:
    """A copy that was sent: its result, what differed, both statuses and latencies."""

    result: MirrorResult
    method: str
    path: str  # without the query: it may carry secrets, and examples are shown in status
    primary_status: int
    mirror_status: int | None  # None: the copy got no answer (``error``)
    primary_latency: float  # seconds
    mirror_latency: float
    differed: str = ""  # "" when they agree


def status_class(status: int) -> str:
    """``2xx`` for 200..299, and so on; what the comparison of statuses looks at."""
    return f"{status // 100}xx"


def compare(primary: Answer, mirror: Answer, settings: MirrorCompare) -> str | None:
    """What differs between the two answers, in a few words, or None when they agree."""
    if primary.status // 100 != mirror.status // 100:
        return f"status {primary.status} vs {mirror.status}"
    if settings.body != "hash":
        return None
    if settings.json_ignore and primary.small is not None and mirror.small is not None:
        a, b = _parse(primary.small), _parse(mirror.small)
        if a is not _MISSING and b is not _MISSING:
            a, b = strip(a, settings.json_ignore), strip(b, settings.json_ignore)
            where = json_difference(a, b)
            return None if where is None else f"json at {where or '(root)'}"
    if primary.digest != mirror.digest:
        return f"body ({primary.size} vs {mirror.size} bytes)"
    return None


def _parse(body: bytes) -> Any:
    if not body.strip():
        return _MISSING
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _MISSING


def strip(doc: Any, paths: tuple[str, ...]) -> Any:
    """``doc`` without the values at ``paths`` (dotted keys; ``*`` is every key of an object or
    every element of a list); ``doc`` itself is left as it was."""
    for path in paths:
        doc = _without(doc, path.split("."))
    return doc


def _without(node: Any, parts: list[str]) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [head] if head in node else []
        if not keys:
            return node
        out = dict(node)
        for key in keys:
            if rest:
                out[key] = _without(out[key], rest)
            else:
                del out[key]
        return out
    if isinstance(node, list) and head == "*":
        if rest:
            return [_without(item, rest) for item in node]
        return []
    return node


def json_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted path of the first place two JSON documents differ, or None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return sub
            found = json_difference(a[key], b[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})" if where else "(length)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = json_difference(x, y, f"{where}.{i}" if where else str(i))
            if found is not None:
                return found
        return None
    if type(a) is not type(b) or a != b:
        return where
    return None
