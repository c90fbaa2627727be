"""The shadow phase and the divergence check ticked by hand: a candidate judged on mirrored
copies at weight 0, before any user reaches it; a passing shadow goes on to the first step, a
divergent or failing one rolls back while users are all on stable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitproxy.config import Rollout, RoutingConfig, check_warnings
from splitproxy.config.parse import validate_routing
from splitproxy.errors import ConfigError
from splitproxy.rollout.analyzer import Analyzer, spec_digest
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import CheckResult, MirrorSample
from splitproxy.rollout.validation import InvalidState, check_analyzer
from tests.unit.rollout.drive import Driver, cmd, hist, spec, traffic

DIVERGENCE = {"metric": "mirror_divergence", "max": "1%"}
CHECKS: list[dict[str, Any]] = [{"metric": "error_rate", "max": "5%"}, DIVERGENCE]


def shadowed(**kw: Any) -> Rollout:
    rollout: dict[str, Any] = {
        "shadow": {"duration": "30s", "min_requests": 100},
        "checks": CHECKS,
        "failure_limit": 0,
    }
    return spec(**{**rollout, **kw})


def copies(n: int = 10, *, diverged: int = 0, errors: int = 0, slow: int = 0) -> MirrorSample:
    """One second of the candidate's answers to ``n`` copies."""
    return MirrorSample(n, errors, n - errors, diverged, hist(n, slow))


class Shadow(Driver):
    """Ticks with users at the weight the analyzer asked for and ``mirror`` copies a second
    while it is in the shadow (the controller passes them on only then, on a route without
    ``mirror:``)."""

    def __init__(self, rollout: Rollout, mirror: MirrorSample | None = None, **kw: Any) -> None:
        super().__init__(Analyzer("shop", rollout, **kw))
        self.mirror = mirror if mirror is not None else copies()
        self.user_weights: list[float] = []  # the weight users met, tick by tick

    def tick(self, samples: Any = None, **kw: Any) -> Any:
        self.user_weights.append(self.weight)
        shadowing = self.a.hold is not None and self.a.hold.what == "shadow"
        if "mirror" not in kw and shadowing and self.a.phase == "waiting":
            kw["mirror"] = self.mirror
        return super().tick(samples, **kw)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.a.checks if c.name == name)

    def messages(self) -> list[str]:
        return [e.message for e in self.events()]


def test_a_healthy_candidate_is_shadowed_at_weight_0_then_goes_on_to_the_first_step() -> None:
    d = Shadow(shadowed())
    d.tick()
    assert (d.phase, d.a.weight, d.a.hold and d.a.hold.what) == ("waiting", 0.0, "shadow")
    assert d.a.status()["waiting_for"] == "shadow"
    assert d.messages()[-1].startswith("shadow: user requests mirrored to the candidate")
    entered = d.now - 1
    while d.a.step_index < 0:
        d.tick()
        assert d.now < 100, "the shadow never ended"
    # no user met the candidate before the shadow passed, and it lasted its duration
    assert set(d.user_weights) == {0.0}
    passed = next(e for e in d.events() if e.message.startswith("shadow passed"))
    assert passed.at - entered >= 30
    assert "300 mirrored answers, 0 errors, 0 of 300 diverged (0.00%)" in passed.message
    assert {c.name: c.verdict for c in passed.checks} == {
        "error_rate": "pass",
        "mirror_divergence": "pass",
        "mirror_divergence_guard": "pass",
        "guard": "pass",
    }
    assert (d.phase, d.a.weight) == ("progressing", 10.0)
    shown = d.a.status()["shadow"]
    assert shown["stage"] == "passed"
    assert (shown["mirrored"], shown["diverged"], shown["divergence"]) == (300, 0, 0.0)
    d.until("promoted")


def test_a_candidate_whose_answers_diverge_is_rolled_back_after_a_few_copies() -> None:
    d = Shadow(shadowed(), copies(10, diverged=10))
    d.until("rolled_back", limit=30)
    assert set(d.user_weights) == {0.0}
    assert d.a.weight == 0.0
    assert d.now <= 5  # the anytime test, long before the 30 s window
    rolled = d.events()[-1]
    assert (
        rolled.message
        == "in the shadow, mirrored answers diverge from stable's clearly above 1.00%"
    )
    verdicts = {c.name: c.verdict for c in rolled.checks}
    assert verdicts["mirror_divergence_guard"] == "fail"
    assert d.a.status()["shadow"]["stage"] == "rolled_back"


def test_a_candidate_that_fails_the_copies_trips_the_guard_in_the_shadow() -> None:
    d = Shadow(shadowed(checks=[DIVERGENCE]), copies(10, errors=10))
    d.until("rolled_back", limit=30)
    assert set(d.user_weights) == {0.0}
    assert d.events()[-1].message == (
        "in the shadow, the guard tripped: mirrored answers' error rate far above the cap"
    )


def test_a_divergence_just_above_max_fails_the_window_at_its_end() -> None:
    # 2 % diverge: too little for the anytime test, judged when the window is whole
    d = Shadow(shadowed(guard=False), copies(50, diverged=1))
    d.until("rolled_back", limit=60)
    failed = next(e for e in d.events() if e.kind == "check_failed")
    assert failed.message == "shadow: failed: mirror_divergence (1 of 0 tolerated)"
    result = next(c for c in failed.checks if c.name == "mirror_divergence")
    assert result.value == pytest.approx(0.02)
    assert (result.max, result.sample) == (0.01, 1500)
    assert result.unit == "fraction"
    assert result.metric == "mirror_divergence"
    assert d.now - 1 >= 30


def test_the_threshold_checks_are_judged_on_the_mirrored_answers() -> None:
    # users on stable are healthy; the candidate's answers to the copies are slow
    rollout = shadowed(checks=[{"metric": "latency_p99", "max": "200ms"}], failure_limit=1)
    d = Shadow(rollout, copies(10, slow=5))
    d.until("rolled_back", limit=120)
    kinds = d.kinds()
    assert kinds.count("check_failed") == 2  # one failed window tolerated, the second not
    assert d.messages()[-1] == "in the shadow, more than 1 failed check windows"
    assert set(d.user_weights) == {0.0}


def test_the_divergence_has_no_value_until_the_window_holds_min_requests_copies() -> None:
    d = Shadow(shadowed(), copies(10, diverged=0))
    d.run(5)
    early = d.check("mirror_divergence")
    assert (early.verdict, early.value, early.sample) == ("no_data", None, 40)
    assert "judged from 100" in early.detail


def test_without_copies_the_shadow_holds() -> None:
    d = Shadow(shadowed(), MirrorSample())
    d.run(90)
    assert d.phase == "waiting"
    assert d.a.step_index == -1
    assert d.a.status()["shadow"]["mirrored"] == 0


def test_resume_by_hand_ends_the_shadow() -> None:
    d = Shadow(shadowed())
    d.run(3)
    d.tick(**cmd("resume", "looks fine"))
    assert (d.phase, d.a.weight) == ("progressing", 10.0)
    assert d.a.shadow.passed


def test_a_pause_in_the_shadow_resumes_into_it() -> None:
    d = Shadow(shadowed())
    d.run(3)
    d.tick(**cmd("pause"))
    assert d.phase == "paused"
    assert d.a.status()["shadow"]["stage"] == "paused"
    d.tick(**cmd("resume"))
    assert d.phase == "waiting"
    assert d.a.hold is not None
    assert d.a.hold.what == "shadow"
    d.until("progressing")
    assert d.a.weight == 10.0


def test_the_shadow_comes_before_the_pre_rollout_gate() -> None:
    d = Shadow(shadowed(), gates=["pre-rollout"])
    d.tick()
    assert d.a.hold is not None
    assert d.a.hold.what == "shadow"
    while d.a.hold is not None and d.a.hold.what == "shadow":
        d.tick()
    assert d.a.hold is not None
    assert d.a.hold.what == "pre-rollout"


def test_a_restart_mid_shadow_carries_on_where_it_stopped() -> None:
    rollout = shadowed()
    d = Shadow(rollout)
    d.run(12)
    data = json.loads(json.dumps(encode(d.a)))
    check_analyzer(data, "shop", rollout, spec_digest(rollout))
    restored = decode("shop", rollout, data)
    assert restored.status()["shadow"] == d.a.status()["shadow"]
    assert restored.evidence.window.mirrored == d.a.evidence.window.mirrored == 110
    again = Shadow(rollout)
    again.a, again.now, again.weight = restored, d.now, 0.0
    again.until("progressing", limit=40)
    assert again.a.weight == 10.0
    assert again.now - 1 >= 30
    assert set(again.user_weights) == {0.0}


@pytest.mark.parametrize(
    "shadow",
    [
        {"passed": "yes", "started_at": 0, "answered": 0, "errors": 0, "compared": 0,
         "diverged": 0, "test": None},
        {"passed": False, "started_at": 0, "answered": 5, "errors": 9, "compared": 0,
         "diverged": 0, "test": None},
        {"passed": False},
        ["not", "an", "object"],
        {"passed": False, "started_at": 0, "answered": 0, "errors": 0, "compared": 0,
         "diverged": 0, "test": [1, 2]},
    ],
)  # fmt: skip
def test_a_damaged_shadow_state_is_refused(shadow: Any) -> None:
    rollout = shadowed()
    d = Shadow(rollout)
    d.run(3)
    data = {**encode(d.a), "shadow": shadow}
    with pytest.raises(InvalidState, match=r"analyzer\.shadow"):
        check_analyzer(data, "shop", rollout, spec_digest(rollout))


def steps_with_copies(mirror: MirrorSample) -> Driver:
    rollout = spec(checks=[DIVERGENCE], failure_limit=0)  # no shadow: the route's mirror
    d = Driver(Analyzer("shop", rollout))
    for _ in range(30):
        d.tick(traffic(d.weight / 100), mirror=mirror)
        if d.phase != "progressing":
            break
    return d


def test_in_the_steps_of_a_mirrored_route_the_divergence_is_judged_on_its_window() -> None:
    d = steps_with_copies(copies(50, diverged=1))  # 2 %: judged when the window is whole
    assert d.phase == "rolled_back"
    assert d.a.step_index == 0
    assert d.events()[-2].message == "failed: mirror_divergence (1 of 0 tolerated)"
    d = steps_with_copies(copies(10, diverged=1))  # 10 %: clearly above 1 %, at once
    assert d.events()[-1].message == "mirrored answers diverge from stable's clearly above 1.00%"
    assert d.now <= 9


def test_in_the_steps_of_a_route_without_mirror_the_divergence_check_does_not_hold() -> None:
    d = Shadow(shadowed())
    d.until("promoted", limit=200)
    assert d.a.shadow.passed


def test_a_spec_without_a_shadow_keeps_its_digest() -> None:
    # saved rollouts must not restart because the field exists now
    assert spec_digest(spec()) == spec_digest(spec(shadow=None))
    assert spec_digest(spec()) != spec_digest(shadowed(checks=[]))


# --- the routing file -------------------------------------------------------------------------


def routes(route: dict[str, Any]) -> RoutingConfig:
    base = {"name": "shop", "stable": "http://127.0.0.1:1", "candidate": "http://127.0.0.1:2"}
    return validate_routing({"routes": [{**base, **route}]})


def test_the_divergence_check_needs_copies_to_judge() -> None:
    with pytest.raises(ConfigError) as refused:
        routes({"rollout": {"steps": [10], "checks": [{"metric": "error_rate", "max": 0.1},
                                                      DIVERGENCE]}})  # fmt: skip
    assert [str(p) for p in refused.value.problems] == [
        "routes[0].rollout.checks[1]: 'mirror_divergence' judges mirrored copies: give the "
        "route 'mirror:' or the rollout 'shadow:'"
    ]
    shadow = routes({"rollout": {"steps": [10], "shadow": {}, "checks": [DIVERGENCE]}})
    assert shadow.routes[0].rollout is not None
    assert shadow.routes[0].rollout.checks[0].max == 0.01  # type: ignore[union-attr]
    mirrored = routes(
        {"mirror": {"percent": 5}, "rollout": {"steps": [10], "checks": [DIVERGENCE]}}
    )
    assert check_warnings(mirrored) == []


def test_check_warns_of_a_shadow_that_judges_no_divergence() -> None:
    config = routes({"rollout": {"steps": [10], "shadow": {"duration": "1m"}}})
    assert check_warnings(config) == [
        "routes[0].rollout.shadow: no {metric: mirror_divergence} check: divergence from "
        "stable is shown but never judged"
    ]


@pytest.mark.parametrize(
    ("shadow", "problem"),
    [
        ({"duration": "0s"}, "routes[0].rollout.shadow.duration: must be a duration > 0"),
        ({"min_requests": -1}, "routes[0].rollout.shadow.min_requests: must be >= 0"),
        ({"minimum": 5}, "routes[0].rollout.shadow.minimum: "),
    ],
)
def test_bad_shadows_are_refused(shadow: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        routes({"rollout": {"steps": [10], "shadow": shadow}})
    assert str(refused.value.problems[0]).startswith(problem)


def test_a_blue_green_rollout_shadows_before_its_first_test_iteration() -> None:
    rollout = Rollout.model_validate(
        {
            "strategy": "bluegreen",
            "interval": "10s",
            "min_requests": 0,
            "bake": "10s",
            "shadow": {"duration": "5s", "min_requests": 20},
            "checks": [DIVERGENCE],
        }
    )
    d = Shadow(rollout)
    d.tick()
    assert d.a.status()["waiting_for"] == "shadow"
    d.until("progressing")
    assert d.a.step_index == 0  # the first test iteration, users still on stable
    assert d.a.weight == 0.0
    assert d.events()[-1].message == "iteration 1 of 1: test traffic only, users on stable"
    d.until("promoted", limit=100)
    assert d.a.shadow.passed
