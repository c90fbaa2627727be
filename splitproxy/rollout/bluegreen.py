"""The blue/green strategy: test traffic first, one switch, a bake (pure).

A blue/green rollout runs on the same machine as a canary (`analyzer.Analyzer`: its phases,
transition table, checks, evidence, hooks and ledger); this module is where the two differ.
Its plan (`config.Rollout.plan`) is ``iterations`` steps at 0 % followed by the **bake** at
100 %:

1. *Before the switch* users stay on stable. The candidate gets test traffic only: requests
   forced by overrides, the preview listener, the synthetic ``traffic:`` generator and the
   **test job** (`RunTest`, run once the first iteration begins; a failure counts as a
   failed check, and while ``failure_limit`` allows it runs again). Each iteration holds for
   ``interval`` and ``min_requests`` candidate (test) requests, judged by the threshold checks
   and the guard, as a canary step is.
2. *The switch* waits, in order, for the test job to pass (hold ``test``), for the
   ``confirm-promotion`` gate when one is configured, and for a human's ``promote`` when
   ``auto_promote`` is false (hold ``switch``). Then all user traffic moves at once: the bake
   step's weight is 100 % (one snapshot swap in the data path).
3. *The bake* runs the checks on the new version's live traffic; the comparisons with stable
   judge it against stable's numbers frozen at the switch (`baseline.Baseline`). Any failure
   reverts at once (all traffic back to the old version, ``rolled_back``); ``rollback`` by
   hand does the same. When the bake's window passes, the rollout is ``promoted``.

The functions here are the analyzer's strategy seams; they drive it through its own moves
(`Analyzer._wait_for`, `_enter_step`, `_proceed`, `_promote`, `_rollback`), so every change
of phase still goes through the transition table and lands in the ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from splitproxy.rollout.messages import RunTest, TestOutcome
from splitproxy.rollout.phases import Held

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer

SWITCH_HOLDS: Final[tuple[Held, ...]] = ("test", "confirm-promotion", "switch")
TAIL: Final = 300  # characters of a test job's detail kept in an event


def in_bake(a: Analyzer) -> bool:
    """Has the switch happened (the bake step is the current one)?"""
    return a.spec.bluegreen and a.step_index == a.spec.switch_index


def step_message(a: Analyzer, index: int) -> str:
    """The ledger's words for entering step ``index``."""
    switch = a.spec.switch_index
    if index < switch:
        return f"iteration {index + 1} of {switch}: test traffic only, users on stable"
    bake = a.plan[index].interval
    return f"switched: all traffic on the candidate, baking for {bake:g}s"


def on_step(a: Analyzer, now: float, index: int) -> None:
    """A step began: the first iteration starts the test job; the bake freezes stable's
    numbers as the baseline of the comparisons."""
    if index == 0 and a.spec.test is not None and not a.test_passed:
        run_test(a)
    if index == a.spec.switch_index:
        a.evidence.start_baseline(now)


def run_test(a: Analyzer) -> None:
    a.test_attempt += 1
    a.queue(RunTest(a.test_attempt))


def _next_hold(a: Analyzer, after: Held | None) -> Held | None:
    """What still holds the switch after ``after`` (None: from the start)."""
    order = SWITCH_HOLDS
    start = 0 if after is None else order.index(after) + 1
    for what in order[start:]:
        if what == "test" and a.spec.test is not None and not a.test_passed:
            return what
        if what == "confirm-promotion" and what in a.gates:
            return what
        if what == "switch" and not a.spec.auto_promote:
            return what
    return None


def advance(a: Analyzer, now: float, nxt: int) -> None:
    """The current step passed: the next iteration, the switch (through its holds), or,
    after the bake, promotion."""
    switch = a.spec.switch_index
    if nxt < switch:
        a._enter_step(now, nxt)
    elif nxt == switch:
        _towards_switch(a, now, None)
    else:
        a._promote(now, "the bake passed")


def proceed(a: Analyzer, now: float, held: Held) -> None:
    """A hold before the switch was released (``_proceed`` already moved to progressing)."""
    _towards_switch(a, now, held)


def _towards_switch(a: Analyzer, now: float, after: Held | None) -> None:
    hold = _next_hold(a, after)
    if hold is None:
        a._enter_step(now, a.spec.switch_index)
    else:
        a._wait_for(now, hold, a.spec.switch_index)


def before_switch(a: Analyzer) -> bool:
    """Is the rollout waiting at one of the switch's holds?"""
    hold = a.hold
    return (
        a.spec.bluegreen
        and a.phase == "waiting"
        and hold is not None
        and (hold.what in SWITCH_HOLDS and hold.step == a.spec.switch_index)
    )


def switch_by_hand(a: Analyzer, now: float, message: str, source: str) -> None:
    """``promote`` at the switch: switch now (the bake still follows)."""
    a.hold = None
    a._move(now, "proceed", "proceeded", message, source=source)
    a._enter_step(now, a.spec.switch_index)


def test_outcome(a: Analyzer, now: float, outcome: TestOutcome) -> None:
    """The test job ended: a pass opens its hold; a failure is a failed check, after which
    (while the rollout goes on) the job runs again."""
    if (
        outcome.attempt != a.test_attempt
        or a.test_passed
        or a.phase not in ("progressing", "waiting")
    ):
        return
    detail = outcome.detail[-TAIL:]
    if outcome.passed:
        a.test_passed = True
        a._event(
            now, "test_passed", f"the test job passed (attempt {outcome.attempt})" + _colon(detail)
        )
        return
    a._failure(now, f"the test job failed (attempt {outcome.attempt})" + _colon(detail))
    if a.phase in ("progressing", "waiting"):
        run_test(a)


def _colon(text: str) -> str:
    return f": {text}" if text else ""
