"""The blue/green strategy ticked by hand: test iterations at 0 %, the test job, the switch's
holds, the bake against stable's pre-switch baseline, and the revert."""

from __future__ import annotations

from typing import Any

import pytest

from splitproxy.config import Rollout
from splitproxy.rollout.analyzer import Analyzer, spec_digest
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import (
    Action,
    CallHook,
    GateResult,
    Observation,
    RunTest,
    Sample,
    SetWeight,
    TestOutcome,
)
from tests.unit.rollout.drive import Driver, cmd, hist

BASE: dict[str, Any] = {
    "strategy": "bluegreen",
    "iterations": 2,
    "interval": "10s",
    "min_requests": 20,
    "bake": "30s",
    "checks": [{"metric": "error_rate", "max": 0.05}],
}


def bluegreen(**kw: Any) -> Rollout:
    return Rollout.model_validate({**BASE, **kw})


def trial_traffic(candidate: tuple[int, int] = (10, 0)) -> list[Sample]:
    """One second of test traffic: the candidate's (not routed at random, ``p`` None) and
    users on stable."""
    n, x = candidate
    return [
        Sample("stable", 100, 0, 0.0, "/", hist(100)),
        Sample("candidate", n, x, None, None, hist(n)),
    ]


def live(errors: int = 0, slow: int = 0) -> list[Sample]:
    """One second after the switch: every user on the candidate (``p`` 1)."""
    return [Sample("candidate", 100, errors, 1.0, "/", hist(100, slow))]


class BG(Driver):
    """Feeds test traffic before the switch and live traffic after it."""

    def __init__(self, spec: Rollout, gates: tuple[Any, ...] = (), **live_kw: Any) -> None:
        super().__init__(Analyzer("shop", spec, gates=gates))
        self.live_kw = live_kw
        self.tests: list[TestOutcome] = []

    def tick(self, samples: Any = None, **kw: Any) -> list[Action]:
        if samples is None:
            samples = live(**self.live_kw) if self.weight == 100 else trial_traffic()
        if self.tests:
            kw["tests"], self.tests = self.tests, []
        return super().tick(samples, **kw)

    def runs(self) -> list[int]:
        return [a.attempt for a in self.actions if isinstance(a, RunTest)]


def test_users_stay_on_stable_through_the_iterations_then_switch_at_once_and_bake() -> None:
    d = BG(bluegreen())
    weights_before_switch: list[float | None] = []
    for _ in range(40):
        d.tick()
        if d.weight == 100:
            break
        weights_before_switch.append(d.a.weight)
    assert set(weights_before_switch) == {0.0}  # no user ever on the candidate
    assert d.weights() == [0.0, 100.0]  # one move: the switch
    kinds = d.kinds()
    assert kinds.count("step") == 3  # two iterations and the bake
    assert "switched: all traffic on the candidate, baking for 30s" in [
        e.message for e in d.events()
    ]
    assert d.a.evidence.baseline is not None
    d.until("promoted")
    assert d.events()[-1].message == "the bake passed"
    assert d.a.weight == 100


def test_the_test_job_runs_with_the_first_iteration_and_holds_the_switch_until_it_passes() -> None:
    d = BG(bluegreen(test={"command": ["./smoke"]}))
    d.tick()
    assert d.runs() == [1]
    for _ in range(30):
        d.tick()
    hold = d.a.hold
    assert (d.phase, hold and hold.what, d.a.weight) == ("waiting", "test", 0)
    d.tests = [TestOutcome(1, True, "exit 0: 12 passed")]
    d.tick()
    assert "the test job passed (attempt 1): exit 0: 12 passed" in [e.message for e in d.events()]
    assert d.a.weight == 100


def test_a_failing_test_job_is_a_failed_check_runs_again_and_rolls_back_past_the_limit() -> None:
    d = BG(bluegreen(test={"command": ["./smoke"]}, failure_limit=1))
    d.tick()
    d.tests = [TestOutcome(1, False, "exit 3: FAIL test_checkout")]
    d.tick()
    assert d.runs() == [1, 2]  # a failure within the limit: once more
    assert "the test job failed (attempt 1): exit 3: FAIL test_checkout (1 of 1 tolerated)" in [
        e.message for e in d.events()
    ]
    d.tests = [TestOutcome(1, True)]  # a stale attempt's answer changes nothing
    d.tick()
    assert not d.a.test_passed
    d.tests = [TestOutcome(2, False, "exit 3")]
    d.tick()
    assert (d.phase, d.a.weight) == ("rolled_back", 0)
    assert set(d.weights()) == {0.0}  # users never reached the candidate


def test_confirm_promotion_and_auto_promote_false_hold_the_switch_in_order() -> None:
    d = BG(bluegreen(auto_promote=False), gates=("confirm-promotion",))
    for _ in range(30):
        d.tick()
    hold = d.a.hold
    assert hold is not None
    assert (hold.what, d.a.weight) == ("confirm-promotion", 0)
    assert CallHook("confirm-promotion", 3) in d.actions
    d.tick(gates=[GateResult("confirm-promotion", 3, True)])
    hold = d.a.hold
    assert hold is not None
    assert (d.phase, hold.what, d.a.weight) == ("waiting", "switch", 0)
    d.run(5)
    assert d.a.weight == 0  # nothing switches by itself
    d.tick(**cmd("promote"))
    assert (d.phase, d.a.weight) == ("progressing", 100)  # switched; the bake follows
    assert "switched by hand" in [e.message for e in d.events()]
    d.until("promoted")


def test_errors_in_the_bake_revert_at_once() -> None:
    d = BG(bluegreen(failure_limit=3))
    d.until("progressing")
    while d.weight != 100:
        d.tick()
    d.live_kw = {"errors": 20}
    d.until("rolled_back", limit=15)
    assert d.a.weight == 0
    assert d.weights()[-1] == 0
    message = next(e for e in d.events() if e.kind == "rolled_back").message
    assert message.startswith(("failed in the bake", "the guard tripped"))


def test_rollback_by_hand_in_the_bake_is_the_same_one_step_revert() -> None:
    d = BG(bluegreen())
    while d.weight != 100:
        d.tick()
    d.tick(**cmd("rollback", "pager"))
    assert (d.phase, d.a.weight) == ("rolled_back", 0)
    assert d.weights() == [0.0, 100.0, 0.0]


def test_the_comparison_in_the_bake_judges_against_stable_before_the_switch() -> None:
    spec = bluegreen(
        checks=[{"metric": "error_rate", "compare": "stable", "traffic": "all"}], bake="10m"
    )
    d = BG(spec)
    for _ in range(200):  # stable: 0.5 % errors before the switch
        samples = [
            Sample("stable", 200, 1, 0.0, "/", hist(200)),
            Sample("candidate", 10, 0, None, None, hist(10)),
        ]
        d.tick(samples)
        if d.weight == 100:
            break
    base = d.a.evidence.baseline
    assert base is not None
    assert base.error_rate == pytest.approx(0.005)
    d.live_kw = {"errors": 1}  # 1 %: within what stable did, give or take
    d.run(60)
    assert d.phase == "progressing"
    check = {c.name: c for c in d.a.checks}["error_rate_vs_stable"]
    assert check.verdict == "pass"
    assert "vs stable before the switch: 0.500%" in check.detail
    d.live_kw = {"errors": 8}  # 8 %: far above it
    d.until("rolled_back", limit=30)
    assert "error_rate_vs_stable" in d.events()[-1].message


def test_a_bake_survives_a_restart_through_the_codec() -> None:
    spec = bluegreen(checks=[{"metric": "latency", "compare": "stable", "traffic": "all"}])
    d = BG(spec)
    for _ in range(60):
        d.tick()
        if d.weight == 100:
            break
    saved = encode(d.a)
    again = decode("shop", spec, saved)
    assert again.evidence.baseline is not None
    assert again.evidence.baseline.thresholds == d.a.evidence.baseline.thresholds  # type: ignore[union-attr]
    assert (again.phase, again.weight, again.step_index) == ("progressing", 100, 2)


def test_a_canary_spec_keeps_its_digest_across_the_new_fields() -> None:
    """Saved canary states must not restart after an upgrade that added strategy fields."""
    canary = Rollout.model_validate({"steps": [10, 50]})
    dumped = canary.model_dump_json(exclude={"progress_deadline", "unhealthy_timeout"})
    for new in ("iterations", "bake", "auto_promote", "test", "revert_window"):
        assert f'"{new}"' in dumped  # the raw dump has them ...
    assert spec_digest(canary) == spec_digest(Rollout.model_validate({"steps": [10, 50]}))
    assert spec_digest(canary) != spec_digest(Rollout.model_validate({"steps": [10, 60]}))
    assert spec_digest(canary) == spec_digest(
        Rollout.model_validate({"steps": [10, 50], "revert_window": "1h"})
    )


def test_an_observation_with_test_outcomes_is_ignored_by_a_canary() -> None:
    a = Analyzer("shop", Rollout.model_validate({"steps": [10]}))
    actions = a.tick(0.0, Observation("v2", tests=[TestOutcome(1, False)]))
    assert SetWeight(10.0) in actions
    assert a.failures == 0
