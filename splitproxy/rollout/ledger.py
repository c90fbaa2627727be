"""A route's rollout as the controller keeps it, and its decision ledger.

`RouteRollout` is one route's analyzer with the spec and ledger beside it. `record` is the
single door to the ledger: an `Event` goes in, and whatever a decision causes outside the
analyzer follows from it (log line, verdict on record, revert window, metrics, notifications).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from splitproxy.config import PrometheusCheck, Rollout, Route, RoutingConfig, WebCheck
from splitproxy.dataplane.state import candidate_identity
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.external import ExternalCheck
from splitproxy.rollout.messages import Event
from splitproxy.rollout.reports import finite
from splitproxy.rollout.samples import analyzer_spec, judges_synthetic
from splitproxy.rollout.store import Verdict

if TYPE_CHECKING:
    from splitproxy.rollout.controller import Controller

logger = logging.getLogger("splitproxy.rollout.controller")  # the controller's voice


@dataclass(eq=False)
class RouteRollout:
    """One route's analyzer and what the controller keeps beside it."""

    name: str
    rollout: Rollout
    analyzer: Analyzer
    ledger: deque[dict[str, Any]]
    last: float = 0.0  # the end of the newest live-window bucket consumed
    saved_at: float = -math.inf
    # what the tick asks each second, kept with what it was read from (compared by identity):
    # a routing file's routes tuple -> this route in it, its candidate's identity and whether
    # its rollout judges test traffic; a spec -> its external checks
    _route: tuple[object, Route | None, str | None, bool] = field(
        default=(None, None, None, False), init=False, repr=False
    )
    _external: tuple[object, tuple[ExternalCheck, ...]] = field(
        default=(None, ()), init=False, repr=False
    )
    # the config and this route's rollout weight `weightsync.sync_weight` last left in force
    # (compared by identity), with the analyzer's weight, revision, closed and shadow flags it
    # synced then (by value)
    synced: tuple[tuple[object, object], tuple[object, ...]] = field(
        default=((None, None), ()), init=False, repr=False
    )

    def configure(self, rollout: Rollout) -> None:
        if rollout is self.rollout:  # made for it (or a reload kept the route): nothing new
            return
        self.rollout = rollout
        self.analyzer.reconfigure(analyzer_spec(rollout))
        self.analyzer.gates = rollout.gates

    def route_in(self, config: RoutingConfig) -> Route | None:
        """``config.route(self.name)`` (see `follow`)."""
        return self.follow(config)[0]

    def follow(self, config: RoutingConfig) -> tuple[Route | None, str | None, bool]:
        """This route in ``config``, its candidate's `candidate_identity` and whether its
        rollout judges test traffic (`judges_synthetic`): made again only for another tuple
        of routes (a route is immutable; a pydantic model's private index is slow to reach,
        and the tick asks twice a route)."""
        kept = self._route
        if kept[0] is not config.routes:
            route = config.route(self.name)
            identity = candidate_identity(route) if route is not None else None
            kept = self._route = (config.routes, route, identity, judges_synthetic(route))
        return kept[1], kept[2], kept[3]

    def external_checks(self) -> tuple[ExternalCheck, ...]:
        seen, checks = self._external
        if seen is not self.rollout:
            rollout = self.rollout
            checks = tuple(c for c in rollout.checks if isinstance(c, PrometheusCheck | WebCheck))
            self._external = (rollout, checks)
        return checks


def control_event(rt: RouteRollout, now: float, kind: str, message: str) -> Event:
    """A ledger event of the controller's own (a restore, a revert), in the rollout's phase."""
    a = rt.analyzer
    return Event(
        at=now,
        route=rt.name,
        kind=kind,
        phase=a.phase,
        previous=a.phase,
        step=a.step_index + 1,
        weight=a.weight,
        revision=a.revision,
        message=message,
        source="control",
    )


def record(c: Controller, rt: RouteRollout, event: Event) -> None:
    """Add ``event`` to the route's ledger and carry out what it causes: the log line, the
    verdict on record, the revert window of a promotion, the rollout metrics and the
    notification hooks."""
    entry = event.to_dict()
    rt.ledger.append(entry)
    weight = "file" if event.weight is None else f"{event.weight:g}%"
    logger.info(
        "rollout %s %s: %s (%s, step %d, weight %s): %s",
        rt.name, event.revision or "-", event.kind, event.phase, event.step, weight,
        event.message,
    )  # fmt: skip
    if event.kind in ("promoted", "rolled_back", "retried") and event.revision is not None:
        verdict = cast(Verdict, event.kind)
        c.persistence.verdict(rt.name, event.revision, verdict, event.at, event.message)
    if event.kind == "promoted":
        snapshot = c.state.snapshot
        route = snapshot.config.route(rt.name) if snapshot is not None else None
        window = rt.rollout.revert_window
        c.reverts.promoted(rt.name, window, route, event.revision, event.at)
    if event.kind in ("promoted", "rolled_back"):
        started = rt.analyzer.started_at
        seconds = event.at - started if started is not None else 0.0
        c.metrics.rollout_ended(rt.name, event.kind, seconds)
    if rt.rollout.hooks:
        # weight_after: the candidate's weight once the tick's decisions are applied (the
        # event's own weight is the one in force when it was decided)
        snapshot = c.state.snapshot  # config_revision: the git commit with a git+ source
        after = {"type": event.kind, "weight_after": rt.analyzer.weight,
                 "config_revision": snapshot.revision if snapshot else None}  # fmt: skip
        payload = cast(dict[str, Any], finite({**entry, **after}))
        c.dispatcher.notify(rt.rollout.hooks, event.kind, payload)
