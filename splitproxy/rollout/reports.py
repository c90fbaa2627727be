"""What the controller shows of a rollout, as plain data: JSON-safe numbers, the reason a
command is refused, a route's synthetic traffic (for the admin API and the console)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from splitproxy.config import Traffic
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.metrics import Recorder
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.messages import Command
from splitproxy.rollout.phases import PHASES, TRANSITIONS
from splitproxy.rollout.traffic import SyntheticTraffics
from splitproxy.views import SyntheticView, VersionRequestsView

if TYPE_CHECKING:
    from splitproxy.rollout.controller import Controller
    from splitproxy.rollout.ledger import RouteRollout

SYNTHETIC_SPAN: Final = 60.0  # seconds of synthetic answers a route's status sums per version
HISTORY_SHOWN: Final = 20  # ledger events in a route's status


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no ``Infinity``
    (an unbounded confidence interval or an overwhelming e-value shows as null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def refusal(name: str, command: Command, analyzer: Analyzer) -> str:
    """Why ``command`` is refused now, and when it would be accepted."""
    phase = analyzer.phase
    if command == "resume":
        allowed = [p for p in PHASES if "resume" in TRANSITIONS[p] or "proceed" in TRANSITIONS[p]]
    else:
        allowed = [p for p in PHASES if command in TRANSITIONS[p]]
    when = " or ".join(allowed)
    return f"cannot {command} route {name!r}: its rollout is {phase}; {command} applies when {when}"


def synthetic_status(
    name: str,
    spec: Traffic | None,
    traffics: SyntheticTraffics | None,
    recorder: Recorder,
    now: float,
) -> SyntheticView | None:
    """A route's synthetic traffic: None without ``traffic:``; else the generator's counters
    (of the run going on, or the last one) and, per version, the synthetic requests the proxy
    answered in the last `SYNTHETIC_SPAN` seconds."""
    if spec is None:
        return None
    generator = traffics.status(name) if traffics is not None else None
    buckets = recorder.observations(name, now - SYNTHETIC_SPAN)

    def answered(version: Version) -> VersionRequestsView:
        counts = [b.synthetic(version) for b in buckets]
        return {
            "requests": sum(c.requests for c in counts),
            "errors": sum(c.errors for c in counts),
        }

    return {
        "rate": spec.rate,
        "target": spec.target,
        "judge": spec.judge,
        "running": bool(generator and generator["running"]),
        "generator": generator,
        "answered": {
            "window_seconds": SYNTHETIC_SPAN,
            STABLE: answered(STABLE),
            CANDIDATE: answered(CANDIDATE),
        },
    }


def rollout_status(control: Controller, rt: RouteRollout) -> dict[str, Any]:
    """``rt``'s rollout as the admin API shows it (`Controller.route_status`)."""
    name = rt.name
    out = rt.analyzer.status()
    out["state"] = control.persistence.route_state(name)
    out["hooks"] = [
        {"on": h.on, "name": h.name, "format": h.format, "gating": h.gating}
        for h in rt.rollout.hooks
    ]
    out["waiting_on_hooks"] = control.dispatcher.waiting(name)
    out["external"] = control.poller.status(name)
    out["synthetic"] = synthetic_status(
        name, rt.rollout.traffic, control.traffics, control.recorder, control.clock()
    )
    warm = control.reverts.warm.get(name)
    out["revert"] = warm.view(control.clock()) if warm is not None else None
    if out.get("bluegreen") is not None:
        out["bluegreen"]["job"] = control.tests.status(name)
    out["history"] = list(rt.ledger)[-HISTORY_SHOWN:]
    return cast(dict[str, Any], finite(out))


def merged_events(
    ledgers: Iterable[Iterable[dict[str, Any]]], since: float | None, limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` events of ``ledgers`` after ``since``, oldest first, JSON-safe."""
    merged = [e for ledger in ledgers for e in ledger if since is None or e["at"] > since]
    merged.sort(key=lambda e: e["at"])  # stable: a tick's events keep their order
    return cast(list[dict[str, Any]], finite(merged[-limit:] if limit > 0 else []))


def gate_payload(a: Analyzer, gate: str, now: float, message: str) -> dict[str, Any]:
    """The JSON body a gating hook is called with."""
    body = {
        "hook": gate,
        "type": gate,
        "route": a.route,
        "revision": a.revision,
        "phase": a.phase,
        "step": a.step_index + 1,
        "weight": a.weight,
        "message": message,
        "at": now,
        "checks": [c.to_dict() for c in a.checks],
    }
    return cast(dict[str, Any], finite(body))
