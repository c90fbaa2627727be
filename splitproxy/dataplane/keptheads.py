"""Heads kept by their bytes, with what reading them said: a bounded table that stops
keeping when it does not pay.

Clients and upstreams send the same head bytes again and again (the same header lines with
each request; nginx's response head differs only by the ``Date`` second), so what a head
says is kept by its bytes and the next one like it costs a dictionary look-up instead of a
Python pass over its lines. Heads that never come back (an echoed request id, a cookie that
changes every time, every client new) would only churn the table, and a kept entry survives
young collections, which costs more than the pass saves: when a whole table's worth of heads
brought fewer look-ups that found one than heads kept, keeping pauses for ``pause_for``
heads. Bounded: keys up to ``keep_max`` bytes, ``table_max`` of them; the table starts over
when full.

The look-up stays the caller's (``heads.get(key)``, then ``hits += 1`` when found): it runs
for every head and a method call would cost more than the look-up itself. `keeping` and
`keep` run after a miss only.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class KeptHeads(Generic[V]):
    """The heads read lately by their bytes (``heads``), and whether keeping them pays."""

    __slots__ = ("heads", "hits", "keep_max", "pause", "pause_for", "table_max")

    def __init__(self, keep_max: int, table_max: int, pause_for: int) -> None:
        self.heads: dict[bytes, V] = {}
        self.hits = 0  # look-ups that found their head since the table last started over
        self.pause = 0  # heads still to read without keeping them
        self.keep_max = keep_max
        self.table_max = table_max
        self.pause_for = pause_for

    def keeping(self, key: bytes) -> bool:
        """After a miss: whether what ``key`` says is to be kept (`keep`), or keeping is
        paused (counted down here) or ``key`` too long. Asked first, so that a caller makes
        the value it would keep only when it is kept."""
        if self.pause:
            self.pause -= 1
            return False
        return len(key) <= self.keep_max

    def keep(self, key: bytes, value: V) -> None:
        """Keep what ``key`` says (after `keeping` said so); a full table starts over."""
        heads = self.heads
        if len(heads) >= self.table_max:
            heads.clear()
            if self.hits < self.table_max:
                self.pause = self.pause_for
            self.hits = 0
        heads[key] = value


__all__ = ["KeptHeads"]
