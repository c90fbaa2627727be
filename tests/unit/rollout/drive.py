"""Driving an analyzer by hand in tests: specs, traffic and a driver that ticks once a second."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from splitproxy.config import Rollout
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.messages import (
    Action,
    Emit,
    Event,
    GateResult,
    ManualCommand,
    Observation,
    Sample,
    SetWeight,
)

BASE: dict[str, Any] = {"steps": [10, 50], "interval": "10s", "min_requests": 20}


def spec(**kw: Any) -> Rollout:
    return Rollout.model_validate({**BASE, **kw})


def hist(n: int, slow: int = 0, fast: float = 0.05, slow_at: float = 0.5) -> Any:
    out = []
    if n - slow:
        out.append((fast, n - slow))
    if slow:
        out.append((slow_at, slow))
    return tuple(out)


def traffic(
    p: float,
    *,
    stable: tuple[int, int] = (90, 0),
    candidate: tuple[int, int] = (10, 0),
    stable_slow: int = 0,
    candidate_slow: int = 0,
    path: str | None = "/",
) -> list[Sample]:
    return [
        Sample("stable", stable[0], stable[1], p, path, hist(stable[0], stable_slow)),
        Sample(
            "candidate", candidate[0], candidate[1], p, path, hist(candidate[0], candidate_slow)
        ),
    ]


class Driver:
    """Ticks an analyzer once a second with traffic at the weight it last asked for."""

    def __init__(self, analyzer: Analyzer, candidate: str | None = "v2") -> None:
        self.a = analyzer
        self.candidate = candidate
        self.now = 0.0
        self.weight = 0.0
        self.actions: list[Action] = []

    def tick(self, samples: Sequence[Sample] | None = None, **kw: Any) -> list[Action]:
        if samples is None:
            samples = traffic(self.weight / 100)
        obs = Observation(kw.pop("candidate", self.candidate), samples, **kw)
        actions = self.a.tick(self.now, obs)
        for action in actions:
            if isinstance(action, SetWeight):
                self.weight = action.percent if action.percent is not None else 0.0
        self.actions += actions
        self.now += 1
        return actions

    def run(self, seconds: int, **kw: Any) -> None:
        for _ in range(seconds):
            self.tick(**kw)

    def until(self, phase: str, limit: int = 10_000, **kw: Any) -> float:
        for _ in range(limit):
            self.tick(**kw)
            if self.phase == phase:
                return self.now - 1
        raise AssertionError(f"never reached {phase}; at {self.a.phase}")

    @property
    def phase(self) -> str:
        """The analyzer's phase (a plain str: it changes under mypy's feet between ticks)."""
        return self.a.phase

    def events(self) -> list[Event]:
        return [a.event for a in self.actions if isinstance(a, Emit)]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events()]

    def weights(self) -> list[float | None]:
        return [a.percent for a in self.actions if isinstance(a, SetWeight)]


def hold_step(a: Analyzer) -> int:
    """The plan index the analyzer's hold stands before (it must hold one)."""
    assert a.hold is not None
    return a.hold.step


def started(rollout: Rollout | None = None, **kw: Any) -> Driver:
    d = Driver(Analyzer("shop", rollout or spec(**kw)))
    d.tick()
    return d


def cmd(name: str, reason: str = "") -> Any:
    return {"commands": [ManualCommand(name, "cli", reason)]}  # type: ignore[arg-type]


def gated(*gates: Gate, **kw: Any) -> Driver:
    d = Driver(Analyzer("shop", spec(**kw), gates=gates))
    d.tick()
    return d


def op_kwargs(op: str, arg: int) -> dict[str, Any]:
    """A drawn operation as `Driver.tick`'s keyword arguments: ``pause`` and ``resume`` (a
    command), ``gate`` (a step gate's answer, its step and verdict from ``arg``), else none."""
    if op == "pause":
        return {"commands": [ManualCommand("pause", "admin", "by hand")]}
    if op == "resume":
        return {"commands": [ManualCommand("resume", "admin", "")]}
    if op == "gate":
        return {"gates": [GateResult("step", arg % 3 + 1, arg % 2 == 0, "the hook said so")]}
    return {}
