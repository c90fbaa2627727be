"""A result kept with the key it was made from, remade only when the key changes (pure).

The rollout tick asks the same questions of every route every second, and most answers do not
change between two ticks (a comparison that saw no new event, a guard that saw no request).
`Kept` holds the latest answer with its key: the caller names everything the answer is made
of (the tests' objects and their change counters, the α, the thresholds), so an equal key
means an equal answer, and the answer is the very object made the first time. A key is
compared with ``==`` and never hashed, so it may hold a dict that no one writes in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    """The latest value `get` made, with its key."""

    __slots__ = ("_key", "_value")

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._value: T | None = None

    def get(self, key: tuple[object, ...], make: Callable[..., T], *args: Any) -> T:
        """The kept value when ``key`` equals the kept key, else ``make(*args)`` (then kept).
        (Arguments rather than a closure: the tick asks every route every second, and most
        answers are kept, so no function object is made for them.)"""
        value = self._value
        if value is None or self._key != key:
            value = self._value = make(*args)
            self._key = key
        return value

    @property
    def value(self) -> T | None:
        """The kept value (None before the first `get`)."""
        return self._value
