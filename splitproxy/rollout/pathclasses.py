"""A route's path classes: a bounded map from a request path to a small integer (pure).

What `windows.Window.observe` asks per request to split a bucket's counts by endpoint; the
``windows`` module docstring says what a class is and why.
"""

from __future__ import annotations

import re
from typing import Final

PATH_CLASS_LIMIT: Final = 8  # named path classes per route; the rest share OTHER_CLASS
OTHER_CLASS: Final = "~other"  # = sequential.OVERFLOW_CLASS: the analyzer's overflow slot
_CLASS_SEGMENT: Final = re.compile(r"[A-Za-z0-9._~-]{0,32}")
_DIGITS: Final = re.compile(r"[0-9]")
# paths whose class a route's `PathClasses` keeps (`classify`), and the longest kept: at most
# ~20 KB a route whatever clients send (a path seen again is the common case, and short)
SEEN_PATHS: Final = 128
SEEN_PATH_CHARS: Final = 64


def _names_a_class(segment: str) -> bool:
    """Does this path segment look like an endpoint's name rather than an id, hash or date?"""
    return _CLASS_SEGMENT.fullmatch(segment) is not None and len(_DIGITS.findall(segment)) < 3


class PathClasses:
    """A route's path classes: a bounded map from a request path to a small integer.

    Index 0 is `OTHER_CLASS`; indexes 1..``limit`` are given to new segments in order of first
    sight, while they last (see the module docstring). `names` maps an index back to a name;
    it only ever grows, so a bucket that holds on to it can always name its counters.
    """

    __slots__ = ("_base", "_depth", "_index", "_prefix", "_seen", "limit", "names")

    def __init__(self, limit: int = PATH_CLASS_LIMIT) -> None:
        if limit < 0:
            raise ValueError("a path class limit is >= 0")
        self.limit = limit
        self.names: list[str] = [OTHER_CLASS]
        self._index: dict[str, int] = {}
        self._prefix: str | None = None
        self._base = ""
        self._depth = 1
        # the classes of the paths seen lately under ``_prefix``: one look-up for a path seen
        # before (most requests), where `_classify` splits it; bounded, starts over when full
        self._seen: dict[str, int] = {}

    def classify(self, path: str, prefix: str = "/") -> int:
        """The class of ``path`` (the request's path, without its query) on a route that
        matches ``prefix``: 0 (`OTHER_CLASS`) or ``1..limit``.

        A path's class never changes once given (see `_classify`), so the answer is kept per
        path while the prefix stays the same object (a route's prefix is one string object
        per snapshot)."""
        if prefix is not self._prefix:
            self._prefix = prefix
            self._base = prefix.rstrip("/")
            self._depth = self._base.count("/") + 1
            self._seen = {}
        seen = self._seen
        index = seen.get(path)
        if index is None:
            index = self._classify(path)
            if len(path) <= SEEN_PATH_CHARS:
                if len(seen) >= SEEN_PATHS:
                    seen.clear()
                seen[path] = index
        return index

    def _classify(self, path: str) -> int:
        """`classify` in full: the class of the path's segment after the prefix, given now
        if the segment names a class and one is left. The answer for a path never changes
        once given: a segment keeps its class, a segment that does not look like a name
        never gets one, and once the classes are all given they stay so."""
        depth = self._depth
        parts = path.split("/", depth + 1)
        segment = parts[depth] if len(parts) > depth else ""
        index = self._index.get(segment)
        if index is not None:
            return index
        names = self.names
        if len(names) > self.limit or not _names_a_class(segment):
            return 0
        index = self._index[segment] = len(names)
        names.append(f"{self._base}/{segment}" if segment else self._base or "/")
        return index

    def __len__(self) -> int:
        """How many named classes are given (`OTHER_CLASS` not counted)."""
        return len(self.names) - 1
