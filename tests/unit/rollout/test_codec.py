"""An analyzer's state as plain data and back: `splitproxy.rollout.codec`."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import GateResult, Observation, Sample, SetWeight
from tests.unit.rollout.drive import Driver, cmd, gated, hist, spec, started, traffic


def test_state_round_trips_through_json_and_continues_identically() -> None:
    rollout = spec(
        checks=[
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency", "compare": "stable"},
            {"metric": "error_rate", "max": 0.2},
        ]
    )
    rng = random.Random(3)

    def samples() -> list[Sample]:
        x = sum(rng.random() < 0.01 for _ in range(100))
        return traffic(0.1, stable=(900, 2), candidate=(100, x), stable_slow=9, candidate_slow=1)

    one = Driver(Analyzer("shop", rollout))
    one.tick([Sample("stable", 0, 0, None, None, hist(3000, 30))], candidate=None)
    for _ in range(7):
        one.tick(samples())
    saved = json.loads(json.dumps(encode(one.a)))
    two = Driver(decode("shop", rollout, saved))
    two.now, two.weight = one.now, one.weight
    assert encode(two.a) == saved
    for _ in range(20):
        batch = samples()
        assert one.tick(batch) == two.tick(batch)
    assert encode(one.a) == encode(two.a)


def test_a_changed_spec_restarts_a_running_rollout() -> None:
    d = started()
    d.run(11)
    saved = encode(d.a)
    again = Driver(decode("shop", spec(steps=[5, 20, 60]), saved))
    again.now = d.now
    again.tick()
    assert (again.phase, again.a.step_index, again.a.weight) == ("progressing", 0, 5)
    assert again.events()[0].message == "the rollout spec changed"
    same = decode("shop", spec(), saved)
    same.reconfigure(spec())
    assert same.step_index == 1
    same.reconfigure(spec(interval="1m"))
    actions = same.tick(d.now, Observation("v2"))
    assert SetWeight(10) in actions


def test_a_state_saved_before_gate_counts_and_check_metrics_still_loads() -> None:
    """``data/analyzer_state_v1.json`` was written by the analyzer before it counted a gate's
    answers and gave checks their metric: waiting at confirm-promotion, one answer in."""
    saved = json.loads((Path(__file__).parent / "data" / "analyzer_state_v1.json").read_text())
    assert "gate" not in saved
    assert all("metric" not in c for c in saved["checks"])
    rollout = spec(
        checks=[
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency_p99", "max": "500ms", "name": "p99"},
        ]
    )
    a = decode("shop", rollout, saved, gates=["confirm-promotion"], path_class_slots=0)
    assert a.hold is not None
    assert (a.phase, a.hold.what, a.weight) == ("waiting", "confirm-promotion", 50)
    assert a.history[-1].kind == "gate_closed"
    status = a.status()
    assert status["gate"]["attempts"] == 0
    assert status["gate"]["since"] == saved["hook_called_at"]
    assert {c["name"]: c["metric"] for c in status["checks"]}["p99"] is None  # as saved
    now = saved["last_now"] + 1
    samples = traffic(0.5, candidate=(50, 0), stable=(50, 0))
    a.tick(now, Observation("v2", samples, gates=[GateResult("confirm-promotion", 3, False)]))
    assert a.status()["gate"]["attempts"] == 1
    assert {c["name"]: c["metric"] for c in a.status()["checks"]}["p99"] == "latency_p99"
    a.tick(now + 1, Observation("v2", samples, gates=[GateResult("confirm-promotion", 3, True)]))
    assert a.phase == "promoted"


def test_events_record_their_trigger_and_keep_it_through_the_codec() -> None:
    d = started()
    d.until("promoted")
    moves = [(e.kind, e.trigger) for e in d.events()]
    assert moves[:2] == [("started", "start"), ("step", "advance")]
    assert moves[-1] == ("promoted", "promote")
    saved = json.loads(json.dumps(encode(d.a)))
    assert saved["history"][-1]["trigger"] == "promote"
    assert [e.trigger for e in decode("shop", d.a.spec, saved).history] == [
        e.trigger for e in d.a.history
    ]


def test_an_old_document_without_triggers_loads_and_saves_in_the_same_shape() -> None:
    saved = json.loads((Path(__file__).parent / "data" / "analyzer_state_v1.json").read_text())
    assert all("trigger" not in e for e in saved["history"])
    rollout = spec(
        checks=[
            {"metric": "error_rate", "compare": "stable"},
            {"metric": "latency_p99", "max": "500ms", "name": "p99"},
        ]
    )
    a = decode("shop", rollout, saved, gates=["confirm-promotion"], path_class_slots=0)
    assert [e.trigger for e in a.history] == [None] * len(saved["history"])
    assert [e.kind for e in a.history] == [e["kind"] for e in saved["history"]]
    again = encode(a)
    # the same document, the gate's answers and the candidate's readiness added
    assert set(again) == set(saved) | {
        "gate",
        "readiness",
        "test_attempt",
        "test_passed",
        "baseline",
        "shadow",
    }
    assert again["readiness"] == {
        "ready_at": saved["started_at"],  # taken as ready since it started, as it was then
        "spent": 0.0,
        "unhealthy_since": None,
        "strikes": 0,
    }
    assert again["history"][0] == {**saved["history"][0], "trigger": None}
    for key in ("errors_test", "latency_tests", "guard", "trail", "recent"):
        assert again[key] == saved[key]
    # the window gained the mirrored copies' counts (none in a state saved before them)
    assert again["window"] == {**saved["window"], "mirrored": 0, "diverged": 0}
    assert again["shadow"]["passed"] is False


def test_a_hold_is_saved_with_its_answers_and_a_paused_wait_resumes_waiting() -> None:
    d = gated("step")
    d.until("waiting")
    d.tick(gates=[GateResult("step", 2, False, "not yet")])
    d.tick(**cmd("pause"))
    assert d.a.phase == "paused"
    hold = d.a.hold
    assert hold is not None
    assert (hold.what, hold.step, hold.attempts) == ("step", 1, 1)
    saved = json.loads(json.dumps(encode(d.a)))
    assert (saved["pending"], saved["pending_step"], saved["gate"]["attempts"]) == ("step", 1, 1)
    again = Driver(decode("shop", d.a.spec, saved, gates=["step"]))
    again.now, again.weight = d.now, d.weight
    assert again.a.hold == hold
    again.tick(**cmd("resume"))
    assert again.kinds()[-2:] == ["resumed", "waiting"]
    assert again.a.hold is not None
    assert again.a.hold.attempts == 0  # a new wait


def test_no_hold_outside_waiting_or_paused_even_from_a_stale_document() -> None:
    d = started()
    d.until("promoted")
    saved = json.loads(json.dumps(encode(d.a)))
    assert (saved["pending"], saved["pending_until"]) == (None, math.inf)
    saved["pending"] = "pause"  # what an earlier version could leave behind
    assert decode("shop", d.a.spec, saved).hold is None
    broken = {**saved, "phase": "waiting", "pending": None}
    # the controller keeps such a file aside and starts afresh
    with pytest.raises(AssertionError, match="waiting for nothing"):
        decode("shop", d.a.spec, broken)


def test_a_fresh_analyzer_round_trips() -> None:
    a = Analyzer("shop", spec())
    saved = json.loads(json.dumps(encode(a)))
    assert saved["gate"] == {"since": None, "attempts": 0, "last_at": None, "last_detail": None}
    again = decode("shop", spec(), saved)
    assert encode(again) == saved
    assert (again.phase, again.hold) == ("idle", None)
