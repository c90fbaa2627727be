"""Saved state is checked before it is trusted: every state the analyzer writes passes, and
the lies a damaged or edited file could tell are refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Rollout
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import GateResult, ManualCommand, TestOutcome
from splitproxy.rollout.validation import InvalidState, check_analyzer, check_document
from tests.unit.rollout.drive import Driver, spec, traffic

SPEC = spec(steps=[10, {"pause": "5s"}, 30, 60], checks=[{"metric": "error_rate", "max": 0.05}])
BLUEGREEN = Rollout.model_validate(
    {
        "strategy": "bluegreen",
        "iterations": 2,
        "interval": "5s",
        "min_requests": 5,
        "bake": "20s",
        "auto_promote": False,
        "test": {"command": ["./smoke"]},
        "checks": [{"metric": "error_rate", "compare": "stable", "traffic": "all"}],
    }
)
GATES = ("pre-rollout", "step", "confirm-promotion")

Move = tuple[str, int]
moves = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("good", "bad", "quiet", "gate_ok", "gate_no", "new_revision", "no_candidate"),
                *("promote", "rollback", "pause", "resume", "retry"),
            ]
        ),
        st.integers(1, 15),
    ),
    max_size=25,
)


def saved(a: Analyzer) -> dict[str, Any]:
    return dict(json.loads(json.dumps(encode(a))))


@settings(max_examples=60, deadline=None)
@given(
    moves=moves,
    gates=st.lists(st.sampled_from(GATES), unique=True),
    strategy=st.sampled_from(["canary", "bluegreen"]),
)
def test_every_state_the_analyzer_writes_is_one_it_accepts(
    moves: list[Move], gates: list[str], strategy: str
) -> None:
    rollout = SPEC if strategy == "canary" else BLUEGREEN
    if strategy == "bluegreen":
        gates = [g for g in gates if g != "step"]
    d = Driver(Analyzer("shop", rollout, gates=gates))  # type: ignore[arg-type]
    revision = 2
    for what, seconds in moves:
        for _ in range(seconds):
            kw: dict[str, Any] = {}
            if what in ("promote", "rollback", "pause", "resume", "retry"):
                kw["commands"] = [ManualCommand(what, "cli", "")]  # type: ignore[arg-type]
            elif what.startswith("gate") and d.a.hold is not None and d.a.hold.what in GATES:
                hold = d.a.hold
                kw["gates"] = [GateResult(hold.what, hold.step + 1, what == "gate_ok")]  # type: ignore[arg-type]
            elif what.startswith("gate") and d.a.test_attempt:
                kw["tests"] = [TestOutcome(d.a.test_attempt, what == "gate_ok", "exit")]
            elif what == "new_revision":
                revision += 1
                d.candidate = f"v{revision}"
            elif what == "no_candidate":
                d.candidate = None
            p = d.weight / 100
            if what == "bad":
                samples = traffic(p, candidate=(10, 5))
            elif what == "quiet":
                samples = []
            else:
                samples = traffic(p)
            d.tick(samples, **kw)
            data = saved(d.a)
            check_analyzer(data, "shop", rollout, d.a.spec_hash)
            decode("shop", rollout, data, gates=gates)  # type: ignore[arg-type]
            if what in ("new_revision", "no_candidate"):
                d.candidate = f"v{revision}"


def progressing() -> dict[str, Any]:
    d = Driver(Analyzer("shop", SPEC))
    d.run(3)
    assert d.phase == "progressing"
    return saved(d.a)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"weight": -1}, "analyzer.weight: -1 is outside 0..100"),
        ({"weight": float("nan")}, "analyzer.weight: nan is outside 0..100"),
        ({"weight": True}, "analyzer.weight: True is not a number"),
        ({"weight": None}, "analyzer.weight: none in phase progressing"),
        ({"phase": "promoted"}, "analyzer.weight: 10% in phase promoted"),
        ({"phase": "idle"}, "analyzer.weight: 10% in phase idle"),
        ({"phase": "waiting"}, "analyzer.pending: a waiting rollout waits for nothing"),
        ({"step_index": 2}, "analyzer.weight: 10% in phase progressing, step 3"),
        ({"last_now": float("inf")}, "analyzer.last_now: inf is not finite"),
        ({"active_time": -5.0}, "analyzer.active_time: -5 is negative"),
        ({"finished": {"v1": "winning"}}, "analyzer.finished['v1']: 'winning'"),
        ({"finished": ["v1"]}, "analyzer.finished: not an object"),
        ({"history": {}}, "analyzer.history: not a list"),
        ({"version": 7}, "analyzer.version: 7 is not 1"),
        ({"route": "other"}, "analyzer.route: 'other' is not 'shop'"),
        ({"readiness": {"ready_at": "soon"}}, "analyzer.readiness:"),
    ],
)
def test_lies_are_refused_with_the_field_named(change: dict[str, Any], reason: str) -> None:
    data = progressing()
    data.update(change)
    with pytest.raises(InvalidState) as caught:
        check_analyzer(data, "shop", SPEC, Analyzer("shop", SPEC).spec_hash)
    assert str(caught.value).startswith(reason)


def test_a_waiting_rollout_may_hold_any_weight_it_reached_but_no_other() -> None:
    d = Driver(Analyzer("shop", SPEC))
    d.until("waiting")  # the pause step after 10 %
    data = saved(d.a)
    digest = d.a.spec_hash
    check_analyzer(data, "shop", SPEC, digest)
    check_analyzer({**data, "weight": 0.0}, "shop", SPEC, digest)
    with pytest.raises(InvalidState, match="no step so far has it"):
        check_analyzer({**data, "weight": 60.0}, "shop", SPEC, digest)


def test_a_state_under_another_spec_is_not_held_to_its_steps() -> None:
    """A changed spec restarts the rollout on the first tick: its old step is no lie."""
    data = {**progressing(), "step_index": 7}
    check_analyzer(data, "shop", SPEC, "another-digest")
    with pytest.raises(InvalidState, match=r"step_index: 7 is outside -1\.\.4"):
        check_analyzer(data, "shop", SPEC, Analyzer("shop", SPEC).spec_hash)


def test_the_envelope_is_checked_first(tmp_path: Path) -> None:
    good = {"format": 1, "route": "shop", "analyzer": progressing(), "ledger": []}
    assert check_document(good, "shop") is good["analyzer"]
    for doc, reason in [
        ({**good, "format": "1"}, "format: '1' is not 1"),
        ({**good, "route": "cart"}, "route: 'cart' is not 'shop'"),
        ({**good, "ledger": {}}, "ledger: not a list"),
        ({**good, "analyzer": []}, "analyzer: missing or not an object"),
    ]:
        with pytest.raises(InvalidState) as caught:
            check_document(doc, "shop")
        assert str(caught.value).startswith(reason)
