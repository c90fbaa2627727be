"""The rollout controller ticked by hand: a fake clock, traffic written straight into the live
windows, fake hooks and external readers; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitproxy.config import PrometheusCheck, WebCheck, parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.health import CandidateHealth
from splitproxy.dataplane.routing import choose, preview_decision, synthetic_decision
from splitproxy.dataplane.state import (
    RuntimeState,
    candidate_identity,
    content_hash,
    upstream_keys,
    weight_source,
)
from splitproxy.errors import Conflict, UnknownRoute
from splitproxy.metrics import Recorder
from splitproxy.rollout.controller import Controller, ControlOptions, analyzer_spec, finite
from splitproxy.rollout.hooks import HookResult
from splitproxy.rollout.sources import SourceError
from splitproxy.rollout.store import StateStore

T0 = 1_700_000_000.0


def routes(
    revision: str = "v2", rollout: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "steps": [20, 50],
        "interval": "2s",
        "min_requests": 10,
        "checks": [{"metric": "error_rate", "max": 0.05}],
    }
    spec.update(rollout or {})
    route: dict[str, Any] = {
        "name": "shop",
        "stable": "http://stable:80",
        "candidate": {"url": "http://candidate:80", "revision": revision},
        "weight": 5,
        "rollout": spec,
        **fields,
    }
    return {"routes": [route, {"name": "static", "stable": "http://static:80"}]}


class FakeHooks:
    """Records every call; answers from a script per URL (default: 200)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, list[bool]] = {}

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> HookResult:
        self.calls.append((url, dict(payload)))
        script = self.answers.get(url)
        ok = script.pop(0) if script else True
        return HookResult(ok, 200 if ok else 503, 1, None if ok else "HTTP 503")

    def bodies(self, url: str) -> list[dict[str, Any]]:
        return [body for u, body in self.calls if u == url]


class Rig:
    """A controller over a real `RuntimeState` and `Recorder`, on a clock moved by hand."""

    def __init__(
        self,
        config: dict[str, Any],
        store: StateStore | None = None,
        reader: Any = None,
        options: ControlOptions | None = None,
        health: Callable[[str], CandidateHealth] | None = None,
    ) -> None:
        self.now = T0
        self.state = RuntimeState()
        self.load(config)
        self.recorder = Recorder(self.state, clock=lambda: self.now)
        self.hooks = FakeHooks()
        self.control = Controller(
            self.state,
            self.recorder,
            store=store,
            hooks=self.hooks,
            reader=reader or _no_reader,
            health=health,
            clock=lambda: self.now,
            options=options,
        )
        for follower in (self.recorder.on_swap, self.control.on_swap):  # as server.py does
            self.state.subscribe(follower)

    def load(self, config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        self.state.load(parse_routing(text), content_hash(text), self.now)

    @property
    def weight(self) -> float:
        snapshot = self.state.snapshot
        assert snapshot is not None
        route = snapshot.route("shop")
        assert route is not None
        return route.weight_bp / 100

    @property
    def phase(self) -> str:
        return self.control.analyzers()["shop"].phase

    def second(self, n: int = 100, error_rate: float = 0.0) -> None:
        """One second of traffic split at the weight in force, then a tick."""
        p = self.weight / 100
        to_candidate = round(n * p)
        errors = round(to_candidate * error_rate)
        window = self.recorder.windows
        for i in range(n):
            version: Version = CANDIDATE if i < to_candidate else STABLE
            error = version == CANDIDATE and i < errors
            window.window("shop").observe(self.now + 0.5, version, 0.02, error, p)
        self.now += 1
        self.control.tick()

    def until(self, phase: str, limit: int = 60, **kw: Any) -> None:
        for _ in range(limit):
            self.second(**kw)
            if self.phase == phase:
                return
        raise AssertionError(f"never reached {phase}; at {self.phase}")

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.control.events("shop", limit=1000)]


async def _no_reader(check: PrometheusCheck | WebCheck) -> float | None:
    raise AssertionError("no external check expected")


# --- weights ----------------------------------------------------------------------------------


async def test_a_good_candidate_is_promoted_and_the_rollout_weight_wins() -> None:
    rig = Rig(routes())
    assert rig.weight == 5  # the file's, until the first tick
    rig.control.tick()
    assert (rig.phase, rig.weight) == ("progressing", 20)
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert weight_source(snapshot, "shop") == "rollout"
    assert snapshot.rollout_weights["shop"].candidate == "v2"
    rig.until("promoted")
    assert rig.weight == 100
    assert rig.kinds() == ["started", "step", "step", "promoted"]
    assert rig.control.metrics.ended == {("shop", "promoted"): 1}
    rig.second()
    assert (rig.phase, rig.weight) == ("promoted", 100)  # until the file names it stable


async def test_a_starting_candidate_gets_no_traffic_and_its_refusals_are_not_its_errors() -> None:
    ready = {"shop": False}

    def health(route: str) -> CandidateHealth:
        up = ready[route]
        return CandidateHealth(ready=up, healthy=up, unhealthy_since=None if up else T0)

    rig = Rig(routes(), health=health)
    rig.control.tick()
    status = rig.control.route_status("shop")
    assert status is not None
    assert (rig.phase, rig.weight, status["waiting_for"]) == ("waiting", 0, "readiness")
    for _ in range(5):  # a sticky user's requests, refused while the container starts
        rig.recorder.windows.window("shop").observe(rig.now + 0.5, CANDIDATE, 0.001, True, None)
        rig.second()
    assert (rig.phase, rig.weight) == ("waiting", 0)
    ready["shop"] = True
    rig.second()
    assert (rig.phase, rig.weight) == ("progressing", 20)
    rig.until("promoted")
    assert rig.kinds()[:4] == ["started", "waiting", "proceeded", "step"]
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["progress_deadline"]["spent"] == 6.0  # from the start to ready


async def test_the_file_naming_the_candidate_stable_ends_the_promotion() -> None:
    rig = Rig(routes())
    rig.control.tick()
    rig.until("promoted")
    done = routes()
    done["routes"][0]["stable"] = "http://candidate:80"
    del done["routes"][0]["candidate"]
    done["routes"][0]["weight"] = 0
    rig.load(done)
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert "shop" not in snapshot.rollout_weights  # no candidate: nothing to drive
    rig.second()
    assert rig.phase == "idle"
    assert rig.kinds()[-1] == "abandoned"


async def test_a_runtime_weight_is_refused_while_a_rollout_drives_the_route() -> None:
    rig = Rig(routes())
    rig.control.tick()
    with pytest.raises(Conflict) as info:
        rig.state.set_weight("shop", 70, rig.now)
    assert info.value.code == "rollout_active"
    assert "pause" in info.value.message
    assert rig.weight == 20


async def test_a_crashing_candidate_is_rolled_back_and_stays_so() -> None:
    rig = Rig(routes())
    rig.control.tick()
    rig.until("rolled_back", error_rate=0.5)
    assert rig.weight == 0
    event = rig.control.events("shop")[-1]
    assert event["kind"] == "rolled_back"
    assert event["checks"], "the decision carries its evidence"
    rig.second()
    rig.second()
    assert (rig.phase, rig.weight) == ("rolled_back", 0)
    assert rig.control.metrics.ended == {("shop", "rolled_back"): 1}


async def test_a_new_revision_puts_all_traffic_on_stable_then_restarts() -> None:
    rig = Rig(routes())
    rig.control.tick()
    for _ in range(3):
        rig.second()
    assert rig.weight == 50
    rig.load(routes(revision="v3"))
    assert rig.weight == 0  # before the controller even ticks
    rig.second()
    analyzer = rig.control.analyzers()["shop"]
    assert (analyzer.revision, analyzer.step_index, rig.weight) == ("v3", 0, 20)
    assert rig.kinds()[-2:] == ["restarted", "step"]


async def test_removing_the_rollout_hands_the_route_back_to_the_file() -> None:
    rig = Rig(routes())
    rig.control.tick()
    plain = routes()
    del plain["routes"][0]["rollout"]
    rig.load(plain)
    assert rig.weight == 5
    rig.control.tick()
    assert "shop" not in rig.control.analyzers()
    last = rig.control.events("shop")[-1]
    assert (last["kind"], last["phase"]) == ("abandoned", "idle")
    assert last["message"] == "the rollout was removed from the routing file"
    rig.state.set_weight("shop", 30, rig.now)  # the file (and the admin API) rule again


async def test_a_rolled_back_revision_stays_so_when_its_rollout_is_removed_and_put_back() -> None:
    rig = Rig(routes())  # memory only
    rig.control.tick()
    rig.control.command("shop", "rollback")
    plain = routes()
    del plain["routes"][0]["rollout"]
    rig.load(plain)
    rig.second()
    assert rig.weight == 5
    rig.load(routes())
    rig.second()
    assert (rig.phase, rig.weight) == ("rolled_back", 0)
    assert rig.kinds()[-2:] == ["state_restored", "restored"]


async def test_a_changed_spec_restarts_but_a_changed_hook_does_not() -> None:
    slow = {"interval": "4s"}
    rig = Rig(routes(rollout=slow))
    rig.control.tick()
    while rig.weight < 50:
        rig.second()
    hooks = [{"on": "event", "url": "http://chat/a"}]
    with_hook = routes(rollout={**slow, "hooks": hooks})
    rollout = parse_routing(yaml.safe_dump(with_hook)).routes[0].rollout
    assert rollout is not None
    assert analyzer_spec(rollout).hooks == ()
    rig.load(with_hook)
    rig.second()
    assert rig.weight == 50
    assert "restarted" not in rig.kinds()
    rig.load(routes(rollout={**slow, "steps": [10, 50], "hooks": hooks}))
    rig.second()
    assert rig.weight == 10
    assert rig.kinds()[-2:] == ["restarted", "step"]


def test_candidate_identity_is_the_revision_or_a_digest_of_the_urls() -> None:
    config = parse_routing(
        "routes:\n"
        "  - {name: a, stable: 'http://s', candidate: {url: 'http://c', revision: '7'}}\n"
        "  - {name: b, stable: 'http://s', candidate: 'http://c'}\n"
        "  - {name: c, stable: 'http://s', candidate: 'http://d'}\n"
        "  - {name: d, stable: 'http://s'}\n"
    )
    a, b, c, d = (candidate_identity(r) for r in config.routes)
    assert a == "7"
    assert b is not None
    assert b.startswith("urls:")
    assert b != c
    assert d is None


# --- manual commands --------------------------------------------------------------------------


async def test_manual_commands_act_at_once_and_are_recorded() -> None:
    rig = Rig(routes())
    rig.control.tick()
    status = rig.control.command("shop", "pause", reason="looking into it")
    assert (status["phase"], rig.weight) == ("paused", 20)
    for _ in range(5):
        rig.second()
    assert rig.phase == "paused"
    rig.control.command("shop", "resume")
    assert rig.phase == "progressing"
    rig.control.command("shop", "rollback")
    assert (rig.phase, rig.weight) == ("rolled_back", 0)
    rig.control.command("shop", "retry")
    assert (rig.phase, rig.weight) == ("progressing", 20)
    rig.control.command("shop", "promote")
    assert (rig.phase, rig.weight) == ("promoted", 100)
    paused = next(e for e in rig.control.events("shop") if e["kind"] == "paused")
    assert paused["source"] == "manual:admin"
    assert paused["message"] == "paused by hand: looking into it"


async def test_refused_commands_say_why() -> None:
    rig = Rig(routes())
    rig.control.tick()
    with pytest.raises(Conflict) as info:
        rig.control.command("shop", "retry")
    assert info.value.code == "command_refused"
    assert info.value.message == (
        "cannot retry route 'shop': its rollout is progressing; retry applies when rolled_back"
    )
    with pytest.raises(Conflict) as info:
        rig.control.command("shop", "resume")
    assert "resume applies when waiting or paused" in info.value.message
    with pytest.raises(Conflict) as info:
        rig.control.command("static", "promote")
    assert info.value.code == "no_rollout"
    with pytest.raises(UnknownRoute):
        rig.control.command("nope", "promote")


# --- hooks ------------------------------------------------------------------------------------


def hooked(*hooks: dict[str, Any], **rollout: Any) -> dict[str, Any]:
    return routes(rollout={"hooks": list(hooks), **rollout})


async def test_confirm_promotion_holds_until_its_hook_answers_2xx() -> None:
    rig = Rig(hooked({"on": "confirm-promotion", "url": "http://ci/ok"}, interval="1s"))
    rig.hooks.answers["http://ci/ok"] = [False] * 10
    rig.control.tick()
    rig.until("waiting")
    await rig.control.settle()
    assert len(rig.hooks.bodies("http://ci/ok")) == 1
    body = rig.hooks.bodies("http://ci/ok")[0]
    assert (body["type"], body["route"], body["revision"], body["weight"]) == (
        "confirm-promotion",
        "shop",
        "v2",
        50,
    )
    for _ in range(3):  # asked again every interval; "not yet" is not a failure
        rig.second()
        await rig.control.settle()
    assert rig.phase == "waiting"
    assert rig.control.analyzers()["shop"].failures == 0
    assert len(rig.hooks.bodies("http://ci/ok")) == 4
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["gate"]["name"] == "confirm-promotion"
    # counted, not each one a ledger event (the fourth answer is applied on the next tick)
    assert status["gate"]["attempts"] == 3
    rig.hooks.answers["http://ci/ok"] = []  # approved
    for _ in range(3):
        rig.second()
        await rig.control.settle()
    assert (rig.phase, rig.weight) == ("promoted", 100)
    assert rig.kinds().count("gate_closed") == 1


async def test_a_night_of_closed_confirm_promotion_answers_leaves_the_ledger_alone() -> None:
    rig = Rig(
        hooked(
            {"on": "confirm-promotion", "url": "http://ci/ok"},
            {"on": "event", "url": "http://chat/hook"},
            interval="1s",
        )
    )
    rig.hooks.answers["http://ci/ok"] = [False] * 1000
    rig.control.tick()
    rig.until("waiting")
    await rig.control.settle()
    decided = rig.kinds()
    for _ in range(720):
        rig.second(n=10)
        await rig.control.settle()
    assert rig.phase == "waiting"
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["gate"]["attempts"] == 720
    assert rig.kinds() == [*decided, "gate_closed"]  # the decisions before it are all kept
    notified = [b["type"] for b in rig.hooks.bodies("http://chat/hook")]
    assert notified.count("gate_closed") == 1


async def test_a_failing_pre_rollout_hook_is_a_failed_check() -> None:
    rig = Rig(hooked({"on": "pre-rollout", "url": "http://ci/pre"}, failure_limit=0))
    rig.hooks.answers["http://ci/pre"] = [False]
    rig.control.tick()
    assert (rig.phase, rig.weight) == ("waiting", 0)
    await rig.control.settle()
    rig.second()
    assert rig.phase == "rolled_back"
    failed = next(e for e in rig.control.events("shop") if e["kind"] == "check_failed")
    assert "pre-rollout hook #1: HTTP 503" in failed["message"]
    assert "http://ci/pre" not in json.dumps(rig.control.events())  # URLs may hold secrets


async def test_a_gate_whose_hook_was_removed_passes() -> None:
    rig = Rig(hooked({"on": "pre-rollout", "url": "http://ci/pre"}))
    rig.hooks.answers["http://ci/pre"] = [False] * 10
    rig.control.tick()
    assert rig.phase == "waiting"
    await rig.control.settle()
    rig.load(routes())  # the same spec, without the hook
    for _ in range(3):
        rig.second()
    assert rig.phase == "progressing"
    assert rig.weight == 20


async def test_notifications_go_to_event_post_rollout_and_rollback_hooks() -> None:
    rig = Rig(
        hooked(
            {"on": "event", "url": "http://chat/json"},
            {"on": "event", "url": "http://chat/slack", "format": "slack"},
            {"on": "post-rollout", "url": "http://ci/post"},
            {"on": "rollback", "url": "http://ci/undo"},
        )
    )
    rig.control.tick()
    rig.until("rolled_back", error_rate=0.5)
    await rig.control.settle()
    events = rig.hooks.bodies("http://chat/json")
    assert [e["type"] for e in events] == rig.kinds()
    assert all(e["hook"] == "event" for e in events)
    slack = rig.hooks.bodies("http://chat/slack")
    assert set(slack[-1]) == {"text"}
    assert slack[-1]["text"].startswith("splitproxy · shop v2: rolled_back (candidate at 0%).")
    assert events[-1]["weight"] == 20  # when it was decided
    assert events[-1]["weight_after"] == 0
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert events[-1]["config_revision"] == snapshot.revision  # the commit, from a git source
    (post,) = rig.hooks.bodies("http://ci/post")
    (undo,) = rig.hooks.bodies("http://ci/undo")
    assert post["type"] == undo["type"] == "rolled_back"
    assert (post["hook"], undo["hook"]) == ("post-rollout", "rollback")
    json.dumps(post, allow_nan=False)


# --- external checks --------------------------------------------------------------------------


async def test_external_checks_are_read_on_their_own_interval_and_fed_to_the_analyzer() -> None:
    reads: list[tuple[str, float]] = []
    answers = {"prometheus": [0.5, 0.7], "ci": [1.0]}

    rig: Rig

    async def reader(check: PrometheusCheck | WebCheck) -> float | None:
        reads.append((check.key, rig.now))
        script = answers[check.key]
        if not script:
            raise SourceError("no answer from http://ci within 1s")
        return script.pop(0)

    checks = [
        {"prometheus": "http://prom:9090", "query": "up", "max": 1.0},
        {"web": "http://ci/ok", "name": "ci"},
    ]
    rig = Rig(
        routes(rollout={"checks": checks, "interval": "10s"}),
        reader=reader,
        options=ControlOptions(external_interval=2.0),
    )
    rig.control.tick()
    await rig.control.settle()
    assert sorted(k for k, _ in reads) == ["ci", "prometheus"]
    rig.second()
    await rig.control.settle()
    assert len(reads) == 2  # not due yet
    rig.second()
    await rig.control.settle()
    assert len(reads) == 4
    rig.second()
    checks_now = {c.name: c for c in rig.control.analyzers()["shop"].checks}
    assert checks_now["prometheus"].value == 0.7  # the latest value in the window
    assert checks_now["ci"].value is None  # its last read failed
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["external"]["ci"]["error"] == "no answer from http://ci within 1s"
    assert status["external"]["ci"]["value"] is None


# --- durable state ----------------------------------------------------------------------------


async def test_a_restart_mid_rollout_resumes_at_the_same_step_and_weight(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(rollout={"steps": [20, {"pause": True}, 50]}), store=store)
    rig.control.tick()
    rig.until("waiting")
    await rig.control.flush()
    saved = json.loads(store.path("shop").read_text())
    assert saved["format"] == 1
    assert saved["analyzer"]["phase"] == "waiting"
    assert [e["kind"] for e in saved["ledger"]] == rig.kinds()

    again = Rig(routes(rollout={"steps": [20, {"pause": True}, 50]}), store=store)
    again.now = rig.now + 30
    assert again.weight == 5  # the file's, until the controller starts
    again.control.tick()
    assert (again.phase, again.weight) == ("waiting", 20)
    assert again.control.analyzers()["shop"].step_index == 1
    assert again.kinds()[-1] == "state_restored"
    again.control.command("shop", "resume")
    assert again.weight == 50


async def test_a_rolled_back_candidate_stays_rolled_back_after_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(), store=store)
    rig.control.tick()
    rig.until("rolled_back", error_rate=0.5)
    await rig.control.flush()
    again = Rig(routes(), store=store)
    again.control.tick()
    assert (again.phase, again.weight) == ("rolled_back", 0)
    again.load(routes(revision="v3"))
    again.second()
    assert (again.phase, again.weight) == ("progressing", 20)


async def test_a_damaged_state_file_holds_the_route_on_stable_paused_until_resumed(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    store.path("shop").write_text('{"format": 1, "route": "shop", "analyzer": {"pha')  # torn
    rig = Rig(routes(), store=store)
    rig.control.tick()
    assert (rig.phase, rig.weight) == ("paused", 0)
    status = rig.control.route_status("shop")
    assert status is not None
    rejected = status["state"]["rejected"]
    assert rejected["path"] == str(store.path("shop"))
    assert rejected["reason"].startswith("not valid JSON")
    assert rig.kinds()[-1] == "paused"
    assert "saved state rejected" in rig.control.events("shop")[-1]["message"]
    assert (tmp_path / "shop.json.rejected").read_text().endswith('"pha')
    for _ in range(5):  # nothing moves on its own
        rig.second()
    assert (rig.phase, rig.weight) == ("paused", 0)
    rig.control.command("shop", "resume")  # from the first step, through readiness
    rig.second()
    assert (rig.phase, rig.weight) == ("progressing", 20)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"weight": 150.0}, "analyzer.weight: 150 is outside 0..100"),
        ({"weight": 35.0}, "analyzer.weight: 35% in phase progressing, step 1"),
        ({"step_index": 9}, "analyzer.step_index: 9 is outside -1..2"),
        ({"phase": "winning"}, "analyzer.phase: 'winning' is not one of"),
        ({"revision": None}, "analyzer.revision: a progressing rollout names no revision"),
        ({"started_at": "yesterday"}, "analyzer.started_at: 'yesterday' is not a number"),
        ({"phase": "rolled_back"}, "analyzer.weight: 20% in phase rolled_back"),
        ({"failures": -1}, "analyzer.failures: -1 is outside"),
    ],
)
async def test_a_state_file_that_lies_is_refused_with_the_field_named(
    tmp_path: Path, change: dict[str, Any], reason: str
) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(), store=store)
    rig.control.tick()
    assert (rig.phase, rig.weight) == ("progressing", 20)
    await rig.control.flush()
    doc = json.loads(store.path("shop").read_text())
    doc["analyzer"].update(change)
    store.save("shop", doc)
    again = Rig(routes(), store=store)
    again.control.tick()
    assert (again.phase, again.weight) == ("paused", 0)
    status = again.control.route_status("shop")
    assert status is not None
    assert status["state"]["rejected"]["reason"].startswith(reason)


async def test_a_fifo_in_place_of_the_state_file_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    os.mkfifo(StateStore(tmp_path).path("shop"))
    rig = Rig(routes(), store=StateStore(tmp_path))
    rig.control.tick()  # would block forever on open() or read()
    assert (rig.phase, rig.weight) == ("paused", 0)
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["state"]["rejected"]["reason"] == "not a regular file"


@pytest.mark.parametrize("damage", ["lost", "truncated", "stale"])
async def test_a_rolled_back_revision_stays_rolled_back_whatever_became_of_its_state(
    tmp_path: Path, damage: str
) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(), store=store)
    rig.control.tick()
    await rig.control.flush()
    progressing = store.path("shop").read_bytes()
    rig.until("rolled_back", error_rate=0.5)
    await rig.control.flush()
    record = [json.loads(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [(r["route"], r["revision"], r["verdict"]) for r in record] == [
        ("shop", "v2", "rolled_back")
    ]
    if damage == "lost":
        store.path("shop").unlink()
    elif damage == "truncated":
        store.path("shop").write_bytes(progressing[:100])
    else:  # an older state, say from a backup: it still says progressing
        store.path("shop").write_bytes(progressing)
    again = Rig(routes(), store=store)
    again.control.tick()
    assert (again.phase, again.weight) == ("rolled_back", 0)
    snapshot = again.state.snapshot
    assert snapshot is not None
    route = snapshot.route("shop")
    assert route is not None
    assert route.closed


async def test_a_retried_revision_is_not_held_back_by_its_old_verdict(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(), store=store)
    rig.control.tick()
    rig.until("rolled_back", error_rate=0.5)
    rig.control.command("shop", "retry")
    await rig.control.flush()
    store.path("shop").unlink()  # the state is lost after the retry
    again = Rig(routes(), store=store)
    again.control.tick()
    assert again.phase in ("progressing", "waiting")


async def test_after_a_rollback_no_override_reaches_the_candidate() -> None:
    rig = Rig(routes(overrides=[{"header": "X-Canary"}]))
    rig.control.tick()
    snapshot = rig.state.snapshot
    assert snapshot is not None
    route = snapshot.route("shop")
    assert route is not None
    assert choose(route, {b"x-canary": b"always"}, 0).version == CANDIDATE
    rig.until("rolled_back", error_rate=0.5)
    snapshot = rig.state.snapshot
    assert snapshot is not None
    route = snapshot.route("shop")
    assert route is not None
    assert choose(route, {b"x-canary": b"always"}, 0).version == STABLE
    assert choose(route, {b"x-canary": b"always"}, 0).reason == "fallback"
    assert synthetic_decision(route, CANDIDATE).version == STABLE
    assert preview_decision(route).version == CANDIDATE  # the operator's own address still does
    rig.control.command("shop", "retry")
    snapshot = rig.state.snapshot
    assert snapshot is not None
    route = snapshot.route("shop")
    assert route is not None
    assert not route.closed


async def test_active_rollouts_are_checkpointed_and_memory_only_is_said(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(rollout={"interval": "1h"}), store=store)
    rig.control.tick()
    await rig.control.flush()
    first = json.loads(store.path("shop").read_text())["saved_at"]
    for _ in range(11):
        rig.second()
    await rig.control.flush()
    assert json.loads(store.path("shop").read_text())["saved_at"] > first
    assert rig.control.summary()["persistent"] is True
    memory = Rig(routes())
    assert memory.control.summary() == {
        "state_dir": None,
        "persistent": False,
        "note": "memory only: rollout state is lost on restart (set --state-dir)",
    }


# --- evidence ---------------------------------------------------------------------------------


async def test_the_ledger_is_bounded_filtered_and_newest_last() -> None:
    rig = Rig(routes(), options=ControlOptions(ledger_size=3))
    rig.control.tick()
    rig.until("promoted")
    events = rig.control.events()
    assert [e["kind"] for e in events] == ["step", "step", "promoted"]
    assert [e["kind"] for e in rig.control.events(limit=1)] == ["promoted"]
    assert rig.control.events("static") == []
    since = events[0]["at"]
    assert [e["kind"] for e in rig.control.events(since=since)] == ["step", "promoted"]


async def test_status_has_phase_step_checks_and_history_as_plain_json() -> None:
    rig = Rig(routes(rollout={"checks": [{"metric": "error_rate", "compare": "stable"}]}))
    rig.control.tick()
    rig.second()
    status = rig.control.route_status("shop")
    assert status is not None
    assert (status["phase"], status["step"], status["steps"], status["weight"]) == (
        "progressing",
        1,
        2,
        20,
    )
    assert {c["name"] for c in status["checks"]} == {"error_rate_vs_stable", "guard"}
    assert [e["kind"] for e in status["history"]] == ["started", "step"]
    assert status["state"]["persistent"] is False
    json.dumps(status, allow_nan=False)
    assert rig.control.route_status("static") is None


def test_finite_turns_infinities_into_null() -> None:
    assert finite({"ci": (0.5, float("inf")), "e": float("nan"), "n": 3}) == {
        "ci": [0.5, None],
        "e": None,
        "n": 3,
    }


async def test_rollout_metrics_are_read_at_scrape_time() -> None:
    rig = Rig(routes())
    rig.recorder.registry.register(rig.control.metrics)
    rig.control.tick()
    rig.second()
    samples = _scrape(rig.recorder)
    assert samples["splitproxy_rollout_phase", ("phase", "progressing"), ("route", "shop")] == 1
    assert samples["splitproxy_rollout_phase", ("phase", "waiting"), ("route", "shop")] == 0
    assert samples["splitproxy_rollout_step", ("route", "shop")] == 1
    assert samples["splitproxy_check_threshold", ("bound", "max"), ("check", "error_rate"),
                   ("route", "shop")] == 0.05  # fmt: skip
    assert samples["splitproxy_check_verdict", ("check", "error_rate"), ("route", "shop")] == 1
    assert samples["splitproxy_check_value", ("check", "error_rate"), ("route", "shop")] == 0
    assert samples["splitproxy_rollouts_total", ("result", "promoted"), ("route", "shop")] == 0
    rig.until("promoted")
    samples = _scrape(rig.recorder)
    assert samples["splitproxy_rollouts_total", ("result", "promoted"), ("route", "shop")] == 1
    count = ("splitproxy_rollout_duration_seconds_count", ("result", "promoted"), ("route", "shop"))
    assert samples[count] == 1
    assert samples["splitproxy_route_weight", ("route", "shop"), ("version", "candidate")] == 100


def _scrape(recorder: Recorder) -> dict[tuple[Any, ...], float]:
    text = generate_latest(recorder.registry).decode()
    out: dict[tuple[Any, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


async def test_the_loop_ticks_and_stops_cleanly(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = Rig(routes(), store=store, options=ControlOptions(tick=0.01))
    await rig.control.start()
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.weight == 20  # the first tick happened in start(), before any traffic
    await rig.control.stop()
    assert json.loads(store.path("shop").read_text())["analyzer"]["weight"] == 20


# --- the revert window ------------------------------------------------------------------------


def promoted_rig(store: StateStore | None = None, **rollout: Any) -> Rig:
    rig = Rig(routes(rollout={"steps": [50], "revert_window": "1h", **rollout}), store=store)
    rig.control.tick()
    rig.until("promoted")
    return rig


def moved_on() -> dict[str, Any]:
    """The GitOps commit after a promotion: the candidate's URL is now the route's stable."""
    config = routes()
    route = config["routes"][0]
    route["stable"] = {"url": "http://candidate:80", "revision": "v2"}
    del route["candidate"], route["weight"]
    return config


def served(rig: Rig) -> tuple[str, ...]:
    snapshot = rig.state.snapshot
    assert snapshot is not None
    route = snapshot.route("shop")
    assert route is not None
    return tuple(t.url for t in route.stable.targets)


async def test_revert_after_the_file_moved_on_sends_everything_to_the_previous_stable() -> None:
    rig = promoted_rig()
    status = rig.control.route_status("shop")
    assert status is not None
    assert status["revert"]["previous_stable"] == ["http://stable:80"]
    assert status["revert"]["until"] == pytest.approx(rig.now - 1 + 3600, abs=2)
    rig.load(moved_on())
    rig.second()
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert served(rig) == ("http://candidate:80",)
    assert ("stable", 80) in upstream_keys(snapshot)  # kept warm: its pool stays
    rig.control.revert("shop", reason="pager")
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert served(rig) == ("http://stable:80",)
    assert weight_source(snapshot, "shop") == "revert"
    route = snapshot.route("shop")
    assert route is not None
    assert route.candidate is None
    assert rig.kinds()[-1] == "reverted"
    with pytest.raises(Conflict, match="no promotion to revert"):
        rig.control.revert("shop")  # used up
    rig.load(routes(revision="v3"))  # the file decides again once it changes the route
    assert served(rig) == ("http://stable:80",)
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert "shop" not in snapshot.reverts


async def test_revert_while_the_file_still_names_the_candidate_is_its_rollback() -> None:
    rig = promoted_rig()
    rig.control.revert("shop")
    assert (rig.phase, rig.weight) == ("rolled_back", 0)
    assert rig.control.events("shop")[-1]["message"] == "rolled back by hand: reverted"


async def test_revert_outside_the_window_or_without_one_is_refused_with_the_reason() -> None:
    rig = promoted_rig(revert_window="10s")
    rig.now += 11
    rig.control.tick()
    with pytest.raises(Conflict, match="its revert window closed at 2023-11-14"):
        rig.control.revert("shop")
    snapshot = rig.state.snapshot
    assert snapshot is not None
    assert "shop" not in snapshot.warm
    plain = Rig(routes(rollout={"steps": [50]}))
    plain.control.tick()
    plain.until("promoted")
    with pytest.raises(Conflict, match="a revert needs 'revert_window'"):
        plain.control.revert("shop")


async def test_an_open_revert_window_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rig = promoted_rig(store)
    await rig.control.flush()
    again = Rig(routes(rollout={"steps": [50], "revert_window": "1h"}), store=store)
    again.now = rig.now + 60
    again.control.tick()
    again.load(moved_on())
    again.second()
    again.control.revert("shop")
    assert served(again) == ("http://stable:80",)
