"""Where a failed attempt is replayed (`retry.may_retry` says whether it may be).

A request the candidate failed is replayed on stable, so the user does not see the failure;
the analyzer still does (the failure is counted against the candidate, in the live window).
Any other replay stays on its version, on another of its addresses when it has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitproxy.config.vocabulary import CANDIDATE, FailureKind
from splitproxy.dataplane.routing import retry_decision

if TYPE_CHECKING:
    from splitproxy.dataplane.exchange import Exchange


def retarget(ex: Exchange, kind: FailureKind, stale: bool) -> None:
    """Point ``ex`` at the attempt that replays it, after a failure of ``kind`` (``stale``: a
    reused connection the upstream had closed, which says nothing about the upstream)."""
    ctx = ex.ctx
    decision = ex.decision
    assert decision is not None
    route = ex.route
    if decision.version == CANDIDATE and route is not None and not ex.preview:
        # The user should not see the candidate's failure, but the analyzer must.
        ctx.observer.attempt_failed(ex, CANDIDATE, kind)
        ex.decision = retry_decision()
        ex.version = ex.decision.version
        rh = ctx.health.routes.get(route.name)
        bh = ex.backend_health = rh.stable if rh is not None else None
        ex.pool, ex.upstream_url = ctx.pick_pool(route.stable, bh)
    elif not stale:
        ctx.observer.attempt_failed(ex, decision.version, kind)
        if route is not None:  # the same version, another address if there is one
            plan = route.candidate if decision.version == CANDIDATE else route.stable
            assert plan is not None
            ex.pool, ex.upstream_url = ctx.pick_pool(plan, ex.backend_health, ex.upstream_url)
