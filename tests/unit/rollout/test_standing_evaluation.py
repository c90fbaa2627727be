"""A route whose evaluation's inputs did not change keeps its evaluation (`deferred`).

`Evidence.evaluate_deferred` hands out the previous `DeferredThresholds` and results while
nothing they are made of changed (no candidate request in the window, no new event for the
comparisons, no request for the guard), and the analyzer skips its anytime decisions on
results they found nothing in. Against an analyzer that evaluates afresh every tick: the same
actions, the same results whenever read (every tick, or never) and the same saved state, for
any run of quiet and busy ticks, gate answers and commands."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import encode
from splitproxy.rollout.deferred import DeferredThresholds
from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.messages import CheckResult, Sample
from splitproxy.rollout.results import LazyResult
from tests.unit.rollout.drive import Driver, hist, op_kwargs, spec

CHECKS: list[dict[str, Any]] = [
    {"metric": "error_rate", "max": "5%"},
    {"metric": "latency_p99", "max": "400ms"},
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable"},
]


class _Afresh(Evidence):
    """Never keeps an evaluation: the code before it stood."""

    def evaluate_deferred(
        self, now: float
    ) -> tuple[DeferredThresholds, tuple[CheckResult | LazyResult, ...]]:
        if self._deferred is not None:
            self._deferred.stamp = None
        return super().evaluate_deferred(now)


def _analyzer(afresh: bool, checks: list[dict[str, Any]], guard: bool = True) -> Analyzer:
    kw: dict[str, Any] = {} if guard else {"guard": None}
    a = Analyzer("r", spec(checks=checks, min_requests=5, **kw), gates=("step",))
    if afresh:
        evidence = _Afresh(a.spec, path_class_slots=a.path_class_slots)
        a.evidence = evidence
    return a


def _samples(p: float, busy: int, arg: int) -> list[Sample]:
    """Stable every tick (slow or failing now and then); the candidate only when ``busy``."""
    stable = [Sample("stable", 40, arg % 5 == 0, p, "/", hist(40, arg % 3, slow_at=0.6))]
    if not busy:
        return stable
    slow = arg % 4 == 0
    return [*stable, Sample("candidate", busy, arg % 7 == 0, p, "/", hist(busy, slow))]


def _drive(
    afresh: bool, read: bool, guard: bool, ops: list[tuple[str, int, int]]
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    d = Driver(_analyzer(afresh, CHECKS, guard))
    shown = []
    for op, busy, arg in ops:
        kw = op_kwargs(op, arg)
        d.tick(_samples(d.weight / 100, busy, arg), **kw)
        if read:
            shown.append(d.a.checks)
    return [ev.to_dict() for ev in d.events()], shown, encode(d.a)


TICKS = st.lists(
    st.tuples(
        st.sampled_from(["tick"] * 6 + ["pause", "resume", "gate"]),
        st.sampled_from([0, 0, 0, 1, 3]),  # mostly quiet: no candidate request
        st.integers(0, 20),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(TICKS, st.booleans())
def test_a_standing_evaluation_decides_and_shows_what_a_fresh_one_does(
    ops: list[tuple[str, int, int]], guard: bool
) -> None:
    for read in (True, False):
        assert _drive(False, read, guard, ops) == _drive(True, read, guard, ops)


def test_a_quiet_tick_keeps_the_evaluation_and_a_candidate_request_makes_a_new_one() -> None:
    d = Driver(_analyzer(False, CHECKS))
    calls = []
    judge = d.a._judge

    def counted(now: float) -> None:
        calls.append(now)
        judge(now)

    d.a._judge = counted  # type: ignore[method-assign]
    for _ in range(3):
        d.tick(_samples(d.weight / 100, 3, 1))
    e = d.a.evidence
    first = e._deferred
    assert first is not None
    d.tick(_samples(d.weight / 100, 0, 1))  # stable alone, nothing slow or failing
    judged = len(calls)
    d.tick(_samples(d.weight / 100, 0, 1))
    assert e._deferred is not None
    kept, rest = e._deferred, e._deferred.rest
    d.tick(_samples(d.weight / 100, 0, 1))
    assert e._deferred is kept  # the same evaluation
    assert e._deferred.rest is rest
    assert len(calls) == judged  # no anytime decision on results it found nothing in
    assert [r.name for r in d.a.checks] == [r.name for r in Evidence.evaluate(e, d.now)]
    d.tick(_samples(d.weight / 100, 1, 1))  # a candidate request: the window changed
    assert e._deferred is not kept
    assert len(calls) == judged + 1


def test_a_check_that_reads_the_clock_is_evaluated_every_tick() -> None:
    checks = [*CHECKS, {"metric": "request_rate", "min": 1}]
    d = Driver(_analyzer(False, checks))
    for _ in range(3):
        d.tick(_samples(d.weight / 100, 0, 1))
    e = d.a.evidence
    before = e._deferred
    d.tick(_samples(d.weight / 100, 0, 1))
    assert e._deferred is not before
