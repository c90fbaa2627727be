"""The Redis keys replicas share, all under one namespace prefix (``state_namespace``).

One place names them, so the state store, the lease and the replica link cannot disagree.
``docs/scale-out.md`` says what each holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

NAMESPACE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_namespace(namespace: str) -> str:
    """``namespace`` when usable as a key prefix; ValueError saying what is allowed."""
    if not NAMESPACE.fullmatch(namespace):
        raise ValueError(f"{namespace!r} is not 1 to 64 letters, digits or the characters _ . : -")
    return namespace


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names under ``namespace`` (see the module docstring)."""

    namespace: str

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    def _key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    @property
    def state(self) -> str:  # hash: route -> its state document (JSON)
        return self._key("state")

    @property
    def versions(self) -> str:  # hash: route -> how many times its document was written
        return self._key("versions")

    @property
    def verdicts(self) -> str:  # list: the verdict record, one JSON line per entry
        return self._key("verdicts")

    @property
    def rejected(self) -> str:  # hash: route -> a copy of its unreadable document
        return self._key("rejected")

    @property
    def fence(self) -> str:  # int: the highest fencing token a write has carried
        return self._key("fence")

    @property
    def leader(self) -> str:  # string with a PX ttl: the replica id holding the lease
        return self._key("leader")

    @property
    def epoch(self) -> str:  # int: the counter fencing tokens come from
        return self._key("epoch")

    @property
    def leader_token(self) -> str:  # int: the fencing token of the lease in force
        return self._key("leader_token")

    @property
    def changed(self) -> str:  # pub/sub channel: a state or routing write happened
        return self._key("changed")


__all__ = ["NAMESPACE", "Keys", "check_namespace"]
