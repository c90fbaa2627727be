"""When a failed upstream attempt may be replayed on stable (pure).

A request is replayed at most once, only if no response byte has reached the client, only if
replaying it cannot do harm (an idempotent method without a body: `Exchange.replayable`), and
only for failures that say the upstream never acted on it: a connect that failed or timed
out, a connection that was reset before any answer, a stale pooled connection the upstream
had closed. A read timeout is never replayed: the upstream may still be working on it.
"""

from __future__ import annotations

from splitproxy.config.vocabulary import FailureKind


def may_retry(
    *,
    replayable: bool,
    retried: bool,
    response_started: bool,
    kind: FailureKind,
    connecting: bool,
    stale: bool,
) -> bool:
    """May the attempt that failed with ``kind`` be replayed?

    ``connecting``: it failed while opening the connection; ``stale``: on a reused pooled
    connection, closed before any response byte came back.
    """
    if response_started or not replayable or retried:
        return False
    return stale or connecting or kind == "reset"
