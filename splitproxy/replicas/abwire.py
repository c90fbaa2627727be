"""The A/B parts of a harvest on the wire (`dataplane.abpool`), read back as hostile input.

A follower's events of one route and the leader's word on the A/B tests, in the harvest
document (`wire.py` describes it): checked like everything else read from Redis, refused with
`wire.WireError`. An event is ``[user, kind, value]``: the user a 64-bit keyed hash (no user
identifier is written), the kind 0 or 1 an exposure to stable or the candidate, ``2 + i`` a
conversion on goal ``i`` with its ``value_header`` value (0 for an exposure); at most
`abpool.MAX_EVENTS` per route. Pure.
"""

from __future__ import annotations

from typing import Any, Final

from splitproxy.config.abtest import MAX_GOALS
from splitproxy.dataplane.abpool import GOAL_BASE, MAX_EVENTS, AbEvents, AbLead, Event
from splitproxy.replicas.wire import (
    MAX_UNIT,
    WireError,
    _count,
    _kind,
    _list,
    _number,
    _object,
    _routes,
)


def encode_ab_events(batch: AbEvents) -> dict[str, Any]:
    doc: dict[str, Any] = {"test": batch.test, "events": [list(e) for e in batch.events]}
    if batch.untracked:
        doc["untracked"] = batch.untracked
    return doc


_AB_EVENTS: Final = frozenset({"test", "events"})


def decode_ab_events(data: object, where: str = "ab") -> AbEvents:
    doc = _object(data, where, _AB_EVENTS, frozenset({"untracked"}))
    test = None if doc["test"] is None else _number(doc["test"], f"{where}.test", 0.0)
    events: list[Event] = []
    for i, item in enumerate(_list(doc["events"], f"{where}.events", MAX_EVENTS)):
        at = f"{where}.events[{i}]"
        if not isinstance(item, list) or len(item) != 3:
            raise WireError(f"{at}: expected [user, kind, value], got {_kind(item)}")
        user = _count(item[0], f"{at}[0]", MAX_UNIT - 1)
        kind = _count(item[1], f"{at}[1]", GOAL_BASE + MAX_GOALS - 1)
        value = _number(item[2], f"{at}[2]")
        if kind < GOAL_BASE and value:
            raise WireError(f"{at}: an exposure with a value")
        events.append((user, kind, value))
    untracked = _count(doc.get("untracked", 0), f"{where}.untracked")
    return AbEvents(test, tuple(events), untracked)


def encode_ab_lead(lead: AbLead) -> dict[str, Any]:
    return {"epoch": lead.epoch, "tests": dict(lead.tests)}


def decode_ab_lead(data: object, where: str = "ab_lead") -> AbLead:
    doc = _object(data, where, frozenset({"epoch", "tests"}))
    epoch = _count(doc["epoch"], f"{where}.epoch")
    tests = {
        route: _number(start, f"{where}.tests.{route}", 0.0)
        for route, start in _routes(doc["tests"], f"{where}.tests").items()
    }
    return AbLead(epoch, tests)


__all__ = ["decode_ab_events", "decode_ab_lead", "encode_ab_events", "encode_ab_lead"]
