"""What follows a failed attempt: replayed (`retry.may_retry` says whether it may be, this
where), or answered 502/504, or a started response cut.

A request the candidate failed is replayed on stable, so the user does not see the failure;
the analyzer still does (the failure is counted against the candidate, in the live window).
Any other replay stays on its version, on another of its addresses when it has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitproxy.config.vocabulary import CANDIDATE, FAILURE_WORDS, FailureKind
from splitproxy.dataplane.retry import may_retry
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


def attempt_failed(ex: Exchange, kind: FailureKind, connect: bool) -> None:
    """``ex``'s attempt failed (``connect``: while opening the connection; ``ex`` is not
    finished): replay it, or answer 502/504, or cut a response that has started."""
    ex.upstream_read_done()  # the head went out before the failure, as it always did
    ctx = ex.ctx
    up = ex.up
    ex.up = None
    stale = up is not None and up.served > 1 and not up.got_response_bytes and kind == "reset"
    if up is not None:
        up.abort()
    bh = ex.backend_health
    if bh is not None and (connect or (kind != "timeout" and not stale)):
        ctx.health.failed(bh, ex.upstream_url, kind)  # passive ejection counts it
    if may_retry(
        replayable=ex.replayable,
        retried=ex.retried,
        response_started=ex.client_head_sent,
        kind=kind,
        connecting=connect,
        stale=stale,
    ):
        ex.retried = True
        retarget(ex, kind, stale)
        ex.dispatch()
        return
    ex.error_kind = kind
    if not ex.client_head_sent:
        if kind == "timeout":
            ex.local(504, "upstream_timeout", "the upstream did not answer in time")
        else:
            ex.local(502, "bad_gateway", f"the upstream {FAILURE_WORDS[kind]}")
        return
    # The response has started: the only honest signal left is to cut the connection.
    ex.conn.abort()
    ex.finish()
