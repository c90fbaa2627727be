"""Upstream health as the rest of the proxy sees it (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CandidateHealth:
    """What the rollout controller learns about a route's candidate, each tick."""

    ready: bool  # has passed healthy_after consecutive checks (active, or TCP
    # connects without `health:`) since this candidate appeared
    healthy: bool  # at least one of its addresses is available now
    unhealthy_since: float | None  # wall-clock time it last became unavailable, None if healthy
