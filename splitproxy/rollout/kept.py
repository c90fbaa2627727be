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
    """The latest value `get` made, with its key. (``key`` and ``value`` are plain slots: the
    tick reads them in place to find a kept answer without a call, `Evidence.evaluate_deferred`;
    ``value`` is None before the first answer.)"""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: tuple[object, ...] | None = None
        self.value: T | None = None

    def get(self, key: tuple[object, ...], make: Callable[..., T], *args: Any) -> T:
        """The kept value when ``key`` equals the kept key, else ``make(*args)`` (then kept).
        (Arguments rather than a closure: the tick asks every route every second, and most
        answers are kept, so no function object is made for them.)"""
        value = self.value
        if value is None or self.key != key:
            value = self.value = make(*args)
            self.key = key
        return value
