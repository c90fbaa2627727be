"""A blue/green rollout in the terminal: the stage, the plan around the switch, the bake's time
left and the test job's last result, in the status table, the ``--watch`` panel and a log."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from splitproxy import console as con
from splitproxy.config import Rollout
from splitproxy.console.bluegreen import bake_left, job_text, plan_line, stage_text
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.controller import finite
from splitproxy.rollout.messages import Observation, RunTest, Sample, TestOutcome
from splitproxy.views import RolloutView
from tests.unit.test_console import T0, render, route

JOB_FAILED = {
    "attempt": 2,
    "running": False,
    "started_at": T0 - 5,
    "last": {
        "attempt": 2,
        "passed": False,
        "exit_code": 3,
        "timed_out": False,
        "duration": 1.2,
        "tail": "GET /checkout ok\nGET /cart: expected 200, got 500\n",
    },
}


def bg_rollout(stage: str = "testing", **kw: Any) -> RolloutView:
    """A blue/green rollout of two iterations and a 30 s bake; ``kw`` overrides the rollout's
    keys, ``bluegreen`` is merged into its blue/green part."""
    bluegreen: dict[str, Any] = {
        "stage": stage,
        "iterations": 2,
        "iteration": 1,
        "bake": 30.0,
        "auto_promote": True,
        "test": {"attempts": 1, "passed": False},
        "baseline": None,
        "job": {"attempt": 1, "running": True, "started_at": T0, "last": None},
        **kw.pop("bluegreen", {}),
    }
    base: dict[str, Any] = {
        "route": "shop",
        "strategy": "bluegreen",
        "phase": "progressing",
        "revision": "1.1",
        "step": 1,
        "steps": 3,
        "weights": [0.0, 0.0, 100.0],
        "weight": 0.0,
        "failures": 0,
        "failure_limit": 1,
        "paused_reason": None,
        "waiting_for": None,
        "interval": 5.0,
        "min_requests": 20,
        "window": {"start": T0, "requests": 8},
        "checks": [],
        "history": [],
        "bluegreen": bluegreen,
    }
    return cast(RolloutView, {**base, **kw})


def test_testing_says_the_iteration_and_that_users_stay_on_stable() -> None:
    r = bg_rollout(step=2, bluegreen={"iteration": 2})
    assert stage_text(r, T0 + 1) == "testing, iteration 2 of 2 (users on stable)"
    assert plan_line(r).plain == ("iteration 1 ✓ → iteration 2 ● → switch → bake 30s → promote")
    text = render(con.rollout_panel(route(rollout=r), T0 + 2.0))
    assert "shop 1.1: progressing, blue/green: testing, iteration 2 of 2" in text
    assert "iteration 2 of 2" in text
    assert "2.0/5s, 8/20 test requests" in text  # test traffic, not candidate weight
    assert "test job: attempt 1 running" in text


def test_the_switch_says_what_it_waits_for() -> None:
    test = bg_rollout(phase="waiting", waiting_for="test", step=2)
    assert stage_text(test, T0) == "waiting for the test job to pass (users on stable)"
    manual = bg_rollout(phase="waiting", waiting_for="switch", step=2)
    assert stage_text(manual, T0) == (
        "waiting for `splitproxy promote` to switch (users on stable)"
    )
    gate = bg_rollout(phase="waiting", waiting_for="confirm-promotion", step=2)
    assert "confirm-promotion gate" in stage_text(gate, T0)
    headline = con.rollout_headline(route(rollout=manual), T0).plain
    assert headline == (
        "shop 1.1: waiting, blue/green: waiting for `splitproxy promote` to switch "
        "(users on stable)"
    )
    # the status table's cell: phase, stage, and the test job
    failed = {"job": JOB_FAILED, "test": {"attempts": 2, "passed": False}}
    cell = con.rollout_cell(bg_rollout(phase="waiting", waiting_for="test", bluegreen=failed))
    assert cell.splitlines() == [
        "waiting (blue/green)",
        "waiting for the test job to pass (users on stable)",
        "test job: last (attempt 2): failed, exit 3: GET /cart: expected 200, got 500",
    ]


def test_the_bake_shows_the_time_left_and_the_switch_passed() -> None:
    r = bg_rollout(
        "baking",
        step=3,
        weight=100.0,
        interval=30.0,
        min_requests=0,
        window={"start": T0, "requests": 400},
        bluegreen={"iteration": 2, "test": {"attempts": 1, "passed": True}, "job": None},
    )
    assert bake_left(r, T0 + 12.4) == pytest.approx(17.6, abs=1e-6)
    assert stage_text(r, T0 + 12.4) == "baking, 18s of 30s left (all traffic on the candidate)"
    assert plan_line(r).plain == ("iteration 1 ✓ → iteration 2 ✓ → switch ✓ → bake 30s ● → promote")
    text = render(con.rollout_panel(route(rollout=r), T0 + 12.4))
    assert "bake" in text
    assert "12.4/30s" in text
    assert "test requests" not in text  # the bake is timed, with live traffic
    assert "test job: passed" in text
    line = con.progress_line(route(rollout=r), T0 + 12.4, T0).plain
    assert "bake at 100%: 12.4/30s" in line


def test_the_end_says_promoted_or_reverted_and_why_the_job_failed() -> None:
    promoted = bg_rollout("promoted", phase="promoted", step=3, weight=100.0)
    assert plan_line(promoted).plain.endswith("switch ✓ → bake 30s ✓ → promoted ✓")
    assert "promoted: the bake passed" in con.rollout_cell(promoted)
    reverted = bg_rollout("reverted", phase="rolled_back", step=3, weight=0.0)
    assert plan_line(reverted).plain.endswith("switch ✓ → bake 30s ✗ → reverted")
    assert stage_text(reverted, T0) == "reverted in the bake: all traffic back on stable"
    early = bg_rollout("rolled_back", phase="rolled_back", step=1, bluegreen={"job": JOB_FAILED})
    assert plan_line(early).plain == (
        "iteration 1 ✗ → iteration 2 → switch → bake 30s → rolled back"
    )
    assert stage_text(early, T0) == "rolled back before the switch: users never left stable"
    assert job_text(early) == (
        "test job: last (attempt 2): failed, exit 3: GET /cart: expected 200, got 500"
    )
    last: dict[str, Any] = {**JOB_FAILED["last"], "exit_code": None}  # type: ignore[dict-item]
    last.update(timed_out=True, duration=60.2, tail="")
    timed_out = {**JOB_FAILED, "last": last}
    assert job_text(bg_rollout(bluegreen={"job": timed_out})) == (
        "test job: last (attempt 2): failed, timed out after 60s"
    )
    text = render(con.rollout_panel(route(rollout=early), T0))
    assert "shop 1.1: rolled back, blue/green: rolled back before the switch" in text


def test_a_canary_reads_as_before() -> None:
    canary = route()
    assert "blue/green" not in con.rollout_headline(canary, T0).plain
    assert job_text(canary["rollout"]) == ""  # type: ignore[arg-type]
    assert stage_text(canary["rollout"], T0) == ""  # type: ignore[arg-type]


def test_renders_a_real_blue_green_analyzer_s_status() -> None:
    spec = Rollout.model_validate(
        {
            "strategy": "bluegreen",
            "iterations": 1,
            "interval": "1s",
            "min_requests": 5,
            "bake": "10s",
            "checks": [{"metric": "error_rate", "max": "5%"}],
            "test": {"command": ["./smoke"]},
        }
    )
    analyzer = Analyzer("shop", spec, path_class_slots=0)
    actions = analyzer.tick(T0, Observation("1.1"))
    test_traffic = [
        Sample("stable", 90, 0, 0.0, None, ((0.005, 90),)),
        Sample("candidate", 10, 0, None, None, ((0.005, 10),)),
    ]
    actions += analyzer.tick(T0 + 1, Observation("1.1", test_traffic))
    assert [a.attempt for a in actions if isinstance(a, RunTest)] == [1]

    def view() -> RolloutView:
        state = json.loads(json.dumps(finite(analyzer.status())))  # as the API sends it
        return cast(RolloutView, {**state, "history": []})

    analyzer.tick(T0 + 2, Observation("1.1", test_traffic))
    waiting = view()
    assert waiting["phase"] == "waiting"
    assert stage_text(waiting, T0 + 2) == "waiting for the test job to pass (users on stable)"
    analyzer.tick(T0 + 3, Observation("1.1", test_traffic, tests=[TestOutcome(1, True, "ok")]))
    analyzer.tick(T0 + 4, Observation("1.1", test_traffic))
    baking = view()
    assert baking["weight"] == 100
    text = render(con.rollout_panel(route(rollout=baking), T0 + 7))
    assert "blue/green: baking" in text
    assert "iteration 1 ✓ → switch ✓ → bake 10s ● → promote" in text
