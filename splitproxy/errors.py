"""The exceptions splitproxy raises on purpose.

SplitproxyError
├── ConfigError        the routing file or a setting is invalid (carries every problem)
└── AdminError         an admin API call was refused (carries an HTTP status and a code)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration: where (``routes[1].weight``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SplitproxyError(Exception):
    """Base class of splitproxy's own errors."""


class ConfigError(SplitproxyError):
    """A routing file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__(self.describe())

    def describe(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(p) for p in self.problems)


class AdminError(SplitproxyError):
    """An admin request that cannot be carried out; maps to a JSON error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)
