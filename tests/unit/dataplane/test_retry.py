"""The retry policy: when a failed upstream attempt may be replayed (pure, table-driven)."""

from __future__ import annotations

import pytest

from splitproxy.config.vocabulary import FAILURE_KINDS, FailureKind
from splitproxy.dataplane.retry import may_retry

# (replayable, retried, response_started, kind, connecting, stale) -> may retry
CASES: list[tuple[bool, bool, bool, FailureKind, bool, bool, bool]] = [
    # a reset before any answer: the upstream never acted on it
    (True, False, False, "reset", False, False, True),
    # a stale pooled connection (also a reset)
    (True, False, False, "reset", False, True, True),
    # the connection could not be opened: refused, or a connect timeout
    (True, False, False, "connect", True, False, True),
    (True, False, False, "timeout", True, False, True),
    # a read timeout: the upstream may still be working on it
    (True, False, False, "timeout", False, False, False),
    # an answer that is not HTTP: the upstream did act on it
    (True, False, False, "protocol", False, False, False),
    # never twice
    (True, True, False, "reset", False, False, False),
    (True, True, False, "connect", True, False, False),
    # a request with a body, or a method that is not idempotent
    (False, False, False, "reset", False, False, False),
    (False, False, False, "connect", True, False, False),
    # once a response byte reached the client, nothing can be replayed
    (True, False, True, "reset", False, False, False),
]


@pytest.mark.parametrize(
    ("replayable", "retried", "started", "kind", "connecting", "stale", "expected"), CASES
)
def test_may_retry(
    replayable: bool,
    retried: bool,
    started: bool,
    kind: FailureKind,
    connecting: bool,
    stale: bool,
    expected: bool,
) -> None:
    verdict = may_retry(
        replayable=replayable,
        retried=retried,
        response_started=started,
        kind=kind,
        connecting=connecting,
        stale=stale,
    )
    assert verdict is expected


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_nothing_is_retried_twice_or_after_the_response_started(kind: FailureKind) -> None:
    for retried, started in ((True, False), (False, True)):
        assert not may_retry(
            replayable=True,
            retried=retried,
            response_started=started,
            kind=kind,
            connecting=True,
            stale=True,
        )
