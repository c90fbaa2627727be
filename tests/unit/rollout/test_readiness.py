"""Readiness before judgement, the progress deadline and the unhealthy timeout, ticked by hand."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane.health import CandidateHealth
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import CallHook, GateResult, Sample
from splitproxy.rollout.readiness import Readiness, is_healthy
from tests.unit.rollout.drive import Driver, cmd, spec, traffic

STARTING = CandidateHealth(ready=False, healthy=False, unhealthy_since=None)
READY = CandidateHealth(ready=True, healthy=True, unhealthy_since=None)


def down(since: float) -> CandidateHealth:
    return CandidateHealth(ready=True, healthy=False, unhealthy_since=since)


def refused(n: int = 20) -> list[Sample]:
    """A starting candidate's connection refusals (sticky users or overrides, not at random)."""
    return [Sample("stable", 90, 0, None, "/"), Sample("candidate", n, n, None, "/")]


def test_a_candidate_ready_after_five_seconds_is_rolled_out_and_promoted() -> None:
    d = Driver(Analyzer("shop", spec()))
    for _ in range(5):
        d.tick(refused(), health=STARTING)
    assert (d.phase, d.a.weight, d.a.status()["waiting_for"]) == ("waiting", 0, "readiness")
    assert d.kinds() == ["started", "waiting"]
    assert d.a.failures == 0
    d.tick(health=READY)
    assert (d.phase, d.a.weight) == ("progressing", 10)
    assert d.kinds()[-2:] == ["proceeded", "step"]
    d.until("promoted", health=READY)
    assert d.a.status()["progress_deadline"] == {"spent": 5.0, "limit": 600.0, "ready_at": 5.0}


def test_connection_refusals_before_readiness_do_not_roll_back() -> None:
    d = Driver(Analyzer("shop", spec(checks=[{"metric": "error_rate", "max": 0.05}])))
    for _ in range(60):
        d.tick(refused(50), health=STARTING)
    assert d.phase == "waiting"
    assert d.a.evidence.window.requests == 0
    guard = {c.name: c for c in d.a.checks}["guard"]
    assert guard.sample == 0  # the guard never saw them
    d.tick(refused(50), health=READY)  # the tick it became ready still is not evidence
    assert d.a.evidence.window.requests == 0
    d.until("promoted", health=READY)


def test_a_candidate_never_ready_is_rolled_back_at_the_deadline() -> None:
    d = Driver(Analyzer("shop", spec(progress_deadline="30s")))
    d.run(31, samples=refused(), health=STARTING)
    assert d.phase == "waiting"
    d.tick(refused(), health=STARTING)
    assert (d.phase, d.a.weight) == ("rolled_back", 0)
    last = d.events()[-1]
    assert last.message.startswith("candidate never became ready")
    assert last.trigger == "rollback"


def test_pauses_and_gates_do_not_count_toward_the_deadline() -> None:
    d = Driver(Analyzer("shop", spec(progress_deadline="20s"), gates=["pre-rollout"]))
    d.run(10, samples=refused(), health=STARTING)
    d.tick(refused(), health=STARTING, **cmd("pause"))
    d.run(100, samples=refused(), health=STARTING)  # paused by hand: not counted
    assert d.phase == "paused"
    d.tick(refused(), health=STARTING, **cmd("resume"))
    assert d.a.status()["waiting_for"] == "readiness"
    d.run(5, samples=refused(), health=STARTING)
    assert d.phase == "waiting"
    assert 14 <= d.a.readiness.spent <= 17
    d.tick(health=READY)  # ready: then the pre-rollout gate, which may take its time
    assert CallHook("pre-rollout", 1) in d.actions
    d.run(200, health=READY)
    assert (d.phase, d.a.status()["waiting_for"]) == ("waiting", "pre-rollout")
    d.tick(health=READY, gates=[GateResult("pre-rollout", 1, True)])
    assert (d.phase, d.a.weight) == ("progressing", 10)


def test_the_deadline_survives_a_restart() -> None:
    d = Driver(Analyzer("shop", spec(progress_deadline="30s")))
    d.run(20, samples=refused(), health=STARTING)
    saved = json.loads(json.dumps(encode(d.a)))
    again = Driver(decode("shop", d.a.spec, saved))
    again.now, again.weight = d.now, d.weight
    again.run(11, samples=refused(), health=STARTING)
    assert again.phase == "waiting"
    again.run(2, samples=refused(), health=STARTING)
    assert again.phase == "rolled_back"


def test_a_new_revision_mid_rollout_waits_for_readiness_again() -> None:
    d = Driver(Analyzer("shop", spec()))
    d.run(15, health=READY)
    assert (d.phase, d.a.weight) == ("progressing", 50)
    d.tick(refused(), candidate="v3", health=STARTING)
    assert (d.phase, d.a.weight, d.a.status()["waiting_for"]) == ("waiting", 0, "readiness")
    assert d.a.readiness.spent == 0


def test_an_unavailable_candidate_keeps_its_phase_then_fails_a_check() -> None:
    d = Driver(Analyzer("shop", spec(unhealthy_timeout="20s", failure_limit=1)))
    d.run(3, health=READY)
    quiet = [Sample("stable", 100, 0, 0.1, "/")]
    start = d.now
    d.run(19, samples=quiet, health=down(start))
    assert (d.phase, d.a.weight, d.a.failures) == ("progressing", 10, 0)
    health = {c.name: c for c in d.a.checks}["candidate_health"]
    assert (health.kind, health.verdict, health.max) == ("health", "pass", 20.0)
    d.run(2, samples=quiet, health=down(start))
    assert d.a.failures == 1
    failed = d.events()[-1]
    assert failed.kind == "check_failed"
    assert f"since t={start:g}" in failed.message
    result = {c.name: c for c in failed.checks}["candidate_health"]
    assert (result.verdict, result.value) == ("fail", 20.0)
    d.run(20, samples=quiet, health=down(start))  # a second whole timeout: past the limit
    assert d.phase == "rolled_back"


def test_a_step_does_not_pass_on_time_the_candidate_was_unavailable() -> None:
    d = Driver(Analyzer("shop", spec()))  # steps of 10 s and 20 requests
    d.run(3, health=READY)
    d.run(30, samples=[Sample("stable", 100, 0, 0.1, "/")], health=down(d.now))
    assert d.a.step_index == 0
    d.run(5, health=READY)
    assert d.a.step_index == 0  # the unavailable time is no part of the step's interval
    d.run(5, health=READY)
    assert d.a.step_index == 1


def test_the_guard_still_rolls_back_a_candidate_that_answers_with_errors() -> None:
    d = Driver(Analyzer("shop", spec()))
    d.run(3, health=READY)
    d.run(5, samples=traffic(0.1, candidate=(50, 50)), health=down(d.now))
    assert d.phase == "rolled_back"


_HEALTH = st.none() | st.builds(
    CandidateHealth, st.booleans(), st.booleans(), st.none() | st.floats(0.0, 100.0)
)
_MAYBE_TIME = st.none() | st.floats(0.0, 100.0)


@settings(max_examples=300, deadline=None)
@given(_MAYBE_TIME, _MAYBE_TIME, st.integers(0, 5), _HEALTH, st.floats(0.0, 200.0))
def test_the_tick_s_shortcuts_are_what_the_readiness_calls_come_to(
    ready_at: float | None,
    since: float | None,
    strikes: int,
    health: CandidateHealth | None,
    now: float,
) -> None:
    """`Analyzer.tick` calls `Readiness.elapse` and `see` only while the candidate was never
    ready, and `_candidate_health` skips `check` and `strike` when the candidate was never
    ready or is available: in those cases the calls change nothing / come to no check, no
    strike and the stretch forgotten."""
    r = Readiness(ready_at, 3.0, since, strikes)
    if ready_at is not None:
        before = Readiness(ready_at, 3.0, since, strikes)
        r.elapse(1.0, counting=True)
        r.see(now, health)
        assert r == before
    if ready_at is None or is_healthy(health):
        assert r.check(now, health, 30.0) is None
        assert not r.strike(now, health, 30.0)
        assert (r.unhealthy_since, r.strikes) == (None, 0)
