"""The A/B strategy ticked by hand: counts in, an anytime-valid winner promoted, a loser and
"no difference" rolled back, a broken split paused, the guard still at work, and the
counts surviving a save and a restore."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from splitproxy.config import Rollout
from splitproxy.dataplane.abgoals import AbCounts
from splitproxy.rollout import ab
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.messages import CallHook, GateResult, Sample
from splitproxy.rollout.validation import InvalidState, check_analyzer
from tests.unit.rollout.drive import Driver, cmd, hist

BASE: dict[str, Any] = {
    "strategy": "ab",
    "interval": "10s",
    "min_requests": 20,
    "ab": {
        "split": 50,
        "goals": [
            {"name": "signup", "method": "POST", "path_prefix": "/signup"},
            {"name": "buy", "header": "X-Goal", "value_header": "X-Goal-Value"},
        ],
        "min_duration": "60s",
        "max_duration": "300s",
    },
}


def ab_spec(**kw: Any) -> Rollout:
    section = {**BASE["ab"], **kw.pop("ab", {})}
    return Rollout.model_validate({**BASE, **kw, "ab": section})


def counts(
    stable: tuple[int, int] = (50, 5),
    candidate: tuple[int, int] = (50, 5),
    buy: tuple[int, int] = (1, 1),
) -> AbCounts:
    """One tick of an A/B test: per variant the users newly exposed and converted (signup),
    and one purchase each worth 10."""
    return AbCounts(
        users=(stable[0], candidate[0]),
        converted=((stable[1], candidate[1]), buy),
        values=((0.0, 0.0), (10.0 * buy[0], 10.0 * buy[1])),
    )


def requests(errors: int = 0) -> list[Sample]:
    return [
        Sample("stable", 100, 0, 0.5, "/", hist(100)),
        Sample("candidate", 100, errors, 0.5, "/", hist(100)),
    ]


class AB(Driver):
    """Ticks once a second with requests at the split and the given A/B counts."""

    def __init__(self, spec: Rollout | None = None, gates: tuple[Any, ...] = (), **kw: Any):
        super().__init__(Analyzer("shop", spec or ab_spec(), gates=gates))
        self.counts = counts(**kw)
        self.errors = 0

    def tick(self, samples: Any = None, **kw: Any) -> Any:
        kw.setdefault("ab", self.counts)
        return super().tick(requests(self.errors) if samples is None else samples, **kw)


def last(d: Driver, kind: str) -> Any:
    return [e for e in d.events() if e.kind == kind][-1]


def test_a_candidate_that_converts_better_is_promoted_after_min_duration() -> None:
    d = AB(candidate=(50, 8))
    d.tick()
    assert d.phase == "progressing"
    assert d.weight == 50
    at = d.until("promoted")
    assert at >= 60  # the winner waits for min_duration
    assert d.weight == 100
    event = last(d, "promoted")
    assert "winner is the candidate" in event.message
    assert "lift +60" in event.message
    result = event.ab
    assert result["winner"] == "candidate"
    assert result["outcome"] == "candidate_wins"
    assert result["lift"] == pytest.approx(0.6)
    low, high = result["lift_interval"]
    assert 0 < low < 0.6 < high
    signup, buy = result["goals"]
    assert signup["name"] == "signup"
    assert signup["primary"]
    assert not buy["primary"]
    # the start tick's counts are not evidence: they were routed before the split applied
    ticks = int(at)
    assert signup["candidate"]["users"] == 50 * ticks
    assert signup["candidate"]["converted"] == 8 * ticks
    assert signup["stable"]["converted"] == 5 * ticks
    assert buy["candidate"]["value"] == 10.0 * ticks
    assert json.loads(json.dumps(event.to_dict()))["ab"]["winner"] == "candidate"


def test_the_winner_is_held_back_until_min_duration() -> None:
    d = AB(candidate=(50, 8))
    d.run(30)
    assert d.phase == "progressing"
    verdict = ab.verdict(d.a, d.now)
    assert verdict is not None
    assert verdict.outcome == "running"
    assert "candidate ahead" in verdict.reason
    assert "to go" in verdict.reason
    assert d.a.status()["ab"]["winner"] is None


def test_a_candidate_that_converts_worse_loses_and_is_rolled_back() -> None:
    d = AB(candidate=(50, 2))
    d.until("rolled_back")
    assert d.weight == 0
    event = last(d, "rolled_back")
    assert event.message.startswith("lost the A/B test")
    assert event.ab["winner"] == "stable"
    assert event.ab["lift"] < 0


def test_an_a_a_test_ends_no_difference_at_max_duration() -> None:
    d = AB()
    at = d.until("rolled_back")
    assert at >= 300
    event = last(d, "rolled_back")
    assert "no difference" in event.message
    assert "stable is kept" in event.message
    assert event.ab["outcome"] == "no_difference"
    assert event.ab["winner"] is None
    assert d.a.finished["v2"] == "rolled_back"


def test_a_broken_split_pauses_the_test_and_resume_starts_it_afresh() -> None:
    d = AB(stable=(50, 5), candidate=(35, 4))  # 41 % of the users where 50 % should be
    d.until("paused")
    assert d.a.paused_reason == "srm"
    assert d.weight == 50  # paused: the split stays, no verdict is drawn
    event = last(d, "paused")
    assert "sample ratio mismatch" in event.message
    assert event.ab["outcome"] == "srm"
    d.counts = counts()
    d.tick(**cmd("resume"))
    d.tick()
    assert d.phase == "progressing"
    assert "ab_restarted" in d.kinds()
    status = d.a.status()["ab"]
    assert status["outcome"] == "running"
    assert status["users"] == {"stable": 50, "candidate": 50}


def test_the_guard_rolls_a_failing_candidate_back_while_the_test_runs() -> None:
    d = AB(spec=ab_spec(guard={"error_rate": 0.05}), candidate=(50, 8))
    d.run(5)
    d.errors = 60
    d.until("rolled_back", limit=30)
    event = last(d, "rolled_back")
    assert "guard" in event.message
    assert event.ab["outcome"] == "running"  # the test had not decided anything


def test_the_winner_waits_for_confirm_promotion_when_it_is_configured() -> None:
    d = AB(gates=("confirm-promotion",), candidate=(50, 8))
    d.until("waiting", limit=200)
    hooks = [a for a in d.actions if isinstance(a, CallHook)]
    assert hooks
    assert hooks[-1].gate == "confirm-promotion"
    d.tick(gates=[GateResult("confirm-promotion", hooks[-1].step, True)])
    assert d.phase == "promoted"
    assert last(d, "promoted").ab["winner"] == "candidate"


def test_the_counts_survive_a_save_and_a_restore() -> None:
    d = AB(candidate=(50, 8))
    d.run(20)
    saved = json.loads(json.dumps(encode(d.a)))
    spec = ab_spec()
    check_analyzer(saved, "shop", spec, d.a.spec_hash)
    restored = decode("shop", spec, saved)
    before, after = d.a.status()["ab"], restored.status()["ab"]
    assert after["goals"] == before["goals"]
    assert after["started_at"] == before["started_at"]
    d2 = Driver(restored)
    d2.now = d.now
    for _ in range(60):
        d2.tick(requests(), ab=counts(candidate=(50, 8)))
    assert d2.phase == "promoted"  # at min_duration from the test's start, not the restore's


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda s: s["srm"].update(candidate_users=-1), "count"),
        (lambda s: s["goals"][1].update(candidate=[7, 1]), "users differ"),
        (lambda s: s["goals"][0].update(split=0.3), "split"),
        (lambda s: s.update(values=[[0, math.inf], [0, 0]]), "values"),
    ],
)
def test_damaged_counts_are_refused(damage: Any, why: str) -> None:
    d = AB()
    d.run(5)
    saved = json.loads(json.dumps(encode(d.a)))
    damage(saved["ab"])
    with pytest.raises(InvalidState, match=f"analyzer.ab: .*{why}"):
        check_analyzer(saved, "shop", ab_spec(), d.a.spec_hash)


def test_the_ledger_says_the_test_started_at_the_split() -> None:
    d = AB(spec=ab_spec(ab={"split": 20, "audience": [{"header": "X-Plan", "value": "pro"}]}))
    d.tick()
    step = last(d, "step")
    assert step.message == (
        "A/B test started: 20% of the audience's users on the candidate, by their sticky key"
    )
    assert d.weight == 20
