"""The exceptions splitproxy raises on purpose.

SplitproxyError
├── ConfigError        the routing file or a setting is invalid (carries every problem)
└── RequestRefused     a request to change the running state cannot be carried out
    ├── NotReady       nothing to act on yet (no config loaded, no controller running)
    ├── UnknownRoute   no route by that name
    ├── Conflict       the request contradicts the current state (a rollout owns the weight)
    └── InvalidValue   a value out of its range

These are domain errors: the runtime state and the rollout controller raise them without
knowing who asked. Only the admin API (``admin.py``) turns them into HTTP status codes; the
CLI and tests see the same exceptions.
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


class RequestRefused(SplitproxyError):
    """A change to the running state that cannot be made: a stable ``code`` and a message."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class NotReady(RequestRefused):
    """Nothing to act on yet: no routing config is loaded, or no controller runs."""


class UnknownRoute(RequestRefused):
    """No route by that name in the running config."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__("no_such_route", f"no route named {name!r}")


class Conflict(RequestRefused):
    """The request contradicts the current state (e.g. a rollout owns the route's weight)."""


class InvalidValue(RequestRefused):
    """A value outside what the request allows."""
