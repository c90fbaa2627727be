"""The A/B parts of a replica's harvest (`splitproxy.replicas.abwire`): a follower's events
and the leader's word survive the wire, and what Redis hands back is checked like the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.dataplane.abpool import MAX_EVENTS, AbEvents, AbLead
from splitproxy.replicas.wire import WireError, decode_harvest, dumps, encode_harvest, loads

events = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1),
        st.integers(0, 9),
        st.floats(0, 1e9, allow_nan=False, allow_infinity=False),
    ).map(lambda e: (e[0], e[1], e[2] if e[1] >= 2 else 0.0)),
    max_size=50,
)


@given(events, st.none() | st.floats(0, 2e9), st.integers(0, 1000))
def test_a_followers_events_survive_the_wire(
    evs: list[tuple[int, int, float]], test: float | None, untracked: int
) -> None:
    batch = AbEvents(test, tuple(evs), untracked)
    lead = AbLead(7, {"shop": 1700000000.5})
    doc = loads(dumps(encode_harvest(1.0, {}, {}, {"shop": batch}, lead)))
    harvest = decode_harvest("r1", doc)
    assert harvest.ab == {"shop": batch}
    assert harvest.lead == lead


def test_a_harvest_without_ab_parts_has_none() -> None:
    harvest = decode_harvest("r1", loads(dumps(encode_harvest(1.0, {}, {}))))
    assert (harvest.ab, harvest.lead) == ({}, None)


def with_events(events: Any, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "watermark": 1.0, "ab": {"shop": {"test": None, "events": events, **extra}}}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (with_events([[2**64, 0, 0]]), "over the limit"),
        (with_events([[-1, 0, 0]]), "negative"),
        (with_events([[1, 99, 0]]), "over the limit"),
        (with_events([[1, 0, 5.0]]), "an exposure with a value"),
        (with_events([[1, 2]]), "expected [user, kind, value]"),
        (with_events([[1, 2, "x"]]), "expected a number"),
        (with_events([[1, 0, 0]] * (MAX_EVENTS + 1)), "over the limit"),
        (with_events([], untracked=-3), "negative"),
        (with_events([], raw_cookie="abc"), "unknown field"),
        ({"v": 1, "watermark": 1.0, "ab_lead": {"epoch": 1, "tests": {"no such": 1}}}, "route"),
        ({"v": 1, "watermark": 1.0, "ab_lead": {"epoch": True, "tests": {}}}, "whole number"),
    ],
)
def test_hostile_ab_parts_are_refused_with_the_reason(doc: dict[str, Any], says: str) -> None:
    with pytest.raises(WireError) as caught:
        decode_harvest("r1", json.loads(json.dumps(doc)))
    assert says in str(caught.value)
