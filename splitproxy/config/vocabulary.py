"""The words every layer shares, each defined once.

The routing file, the data path, the windows, the analyzer, the metrics and the admin API all
speak of the same two versions, the same gating hooks and the same kinds of upstream failure;
they import them from here, so a value means one thing everywhere and no layer needs a cast to
talk to another.
"""

from __future__ import annotations

from typing import Final, Literal

Version = Literal["stable", "candidate"]
"""A role, not a build: the version that serves today, and the one being rolled out."""

STABLE: Final = "stable"
CANDIDATE: Final = "candidate"
VERSIONS: Final[tuple[Version, Version]] = (STABLE, CANDIDATE)

HookOn = Literal["pre-rollout", "step", "confirm-promotion", "post-rollout", "rollback", "event"]
"""When a rollout hook is called."""

Gate = Literal["pre-rollout", "step", "confirm-promotion"]
"""The hooks that hold a rollout until they answer 2xx; the others only notify."""

GATES: Final[tuple[Gate, ...]] = ("pre-rollout", "step", "confirm-promotion")

FailureKind = Literal["connect", "timeout", "reset", "protocol", "pool"]
"""Why an upstream attempt failed: the ``kind`` label of ``splitproxy_upstream_errors_total``.

``connect``: refused or unreachable; ``timeout``: no answer in time; ``reset``: the connection
closed before a whole response; ``protocol``: an answer that is not HTTP/1.1; ``pool``: the
connection cap of that upstream was reached.
"""

FAILURE_KINDS: Final[tuple[FailureKind, ...]] = ("connect", "timeout", "reset", "protocol", "pool")

FAILURE_WORDS: Final[dict[FailureKind, str]] = {
    "connect": "refused the connection",
    "reset": "closed the connection",
    "protocol": "sent an invalid response",
    "timeout": "did not answer in time",
    "pool": "failed",  # (never a 502: a full pool is answered 503 before any attempt)
}
"""How a 502 says what the upstream did."""
