"""A rollout spec's digest: what restarts a running rollout when it changes (pure).

`Analyzer.reconfigure` compares the digest of a reloaded spec with the running one's, and
`persistence` keeps it with a saved state (a state saved under another spec is not resumed).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from splitproxy.config import Rollout


def spec_digest(spec: Rollout) -> str:
    """A short digest of a rollout spec: a rollout restarts when it changes. The deadlines of
    readiness and health and the revert window are left out: changing them restarts nothing.
    Fields added since a state could have been saved are left out while at their defaults, so
    an upgrade keeps every saved rollout's digest."""
    exclude: dict[str, Any] = {k: True for k in _NOT_DIGESTED}
    exclude.update({k: True for k, v in _LATER.items() if getattr(spec, k) == v})
    checks: dict[int, set[str]] = {}
    for i, check in enumerate(spec.checks):
        later = {k for k, v in _LATER_IN_CHECKS.items() if getattr(check, k, v) == v}
        if later:
            checks[i] = later
    exclude["checks"] = checks
    data = spec.model_dump_json(exclude=exclude)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


_NOT_DIGESTED: Final = ("progress_deadline", "unhealthy_timeout", "revert_window")
# fields of a check added since a state could have been saved, with their defaults
_LATER_IN_CHECKS: Final[dict[str, Any]] = {"traffic": "user", "tolerance": 0.0}
_LATER: Final[dict[str, Any]] = {
    "iterations": None,
    "bake": None,
    "auto_promote": True,
    "test": None,
    "shadow": None,
    "ab": None,
}
