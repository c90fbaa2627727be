"""The rollout analyzer, ticked by hand: `splitproxy.rollout.analyzer`."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import GATES, Gate
from splitproxy.dataplane.health import CandidateHealth
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.histograms import hist_quantile
from splitproxy.rollout.messages import (
    CallHook,
    Emit,
    GateResult,
    ManualCommand,
    Observation,
    Sample,
)
from splitproxy.rollout.phases import ACTIVE, PHASES, TRANSITIONS
from splitproxy.rollout.trailing import TRAIL_SLOT
from tests.unit.rollout.drive import Driver, cmd, gated, hist, hold_step, spec, started, traffic

T0 = 1_000_000.0


# --- the table --------------------------------------------------------------------------------


def test_the_table_covers_every_phase_and_names_only_phases() -> None:
    assert set(TRANSITIONS) == set(PHASES)
    for moves in TRANSITIONS.values():
        assert set(moves.values()) <= set(PHASES)
    # every phase can be left, and every phase but idle can reach idle
    assert all(TRANSITIONS[p] for p in PHASES)
    assert all(TRANSITIONS[p].get("abandon") == "idle" for p in PHASES)
    # the end states are left only by a new revision, retry, a manual rollback or abandon
    assert set(TRANSITIONS["promoted"]) == {"start", "rollback", "abandon"}
    assert set(TRANSITIONS["rolled_back"]) == {"start", "retry", "abandon"}


def test_idle_without_a_candidate_does_nothing() -> None:
    d = Driver(Analyzer("shop", spec()), candidate=None)
    d.run(5)
    assert d.actions == []
    assert d.phase == "idle"
    assert d.a.checks == ()


# --- a whole rollout --------------------------------------------------------------------------


def test_a_good_candidate_goes_through_every_step_and_is_promoted() -> None:
    d = started()
    assert d.phase == "progressing"
    assert d.kinds() == ["started", "step"]
    assert d.weights() == [10]
    assert d.until("promoted") == 20
    assert d.weights() == [10, 50, 100]
    assert d.kinds() == ["started", "step", "step", "promoted"]
    promoted = d.events()[-1]
    assert (promoted.previous, promoted.phase, promoted.step) == ("progressing", "promoted", 2)
    assert {c.name for c in promoted.checks} == {"guard"}
    d.run(5)  # stays promoted while the file names the same candidate
    assert d.phase == "promoted"
    assert d.weights()[-1] == 100


def test_step_weight_form_and_step_events() -> None:
    d = started(Rollout.model_validate({"step_weight": 20, "max_weight": 50, "interval": 1}))
    d.until("promoted")
    assert d.weights() == [20, 40, 50, 100]
    steps = [e for e in d.events() if e.kind == "step"]
    assert [(e.step, e.weight) for e in steps] == [(1, 20), (2, 40), (3, 50)]


def test_min_requests_holds_a_step_after_its_interval() -> None:
    quiet = started(min_requests=100)
    for _ in range(40):  # one candidate request a tick: 100 requests take 100 s
        quiet.tick(traffic(0.1, candidate=(1, 0)))
    assert quiet.a.step_index == 0
    assert quiet.a.evidence.window.requests == 40
    for _ in range(60):
        quiet.tick(traffic(0.1, candidate=(1, 0)))
    assert quiet.a.step_index == 1


def test_per_step_interval_and_min_requests_override_the_rollout() -> None:
    d = started(steps=[{"weight": 10, "interval": "30s", "min_requests": 0}, 50])
    d.run(20)
    assert d.a.step_index == 0
    d.run(11)
    assert d.a.step_index == 1


def test_the_tick_that_starts_a_rollout_is_not_evidence() -> None:
    d = Driver(Analyzer("shop", spec(checks=[{"metric": "error_rate", "max": 0.1}])))
    d.tick(traffic(0.1, candidate=(100, 100)))  # routed before the rollout began
    assert d.a.evidence.window.requests == 0
    assert d.a.evidence.guard is not None
    assert d.a.evidence.guard.requests == 0


# --- absolute checks --------------------------------------------------------------------------


def test_absolute_checks_are_recorded_every_tick() -> None:
    d = started(
        checks=[
            {"metric": "error_rate", "max": 0.05},
            {"metric": "success_rate", "min": 0.99},
            {"metric": "latency_p99", "max": "100ms"},
            {"metric": "request_rate", "min": 1},
        ]
    )
    d.tick(traffic(0.1, candidate=(10, 1)))
    d.tick(traffic(0.1, candidate=(10, 0)))
    by_name = {c.name: c for c in d.a.checks}
    assert by_name["error_rate"].value == pytest.approx(0.05)
    assert by_name["error_rate"].verdict == "pass"
    assert (by_name["error_rate"].max, by_name["error_rate"].sample) == (0.05, 20)
    assert by_name["success_rate"].value == pytest.approx(0.95)
    # under the line, but one error in 20 requests does not show a rate above 1 %
    assert by_name["success_rate"].verdict == "pass"
    assert by_name["success_rate"].detail.startswith("over the line, not shown yet")
    assert by_name["latency_p99"].value == 0.05
    assert by_name["request_rate"].value == pytest.approx(10.0)
    assert by_name["guard"].kind == "guard"


def test_failed_windows_count_and_roll_back_past_the_failure_limit() -> None:
    d = started(failure_limit=1, guard=False, checks=[{"metric": "error_rate", "max": 0.05}])
    bad = traffic(0.1, candidate=(10, 2), stable=(90, 1))  # 20 % errors: shown above 5 %
    for _ in range(11):
        d.tick(bad)
    assert d.a.failures == 1
    assert d.phase == "progressing"
    assert d.a.step_index == 0  # halted, not advanced
    failed = [e for e in d.events() if e.kind == "check_failed"]
    assert failed[0].message == "failed: error_rate (1 of 1 tolerated)"
    for _ in range(10):
        d.tick(bad)
    assert d.phase == "rolled_back"
    assert d.weights()[-1] == 0
    last = d.events()[-1]
    assert last.kind == "rolled_back"
    assert last.message == "more than 1 failed check windows"


def test_failure_limit_zero_rolls_back_on_the_first_failed_window() -> None:
    d = started(failure_limit=0, checks=[{"metric": "latency_p95", "max": "100ms"}])
    for _ in range(11):
        d.tick(traffic(0.1, candidate=(10, 0), candidate_slow=5))
    assert d.phase == "rolled_back"


def test_no_data_holds_or_fails() -> None:
    empty = [Sample("stable", 100, 0, 0.1)]
    hold = started()
    for _ in range(30):
        hold.tick(empty)
    assert (hold.phase, hold.a.step_index, hold.a.failures) == ("progressing", 0, 0)
    fail = started(on_no_data="fail", failure_limit=2)
    for _ in range(31):
        fail.tick(empty)
    assert fail.phase == "rolled_back"
    assert next(e.message for e in fail.events() if e.kind == "check_failed").startswith(
        "no candidate traffic"
    )


def test_a_check_without_a_value_follows_on_no_data() -> None:
    checks = [{"prometheus": "http://prom", "query": "up", "min": 1}]
    hold = started(checks=checks)
    hold.run(30)
    assert hold.a.step_index == 0
    assert {c.name: c.verdict for c in hold.a.checks}["prometheus"] == "no_data"
    hold.tick(external={"prometheus": 1.0})
    assert hold.a.step_index == 1
    fail = started(checks=checks, on_no_data="fail", failure_limit=0)
    fail.run(11)
    assert fail.phase == "rolled_back"


def test_external_checks_judge_the_latest_value_in_the_window() -> None:
    d = started(
        checks=[
            {"prometheus": "http://prom", "query": "x", "max": 3},
            {"web": "http://ci/ok", "name": "ci"},
            {"web": "http://score", "json_path": "score", "min": 0.5, "name": "score"},
        ],
        failure_limit=5,
    )
    d.tick(external={"prometheus": 2.0, "ci": 1.0, "score": 0.9})
    verdicts = {c.name: (c.value, c.verdict) for c in d.a.checks if c.kind == "external"}
    assert verdicts == {
        "prometheus": (2.0, "pass"),
        "ci": (1.0, "pass"),
        "score": (0.9, "pass"),
    }
    d.tick(external={"prometheus": 4.0, "ci": 0.0, "score": None})
    verdicts = {c.name: (c.value, c.verdict) for c in d.a.checks if c.kind == "external"}
    assert verdicts == {
        "prometheus": (4.0, "fail"),
        "ci": (0.0, "fail"),
        "score": (None, "no_data"),
    }


# --- comparisons with stable ------------------------------------------------------------------


def test_an_error_regression_rolls_back_mid_step_with_evidence() -> None:
    d = started(checks=[{"metric": "error_rate", "compare": "stable"}], interval="1h")
    rng = random.Random(1)
    for _ in range(300):
        stable_x = sum(rng.random() < 0.005 for _ in range(900))
        cand_x = sum(rng.random() < 0.04 for _ in range(100))
        d.tick(traffic(0.1, stable=(900, stable_x), candidate=(100, cand_x)))
        if d.phase != "progressing":
            break
    assert d.phase == "rolled_back"
    assert d.now < 60  # within the first minute of a one-hour step
    event = d.events()[-1]
    assert event.message == "worse than stable: error_rate_vs_stable"
    check = next(c for c in event.checks if c.name == "error_rate_vs_stable")
    assert check.verdict == "fail"
    assert check.value is not None
    assert check.max is not None
    assert check.value >= check.max == pytest.approx(1 / 0.009)
    assert check.ci is not None
    assert 1 < check.ci[0] < 8 < check.ci[1]


def test_one_broken_path_class_is_caught() -> None:
    d = started(checks=[{"metric": "error_rate", "compare": "stable"}], interval="1h")
    rng = random.Random(4)
    for _ in range(600):
        samples = []
        for k in range(10):
            sx = sum(rng.random() < 0.005 for _ in range(90))
            rate = 0.3 if k == 3 else 0.005
            cx = sum(rng.random() < rate for _ in range(10))
            samples += [
                Sample("stable", 90, sx, 0.1, f"/p{k}"),
                Sample("candidate", 10, cx, 0.1, f"/p{k}"),
            ]
        d.tick(samples)
        if d.phase != "progressing":
            break
    assert d.phase == "rolled_back"
    check = next(c for c in d.events()[-1].checks if c.name == "error_rate_vs_stable")
    assert "/p3" in check.detail


def test_requests_not_routed_at_random_do_not_count_in_comparisons() -> None:
    d = started(checks=[{"metric": "error_rate", "compare": "stable"}], interval="1h", guard=False)
    for _ in range(100):
        d.tick(
            [
                Sample("stable", 90, 0, 0.1, "/"),
                Sample("candidate", 10, 3, None, "/"),  # forced by an override header
            ]
        )
    assert d.phase == "progressing"
    assert d.a.evidence.errors_test is not None
    assert d.a.evidence.errors_test.pooled.events == 0


def test_latency_thresholds_come_from_stable_history_in_slots_closed_before_the_tick() -> None:
    d = Driver(Analyzer("shop", spec(checks=[{"metric": "latency", "compare": "stable"}])))
    d.tick([Sample("stable", 0, 0, None, None, hist(3000, 60, 0.05, 0.2))], candidate=None)
    d.tick()
    result = {c.name: c for c in d.a.checks}["latency_vs_stable"]
    assert result.detail == "stable history too short"  # its 10-s slot is still open
    d.now = TRAIL_SLOT  # the next slot's first tick closes it
    d.tick()
    result = {c.name: c for c in d.a.checks}["latency_vs_stable"]
    assert result.detail == "stable p95 50ms, stable p99 200ms"
    # a tick in which stable itself is slow is judged against the thresholds from before it
    d.tick(traffic(0.1, stable_slow=90, candidate_slow=10))
    test95 = d.a.evidence.latency_tests[0.95]
    assert test95.counts() == {0.1: (10, 90)}


def test_a_latency_regression_rolls_back() -> None:
    d = Driver(Analyzer("shop", spec(checks=[{"metric": "latency", "compare": "stable"}])))
    d.tick([Sample("stable", 0, 0, None, None, hist(5000, 50, 0.05, 0.2))], candidate=None)
    rng = random.Random(8)
    for _ in range(300):
        d.tick(
            [
                Sample(
                    "stable",
                    900,
                    0,
                    0.1,
                    "/",
                    hist(900, sum(rng.random() < 0.01 for _ in range(900)), 0.05, 0.2),
                ),
                Sample(
                    "candidate",
                    100,
                    0,
                    0.1,
                    "/",
                    hist(100, sum(rng.random() < 0.05 for _ in range(100)), 0.05, 0.2),
                ),
            ]
        )
        if d.phase != "progressing":
            break
    assert d.phase == "rolled_back"
    assert d.events()[-1].message == "worse than stable: latency_vs_stable"
    check = next(c for c in d.events()[-1].checks if c.name == "latency_vs_stable")
    assert check.ci is not None
    assert check.ci[0] > 1


def test_a_rollback_s_interval_never_contains_ratio_one() -> None:
    """The reported bound comes from the one-sided test that decided, at its α: four errors
    in 30 candidate requests against none in 270 roll back, and the ratio is above 1."""
    rollout = spec(
        interval="60s",
        checks=[
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
        ],
    )
    a = Analyzer("shop", rollout, path_class_slots=0)
    a.tick(T0, Observation("1.1"))
    a.tick(
        T0 + 1,
        Observation(
            "1.1",
            [
                Sample("candidate", 30, 5, 0.1, None, ((0.005, 30),)),
                Sample("stable", 270, 0, 0.1, None, ((0.005, 270),)),
            ],
        ),
    )
    assert a.phase == "rolled_back"
    decision = a.history[-1]
    assert decision.message == "worse than stable: error_rate_vs_stable"
    errors = next(c for c in decision.checks if c.name == "error_rate_vs_stable")
    assert errors.value is not None
    assert errors.max is not None
    assert errors.value >= errors.max
    assert errors.ci is not None
    low, high = errors.ci
    assert 1 < low < 30
    assert high == math.inf  # one-sided, as the test is
    assert [c["ci"] for c in a.status()["checks"] if c["name"] == "error_rate_vs_stable"] == [
        [low, math.inf]
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),  # candidate errors in 30 requests
            st.integers(0, 6),  # stable errors in 270 requests
            st.integers(0, 3),  # candidate requests slower than stable's p95
            st.sampled_from([0.05, 0.1, 0.5]),
            st.sampled_from(["/a", "/b", "/c"]),
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([0, 10]),
)
def test_a_failed_comparison_always_reports_a_lower_bound_above_one(
    ticks: list[tuple[int, int, int, float, str]], slots: int
) -> None:
    rollout = spec(
        interval="1h",
        guard=False,
        checks=[
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable", "quantiles": [0.9, 0.95]},
        ],
    )
    a = Analyzer("shop", rollout, path_class_slots=slots)
    a.tick(0.0, Observation(None, [Sample("stable", 3000, 0, None, None, hist(3000, 30))]))
    a.tick(1.0, Observation("v2"))
    for now, (cx, sx, slow, p, path) in enumerate(ticks, start=2):
        a.tick(
            float(now),
            Observation(
                "v2",
                [
                    Sample("candidate", 30, cx, p, path, hist(30, slow)),
                    Sample("stable", 270, sx, p, path, hist(270, 2)),
                ],
            ),
        )
        for c in a.status()["checks"]:
            if c["kind"] == "compare":
                low, high = c["ci"]
                assert high == math.inf
                assert (low > 1) == (c["verdict"] == "fail"), c
        if a.phase == "rolled_back":
            evidence = [c for c in a.history[-1].checks if c.kind == "compare"]
            assert any(c.verdict == "fail" and c.ci and c.ci[0] > 1 for c in evidence)
            break


# --- the guard --------------------------------------------------------------------------------


def test_the_guard_rolls_back_a_crash_at_once() -> None:
    d = started(interval="1h")
    d.tick(traffic(0.1, candidate=(50, 15)))
    assert d.phase == "rolled_back"
    assert d.events()[-1].message.startswith("the guard tripped")


@given(at=st.integers(0, 30), errors_elsewhere=st.booleans())
def test_the_guard_never_trips_on_a_single_error(at: int, errors_elsewhere: bool) -> None:
    d = started(interval="1h")
    for i in range(40):
        d.tick(traffic(0.1, candidate=(1 if i == at else 10, 1 if i == at else 0)))
    assert d.phase == "progressing"


def test_an_incident_pauses_instead_of_blaming_the_candidate() -> None:
    d = started(interval="1h")
    d.tick(traffic(0.1, stable=(90, 30), candidate=(50, 15)))  # both at 30 %
    assert d.phase == "paused"
    assert d.a.paused_reason == "incident"
    assert d.events()[-1].kind == "paused"
    assert d.a.weight == 10  # frozen
    d.run(61, samples=traffic(0.1, candidate=(50, 15)))  # stable recovers, candidate does not
    assert d.phase == "rolled_back"


def test_a_shared_incident_after_a_calm_hour_pauses_and_never_rolls_back() -> None:
    d = started(interval="1h")
    d.run(3600, samples=traffic(0.1, stable=(900, 0), candidate=(100, 0)))  # 1,000 rps
    for _ in range(30):  # a 30 s database blip: both versions at 10 %
        d.tick(traffic(0.1, stable=(900, 90), candidate=(100, 10)))
        assert d.phase != "rolled_back"
    assert (d.phase, d.a.paused_reason) == ("paused", "incident")


# --- manual commands --------------------------------------------------------------------------


def test_pause_freezes_and_resume_continues() -> None:
    d = started()
    d.tick(**cmd("pause", "looking at a graph"))
    assert d.phase == "paused"
    assert d.events()[-1].message == "paused by hand: looking at a graph"
    assert d.events()[-1].source == "manual:cli"
    d.run(100)
    assert (d.phase, d.a.step_index) == ("paused", 0)
    d.tick(**cmd("resume"))
    assert d.phase == "progressing"
    d.until("promoted")


def test_manual_promote_and_rollback() -> None:
    d = started()
    d.tick(**cmd("promote"))
    assert d.phase == "promoted"
    assert d.weights()[-1] == 100
    d.tick(**cmd("rollback", "bad for business"))
    assert d.phase == "rolled_back"
    assert d.weights()[-1] == 0
    d.run(10)
    assert d.phase == "rolled_back"  # the same revision stays rolled back


def test_retry_starts_a_rolled_back_revision_again() -> None:
    d = started()
    d.tick(**cmd("rollback"))
    d.tick(**cmd("retry"))
    assert d.phase == "progressing"
    assert d.a.step_index == 0
    assert d.kinds()[-2:] == ["retried", "step"]
    d.until("promoted")


def test_commands_the_table_does_not_allow_are_refused_and_recorded() -> None:
    d = started()
    assert d.a.accepts("pause")
    assert not d.a.accepts("retry")
    assert not d.a.accepts("resume")
    d.tick(**cmd("retry"))
    assert d.phase == "progressing"
    refused = d.events()[-1]
    assert (refused.kind, refused.message) == ("refused", "retry refused in phase progressing")
    idle = Driver(Analyzer("shop", spec()), candidate=None)
    assert not any(idle.a.accepts(c) for c in ("promote", "rollback", "pause", "resume", "retry"))


# --- revisions --------------------------------------------------------------------------------


def test_a_new_revision_mid_rollout_restarts_from_the_first_step() -> None:
    d = started()
    d.run(11)
    assert d.a.step_index == 1
    d.tick(candidate="v3")
    assert d.phase == "progressing"
    assert (d.a.revision, d.a.step_index, d.a.weight) == ("v3", 0, 10)
    assert d.kinds()[-2:] == ["restarted", "step"]
    d.until("promoted")


def test_a_new_revision_after_the_end_starts_a_new_rollout() -> None:
    d = started()
    d.until("promoted")
    d.tick(candidate="v3")
    assert (d.phase, d.a.revision, d.a.weight) == ("progressing", "v3", 10)


def test_removing_the_candidate_hands_back_to_the_file_and_a_rolled_back_one_stays() -> None:
    d = started()
    d.tick(**cmd("rollback"))
    d.tick(candidate=None)
    assert d.phase == "idle"
    assert d.weights()[-1] is None
    d.tick(candidate="v2")  # the same, rolled-back revision again
    assert d.phase == "rolled_back"
    assert d.weights()[-1] == 0
    d.tick(candidate="v4")
    assert d.phase == "progressing"


def test_max_duration_pauses_and_resume_gives_it_another_period() -> None:
    quiet = [Sample("stable", 100, 0, 0.1)]
    d = started(max_duration="30s")
    d.run(31, samples=quiet)
    d.tick(quiet)
    assert (d.phase, d.a.paused_reason) == ("paused", "max_duration")
    d.tick(quiet, **cmd("resume"))
    d.run(20, samples=quiet)
    assert d.phase == "progressing"
    d.run(20, samples=quiet)
    assert d.phase == "paused"


# --- gates and pause steps --------------------------------------------------------------------


def test_pre_rollout_gate() -> None:
    d = gated("pre-rollout")
    assert d.phase == "waiting"
    assert d.weights() == [0]
    assert CallHook("pre-rollout", 1) in d.actions
    d.run(3)
    d.tick(gates=[GateResult("pre-rollout", 1, True)])
    assert d.phase == "progressing"
    assert d.weights() == [0, 10]


def test_a_failing_gating_hook_counts_as_a_failed_check() -> None:
    d = gated("pre-rollout", failure_limit=1)
    d.tick(gates=[GateResult("pre-rollout", 1, False, "HTTP 500")])
    assert d.a.failures == 1
    assert d.phase == "waiting"
    d.run(10)
    assert d.actions.count(CallHook("pre-rollout", 1)) == 2  # asked again after the interval
    d.tick(gates=[GateResult("pre-rollout", 1, False)])
    assert d.phase == "rolled_back"


def test_step_gate_before_each_weight_increase() -> None:
    d = gated("step")
    d.run(11)
    assert d.phase == "waiting"
    assert CallHook("step", 2) in d.actions
    d.tick(gates=[GateResult("step", 1, True)])  # a stale answer is ignored
    assert d.phase == "waiting"
    d.tick(gates=[GateResult("step", 2, True)])
    assert (d.phase, d.a.weight) == ("progressing", 50)


def test_a_closed_confirm_promotion_gate_is_recorded_once_per_wait() -> None:
    d = gated("confirm-promotion")
    d.until("waiting")
    waited_at = d.now - 1
    before = len(d.events())
    for _ in range(100):
        d.tick(gates=[GateResult("confirm-promotion", hold_step(d.a) + 1, False)])
    closed = d.events()[before:]
    assert Counter(e.kind for e in closed) == Counter({"gate_closed": 1})
    assert d.phase == "waiting"
    gate = d.a.status()["gate"]
    assert gate == {
        "name": "confirm-promotion",
        "step": 3,
        "since": waited_at,
        "attempts": 100,
        "last_at": d.now - 1,
        "last_detail": "",
    }
    # a new answer says something new: recorded once more, and counted on
    d.tick(gates=[GateResult("confirm-promotion", 3, False, "release manager away")])
    d.tick(gates=[GateResult("confirm-promotion", 3, False, "release manager away")])
    assert [e.message for e in d.events()[before:]] == [
        "confirm-promotion: not yet",
        "confirm-promotion: not yet: release manager away (answer 101)",
    ]
    assert d.a.status()["gate"]["attempts"] == 102
    assert len(d.a.history) < 10  # the decisions before the wait are still there
    assert d.a.history[0].kind == "started"
    # the count survives a restart, and the next wait starts afresh
    again = decode("shop", d.a.spec, json.loads(json.dumps(encode(d.a))))
    assert again.status()["gate"] == d.a.status()["gate"]
    d.tick(**cmd("pause"))
    d.tick(**cmd("resume"))
    assert d.a.status()["gate"]["attempts"] == 0
    d.tick(gates=[GateResult("confirm-promotion", 3, False)])
    assert d.kinds()[-1] == "gate_closed"


def test_confirm_promotion_waits_and_checks_keep_running() -> None:
    d = gated("confirm-promotion")
    d.until("waiting")
    assert CallHook("confirm-promotion", 3) in d.actions
    d.tick(gates=[GateResult("confirm-promotion", 3, False)])
    assert d.phase == "waiting"
    assert d.a.failures == 0  # "not yet" is not a failure
    d.tick(traffic(0.5, candidate=(50, 15)))  # a crash while waiting still rolls back
    assert d.phase == "rolled_back"
    ok = gated("confirm-promotion")
    ok.until("waiting")
    ok.tick(gates=[GateResult("confirm-promotion", 3, True)])
    assert ok.phase == "promoted"


def test_manual_pause_step_and_timed_pause_step() -> None:
    d = started(steps=[10, {"pause": True}, 50])
    d.run(11)
    assert (d.phase, d.a.weight) == ("waiting", 10)
    d.run(100)
    assert d.phase == "waiting"
    d.tick(**cmd("resume"))
    assert (d.phase, d.a.weight) == ("progressing", 50)
    timed = started(steps=[10, {"pause": "30s"}, 50])
    timed.run(11)
    assert timed.phase == "waiting"
    timed.run(30)
    assert (timed.phase, timed.a.weight) == ("progressing", 50)


def test_pausing_while_waiting_returns_to_the_gate() -> None:
    d = gated("step")
    d.run(11)
    d.tick(**cmd("pause"))
    assert d.phase == "paused"
    d.tick(**cmd("resume"))
    assert d.phase == "waiting"
    assert d.actions.count(CallHook("step", 2)) == 2


# --- durable state ----------------------------------------------------------------------------


def test_status_gives_the_step_s_needs_and_progress() -> None:
    d = started(steps=[10, {"weight": 50, "interval": "30s", "min_requests": 20}, {"pause": True}])
    d.run(3)
    status = d.a.status()
    assert (status["step"], status["interval"], status["min_requests"]) == (1, 10.0, 20)
    assert status["window"] == {"start": 0.0, "elapsed": 3.0, "requests": 30}
    d.run(9)
    status = d.a.status()
    assert (status["step"], status["interval"], status["min_requests"]) == (2, 30.0, 20)
    assert status["window"] == {"start": 10.0, "elapsed": 2.0, "requests": 20}
    d.run(40)
    status = d.a.status()
    assert (status["step"], status["phase"]) == (3, "waiting")
    assert (status["interval"], status["min_requests"]) == (None, None)  # a pause step
    done = started(interval="1s", min_requests=1)
    done.until("promoted")
    status = done.a.status()
    assert (status["interval"], status["min_requests"], status["window"]["elapsed"]) == (
        None,
        None,
        None,
    )


def test_check_results_carry_their_metric_and_unit() -> None:
    d = started(
        checks=[
            {"metric": "latency_p99", "max": "500ms", "name": "checkout-p99"},
            {"metric": "error_rate", "max": "2%"},
            {"metric": "request_rate", "min": 1},
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
            {"prometheus": "http://prom:9090", "query": "up", "min": 1},
        ]
    )
    d.run(2)
    got = {c["name"]: (c["metric"], c["unit"]) for c in d.a.status()["checks"]}
    assert got == {
        "checkout-p99": ("latency_p99", "seconds"),
        "error_rate": ("error_rate", "fraction"),
        "request_rate": ("request_rate", "per_second"),
        "error_rate_vs_stable": ("error_rate", "e_value"),
        "latency_vs_stable": ("latency", "e_value"),
        "prometheus": (None, None),
        "guard": ("error_rate", "e_value"),
    }
    saved = json.loads(json.dumps(encode(d.a)))
    assert decode("shop", d.a.spec, saved).checks == d.a.checks


def test_status_shows_the_rollout() -> None:
    d = started(checks=[{"metric": "error_rate", "compare": "stable"}])
    d.run(3)
    status = d.a.status()
    assert status["phase"] == "progressing"
    assert (status["step"], status["steps"], status["weights"]) == (1, 2, [10, 50])
    assert status["alpha"] == pytest.approx(
        {"total": 0.01, "error": 0.009, "latency": 0.0, "guard": 0.001}
    )
    names = [c["name"] for c in status["checks"]]
    assert names == ["error_rate_vs_stable", "guard"]
    json.dumps(status)


def test_hist_quantile() -> None:
    assert hist_quantile({}, 0.5) is None
    h = {0.1: 50, 0.2: 45, 0.4: 5}
    assert hist_quantile(h, 0.5) == 0.1
    assert hist_quantile(h, 0.95) == 0.2
    assert hist_quantile(h, 0.99) == 0.4


# --- properties -------------------------------------------------------------------------------

ticks = st.lists(
    st.tuples(
        st.sampled_from(["v2", "v2", "v2", "v3", None]),
        st.sampled_from(["ok", "ok", "errors", "crash", "quiet", "incident"]),
        st.sampled_from([None, "promote", "rollback", "pause", "resume", "retry"]),
        st.sampled_from([None, True, False]),
        st.sampled_from([None, None, "ready", "starting", "unavailable"]),
    ),
    max_size=60,
)
HEALTH = {
    "ready": lambda now: CandidateHealth(ready=True, healthy=True, unhealthy_since=None),
    "starting": lambda now: CandidateHealth(ready=False, healthy=False, unhealthy_since=None),
    "unavailable": lambda now: CandidateHealth(ready=True, healthy=False, unhealthy_since=now - 3),
}
TRAFFIC = {
    "ok": (90, 0, 10, 0),
    "errors": (90, 0, 10, 1),
    "crash": (90, 0, 50, 20),
    "quiet": (90, 0, 0, 0),
    "incident": (90, 40, 50, 20),
}


Script = tuple[str | None, str, str | None, bool | None, str | None]


def scripted(a: Analyzer, step: Script, now: float = 0.0) -> Observation:
    """One scripted tick's observation: a candidate, a traffic kind, a command, an answer to
    the gate the analyzer holds for (if any) and the candidate's health (None: unknown; a
    candidate unavailable became so three seconds ago)."""
    candidate, kind, command, gate, health = step
    sn, sx, cn, cx = TRAFFIC[kind]
    p = (a.weight or 0) / 100
    hold = a.hold
    return Observation(
        candidate,
        [Sample("stable", sn, sx, p, "/"), Sample("candidate", cn, cx, p, "/")],
        commands=[ManualCommand(command)] if command else [],  # type: ignore[arg-type]
        gates=[GateResult(hold.what, hold.step + 1, gate)]
        if gate is not None and hold is not None and hold.what in GATES
        else [],
        health=None if health is None else HEALTH[health](now),
    )


@settings(max_examples=150, deadline=None)
@given(ticks, st.sampled_from([(), ("pre-rollout",), ("step", "confirm-promotion")]))
def test_phases_only_move_along_the_table(script: list[Script], gates: tuple[Gate, ...]) -> None:
    a = Analyzer(
        "shop",
        spec(
            steps=[10, {"pause": "3s"}, 50],
            interval=2,
            min_requests=5,
            failure_limit=1,
            progress_deadline="5s",
            unhealthy_timeout="2s",
        ),
        gates=gates,
    )
    for now, step in enumerate(script):
        before = a.phase
        candidate = step[0]
        actions = a.tick(float(now), scripted(a, step, float(now)))
        phase = before
        for action in actions:
            if isinstance(action, Emit):
                e = action.event
                assert e.previous == phase
                if e.trigger is None:  # not a move: a failed window, a closed gate, a refusal
                    assert e.phase == e.previous
                else:  # the very row of the table that fired
                    assert TRANSITIONS[e.previous][e.trigger] == e.phase
                phase = e.phase
        assert phase == a.phase
        # the hold is a value of the waiting (or paused-while-waiting) phase, and only of it
        if a.phase == "waiting":
            assert a.hold is not None
        elif a.phase != "paused":
            assert a.hold is None
        if a.phase == "idle":
            assert a.weight is None
        if a.phase == "promoted":
            assert a.weight == 100
        if a.phase == "rolled_back":
            assert a.weight == 0
        if a.phase in ACTIVE:
            assert a.revision == candidate
        if a.hold is not None and a.hold.what == "readiness":  # no user traffic meanwhile
            assert (a.weight, a.step_index) == (0, -1)
        if a.phase in ACTIVE and not a.readiness.ready:
            assert a.readiness.spent <= 5
        saved = json.loads(json.dumps(encode(a)))
        assert encode(decode("shop", a.spec, saved, gates=gates)) == saved


@settings(max_examples=150, deadline=None)
@given(ticks)
def test_a_hold_is_held_only_while_waiting_or_paused(script: list[Script]) -> None:
    steps: list[Any] = [{"pause": "2s"}, 10, {"pause": True}, 50]
    a = Analyzer(
        "shop",
        spec(steps=steps, interval=2, min_requests=5, failure_limit=1, progress_deadline="5s"),
        gates=("pre-rollout", "step", "confirm-promotion"),
    )
    for now, step in enumerate(script):
        actions = a.tick(float(now), scripted(a, step, float(now)))
        hold = a.hold
        if a.phase == "waiting":
            assert hold is not None
            assert a.status()["waiting_for"] == hold.what
        elif a.phase != "paused":  # paused while waiting keeps its hold for the resume
            assert hold is None
        moves = [x.event.trigger for x in actions if isinstance(x, Emit) and x.event.trigger]
        if moves and moves[-1] == "wait":  # a wait begun on this tick is a fresh hold
            assert hold is not None
            assert hold.since == now
            assert hold.asked_at == now


def test_an_aa_rollout_with_real_noise_is_promoted() -> None:
    rng = random.Random(12)
    d = Driver(
        Analyzer(
            "shop",
            spec(
                steps=[5, 10, 20, 50],
                interval="60s",
                min_requests=250,
                checks=[
                    {"metric": "error_rate", "compare": "stable"},
                    {"metric": "latency", "compare": "stable"},
                ],
            ),
        )
    )
    d.tick([Sample("stable", 0, 0, None, None, hist(5000, 50, 0.05, 0.2))], candidate=None)
    while d.phase not in ("promoted", "rolled_back") and d.now < 1000:
        p = d.weight / 100
        n_c = sum(rng.random() < p for _ in range(1000))
        n_s = 1000 - n_c
        samples = []
        for version, n in (("stable", n_s), ("candidate", n_c)):
            x = sum(rng.random() < 0.005 for _ in range(n))
            slow = sum(rng.random() < 0.01 for _ in range(n))
            samples.append(Sample(version, n, x, p, "/", hist(n, slow, 0.05, 0.2)))  # type: ignore[arg-type]
        d.tick(samples)
    assert d.phase == "promoted"
    assert 240 <= d.now <= 245
    assert math.isfinite(d.a.active_time)


def test_pooled_samples_without_path_classes() -> None:
    """Samples without a path class, with an analyzer built with no class slots: the error
    family is the pooled test alone."""
    samples = [
        Sample("stable", 900, 0, 0.1, None, ((0.05, 900),)),
        Sample("candidate", 100, 10, 0.1, None, ((0.05, 100),)),
        Sample("stable", 900, 0, 0.1, None, ((0.05, 900),)),
        Sample("candidate", 100, 10, 0.1, None, ((0.05, 100),)),
    ]
    a = Analyzer(
        "shop", spec(checks=[{"metric": "error_rate", "compare": "stable"}]), path_class_slots=0
    )
    a.tick(0.0, Observation("v2"))
    a.tick(2.0, Observation("v2", samples))
    assert a.evidence.errors_test is not None
    assert a.evidence.errors_test.classes == {}
    assert a.evidence.errors_test.pooled.counts() == {0.1: (20, 0)}
    assert a.evidence.errors_test.log_e == a.evidence.errors_test.pooled.log_e
    assert a.evidence.window.requests == 200
