"""The replicas' wire: buckets, mirror tallies and the routing state survive JSON, and a bad
document from the shared Redis is refused with its reason, never a crash."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Backend, content_hash, parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.dataplane.state import RuntimeState, SharedState
from splitproxy.replicas.routingwire import RoutingState, decode_routing, encode_routing
from splitproxy.replicas.wire import (
    MAX_BIN,
    Harvest,
    WireError,
    decode_harvest,
    dumps,
    encode_harvest,
    loads,
)
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.sketch import LatencySketch
from splitproxy.rollout.windows import UNITS_PER_BUCKET, Period, VersionCounts, Windows

T0 = 1_700_000_000.0
QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)

# offset, candidate?, error?, probability, path, sticky user, synthetic?, latency
events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=4.0),
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, 0.0, 0.1, 0.5, 1.0]),
        st.sampled_from(["/a", "/b/c", "/1234", "/", "/x.y-z"]),
        st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        st.booleans(),
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=200.0)),
    ),
    max_size=80,
)


def periods_of(evs: list[Any]) -> dict[str, list[Period]]:
    """Real buckets: the events observed by a live window, as a replica harvests them."""
    windows = Windows()
    for offset, cand, error, p, path, unit, synthetic, latency in sorted(evs, key=lambda e: e[0]):
        windows.window("shop").observe(
            T0 + offset,
            CANDIDATE if cand else STABLE,
            latency,
            error,
            p,
            path,
            synthetic=synthetic,
            unit=unit,
        )
    return {"shop": windows.observations("shop", 0.0)}


def sketch_state(sketch: LatencySketch) -> tuple[object, ...]:
    return (sorted(sketch.bins.items()), sketch.count, sketch.total)


def counts_state(counts: VersionCounts) -> tuple[object, ...]:
    return (counts.requests, counts.errors, sketch_state(counts.latency))


def period_state(p: Period) -> tuple[object, ...]:
    """A period as plain values (a sketch compares by identity)."""
    return (
        p.start,
        p.end,
        p.probability,
        counts_state(p.stable),
        counts_state(p.candidate),
        p.path_classes,
        counts_state(p.synthetic_stable),
        counts_state(p.synthetic_candidate),
        p.sticky,
    )


def through_json(watermark: float, periods: Any, mirrors: Any, replica: str = "r1") -> Harvest:
    return decode_harvest(replica, loads(dumps(encode_harvest(watermark, periods, mirrors))))


@settings(max_examples=150, deadline=None)
@given(events, st.floats(min_value=0.0, max_value=2e9))
def test_buckets_survive_the_wire(evs: list[Any], watermark: float) -> None:
    periods = periods_of(evs)
    harvest = through_json(watermark, periods, {})
    assert harvest.replica == "r1"
    assert harvest.watermark == watermark
    got = harvest.periods.get("shop", [])
    assert [period_state(p) for p in got] == [period_state(p) for p in periods["shop"]]
    for mine, theirs in zip(got, periods["shop"], strict=True):
        for q in QUANTILES:
            assert mine.stable.latency.quantile(q) == theirs.stable.latency.quantile(q)
            assert mine.candidate.latency.quantile(q) == theirs.candidate.latency.quantile(q)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e4), max_size=50),
    st.integers(0, 50),
    st.integers(0, 50),
)
def test_mirror_tallies_survive_the_wire(
    latencies: list[float], errors: int, diverged: int
) -> None:
    tally = MirrorTally()
    for latency in latencies:
        tally.latency.add(latency)
    tally.answered = len(latencies)
    tally.errors = min(errors, tally.answered)
    tally.compared = tally.answered
    tally.diverged = min(diverged, tally.compared)
    got = through_json(T0, {}, {"shop": tally}).mirrors["shop"]
    assert (got.answered, got.errors, got.compared, got.diverged) == (
        tally.answered,
        tally.errors,
        tally.compared,
        tally.diverged,
    )
    assert got.take() == tally.take()  # the sample the shadow phase reads, histogram included


def test_an_empty_harvest_is_a_watermark_alone() -> None:
    document = dumps(encode_harvest(T0 + 0.25, {"shop": []}, {}))
    assert json.loads(document) == {"v": 1, "watermark": T0 + 0.25}
    assert through_json(T0 + 0.25, {"shop": []}, {}) == Harvest("r1", T0 + 0.25)


# -- the routing state -------------------------------------------------------------------------
FILE = """\
routes:
  - name: shop
    stable: http://shop-v1:8080
    candidate: {url: http://shop-v2:8080, revision: "2.4.0"}
    weight: 10
  - name: api
    stable: http://api-v1:8080
    candidate: {url: http://api-v2:8080, revision: "7"}
  - name: static
    stable: http://static:8080
"""
BACKENDS = [
    Backend.model_validate({"url": ["http://old:8080"]}),
    Backend.model_validate({"url": ["http://a:1", "http://b:2"], "revision": "1.9.0"}),
    Backend.model_validate(
        {"url": ["http://old:8080"], "health": {"path": "/healthz", "interval": "2s"}}
    ),
]
names = st.sampled_from(["shop", "api", "static", "gone"])
percents = st.floats(min_value=0.0, max_value=100.0)
times = st.floats(min_value=0.0, max_value=2e9)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(names, st.tuples(percents, times, st.sampled_from(["admin", "cli"]))),
    st.dictionaries(
        names, st.tuples(percents, times, st.text(max_size=20), st.booleans(), st.booleans())
    ),
    st.dictionaries(names, st.sampled_from(BACKENDS)),
    st.dictionaries(names, st.sampled_from(BACKENDS)),
)
def test_the_routing_state_survives_the_wire(
    overrides: dict[str, Any], weights: dict[str, Any], reverts: Any, warm: Any
) -> None:
    from splitproxy.dataplane.state import RolloutWeight, WeightOverride

    config = parse_routing(FILE)
    shared = SharedState(
        config,
        "hash",
        1.0,
        {n: WeightOverride(*v) for n, v in overrides.items()},
        {n: RolloutWeight(*v) for n, v in weights.items()},
        reverts,
        warm,
    )
    got = decode_routing(loads(dumps(encode_routing(shared))))
    assert dict(got.overrides) == shared.overrides
    assert dict(got.rollout_weights) == shared.rollout_weights
    assert dict(got.reverts) == shared.reverts
    assert dict(got.warm) == shared.warm


def test_a_follower_serves_the_leaders_weights_on_its_own_file() -> None:
    config = parse_routing(FILE)
    leader = RuntimeState()
    leader.load(config, content_hash(FILE), 1000.0)
    leader.set_weight("shop", 30, 1001.0)
    leader.set_rollout_weight("api", 12.5, 1002.0, "7")
    leader.revert_to("static", BACKENDS[0], 1003.0)
    assert leader.snapshot is not None
    document = encode_routing(SharedState.of(leader.snapshot))

    follower = RuntimeState()
    own = parse_routing(FILE.replace("  - name: static\n    stable: http://static:8080\n", ""))
    follower.load(own, content_hash("own"), 900.0)
    routing = decode_routing(loads(dumps(document)))
    snapshot = follower.adopt(routing.apply_to(own, content_hash("own"), 900.0))

    for name in ("shop", "api"):
        route, theirs = snapshot.route(name), leader.snapshot.route(name)
        assert route is not None
        assert theirs is not None
        assert route.weight_bp == theirs.weight_bp
    assert "static" not in snapshot.reverts  # not a route of the follower's file
    assert snapshot.rollout_weights["api"].candidate == "7"


def test_equal_states_give_equal_documents() -> None:
    config = parse_routing(FILE)
    state = RuntimeState()
    state.load(config, "h", 1.0)
    state.set_weight("shop", 0, 5.0)
    state.set_weight("api", 40, 6.0)
    assert state.snapshot is not None
    first = dumps(encode_routing(SharedState.of(state.snapshot)))
    routing = decode_routing(loads(first))
    again = SharedState(
        config, "h", 1.0, routing.overrides, routing.rollout_weights, routing.reverts, routing.warm
    )
    assert dumps(encode_routing(again)) == first
    assert RoutingState(routing.overrides) == RoutingState(dict(routing.overrides))


# -- hostile input -----------------------------------------------------------------------------
def valid_harvest() -> dict[str, Any]:
    evs = [
        (0.1, False, False, 0.1, "/a", None, False, 0.01),
        (0.2, True, True, 0.1, "/b", 77, False, 0.02),
        (0.3, True, False, 0.1, "/a", 78, True, 0.5),
    ]
    tally = MirrorTally()
    tally.answered = tally.compared = 1
    tally.latency.add(0.1)
    return encode_harvest(T0 + 1, periods_of(evs), {"shop": tally})


Edit = Callable[[dict[str, Any]], Any]


def period(doc: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = doc["periods"]["shop"][0]
    return result


def setter(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> Any:
        path(doc)[key] = value
        return doc

    return edit


def without(path: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Edit:
    def edit(doc: dict[str, Any]) -> Any:
        del path(doc)[key]
        return doc

    return edit


def candidate_class(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in period(doc)["classes"] if c["counts"][2])


HOSTILE: list[tuple[str, Edit, str]] = [
    ("not an object", lambda d: [d], "expected an object"),
    ("unknown format", setter(lambda d: d, "v", 2), "format 2,"),
    ("no format", lambda d: {k: v for k, v in d.items() if k != "v"}, "format None,"),
    ("watermark a string", setter(lambda d: d, "watermark", "soon"), "watermark"),
    ("negative watermark", setter(lambda d: d, "watermark", -1.0), "watermark"),
    ("unknown field", setter(lambda d: d, "extra", 1), "unknown field 'extra'"),
    ("bad route name", lambda d: {**d, "periods": {"../x": []}}, "not a route name"),
    ("periods a list", setter(lambda d: d, "periods", []), "expected an object"),
    ("negative requests", setter(lambda d: period(d)["stable"], "requests", -3), "negative"),
    ("float requests", setter(lambda d: period(d)["stable"], "requests", 1.5), "whole number"),
    ("boolean requests", setter(lambda d: period(d)["stable"], "requests", True), "boolean"),
    ("huge count", setter(lambda d: period(d)["stable"], "requests", 10**30), "over the limit"),
    ("more errors than requests", setter(lambda d: period(d)["stable"], "errors", 9), "errors of"),
    (
        "unknown version",
        lambda d: setter(period, "canary", period(d)["stable"])(d),
        "unknown field 'canary'",
    ),
    ("a version missing", without(period, "candidate"), "missing field 'candidate'"),
    ("probability above 1", setter(period, "probability", 1.5), "probability"),
    ("end before start", setter(period, "end", T0 - 5), "is not a bucket"),
    ("a bucket of a day", setter(period, "end", T0 + 86400), "is not a bucket"),
    ("sticky a number", setter(period, "sticky", 1), "true or false"),
    (
        "bin out of range",
        setter(lambda d: period(d)["stable"]["latency"], "bins", [[MAX_BIN + 1, 1]]),
        "not a bin",
    ),
    (
        "bin twice",
        setter(lambda d: period(d)["stable"]["latency"], "bins", [[1, 1], [1, 1]]),
        "twice",
    ),
    ("empty bin", setter(lambda d: period(d)["stable"]["latency"], "bins", [[1, 0]]), "empty"),
    ("bin not a pair", setter(lambda d: period(d)["stable"]["latency"], "bins", [[1]]), "key"),
    (
        "huge bin list",
        setter(lambda d: period(d)["stable"]["latency"], "bins", [[0, 1]] * 100_000),
        "over the limit",
    ),
    (
        "negative latency sum",
        setter(lambda d: period(d)["stable"]["latency"], "sum", -1.0),
        "between",
    ),
    (
        "more latencies than requests",
        setter(lambda d: period(d)["stable"]["latency"], "bins", [[1, 5]]),
        "latencies of",
    ),
    ("classes do not add up", without(period, "classes"), "do not add up"),
    ("class counts short", setter(candidate_class, "counts", [0, 0, 1]), "expected 6"),
    (
        "class sticky errors over errors",
        setter(candidate_class, "counts", [0, 0, 2, 1, 0, 2]),
        "sticky errors",
    ),
    ("units over sticky errors", setter(candidate_class, "units", [[], [1, 2]]), "users for"),
    ("unit not 64-bit", setter(candidate_class, "units", [[], [2**64]]), "over the limit"),
    (
        "huge unit list",
        setter(candidate_class, "units", [[], list(range(UNITS_PER_BUCKET + 1))]),
        "over the limit",
    ),
    (
        "huge period list",
        lambda d: {**d, "periods": {"shop": [period(d)] * 2000}},
        "over the limit",
    ),
    (
        "buckets out of order",
        lambda d: {
            **d,
            "periods": {"shop": [{**period(d), "start": T0 + 5, "end": T0 + 6}, period(d)]},
        },
        "out of order",
    ),
    ("mirror negative", setter(lambda d: d["mirrors"]["shop"], "errors", -1), "negative"),
    (
        "mirror diverged over compared",
        setter(lambda d: d["mirrors"]["shop"], "diverged", 2),
        "diverged of",
    ),
    ("mirror a list", setter(lambda d: d["mirrors"], "shop", []), "expected an object"),
]


@pytest.mark.parametrize(("edit", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_bad_harvest_is_refused_with_its_reason(edit: Edit, reason: str) -> None:
    document = edit(copy.deepcopy(valid_harvest()))
    with pytest.raises(WireError, match=reason):
        decode_harvest("r2", document)


def test_the_valid_harvest_the_hostile_cases_start_from_is_valid() -> None:
    harvest = decode_harvest("r2", loads(dumps(valid_harvest())))
    assert harvest.periods["shop"][0].candidate.errors == 1
    assert harvest.mirrors["shop"].answered == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"v": 1, "watermark": NaN}', "not a number JSON allows"),
        ('{"v": 1, "watermark": Infinity}', "not a number JSON allows"),
        ('{"v": 1, "watermark": 1e999}', "not a finite number"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ('{"v": 1, "watermark": ', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        ('{"v": 1, "watermark": 0, "pad": "' + "x" * 2_000 + '"}', "over the limit"),
    ],
    ids=["nan", "infinity", "overflow", "deep nesting", "truncated", "not utf-8", "too big"],
)
def test_bad_json_is_refused(text: str | bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_harvest("r2", loads(text, limit=1_000 if "pad" in str(text) else 16 << 20))


def test_a_replica_id_must_be_a_short_string() -> None:
    with pytest.raises(WireError, match="empty"):
        decode_harvest("", {"v": 1, "watermark": 0})
    with pytest.raises(WireError, match="over the limit"):
        decode_harvest("r" * 1000, {"v": 1, "watermark": 0})


ROUTING_HOSTILE: list[tuple[str, Edit, str]] = [
    ("unknown format", setter(lambda d: d, "v", "1"), "format"),
    ("percent over 100", setter(lambda d: d["overrides"]["shop"], "percent", 150), "between"),
    ("percent NaN", setter(lambda d: d["overrides"]["shop"], "percent", math.nan), "finite"),
    ("source a number", setter(lambda d: d["overrides"]["shop"], "source", 7), "string"),
    ("closed a string", setter(lambda d: d["rollout_weights"]["api"], "closed", "no"), "true"),
    (
        "candidate too long",
        setter(lambda d: d["rollout_weights"]["api"], "candidate", "x" * 5000),
        "over the limit",
    ),
    (
        "backend without url",
        setter(lambda d: d["reverts"], "static", {"revision": "x"}),
        "not a backend",
    ),
    (
        "backend bad url",
        setter(lambda d: d["warm"], "static", {"url": ["ftp://x"]}),
        "not a backend",
    ),
    ("backend a string", setter(lambda d: d["warm"], "static", "http://x"), "expected a backend"),
    ("a mapping missing", without(lambda d: d, "warm"), "missing field 'warm'"),
    ("unknown field", setter(lambda d: d["overrides"]["shop"], "until", 5), "unknown field"),
]


def valid_routing() -> dict[str, Any]:
    state = RuntimeState()
    state.load(parse_routing(FILE), "h", 1.0)
    state.set_weight("shop", 30, 2.0)
    state.set_rollout_weight("api", 5, 3.0, "7")
    state.revert_to("static", BACKENDS[0], 4.0)
    state.keep_warm("static", BACKENDS[1])
    assert state.snapshot is not None
    return encode_routing(SharedState.of(state.snapshot))


@pytest.mark.parametrize(
    ("edit", "reason"), [h[1:] for h in ROUTING_HOSTILE], ids=[h[0] for h in ROUTING_HOSTILE]
)
def test_a_bad_routing_state_is_refused_with_its_reason(edit: Edit, reason: str) -> None:
    decode_routing(copy.deepcopy(valid_routing()))  # the starting point is valid
    with pytest.raises(WireError, match=reason):
        decode_routing(edit(copy.deepcopy(valid_routing())))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
harvest_keys = st.sampled_from(
    [
        "v",
        "watermark",
        "periods",
        "mirrors",
        "shop",
        "stable",
        "bins",
        "sum",
        "requests",
        "classes",
        "counts",
        "units",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_no_document_crashes_a_decoder(data: st.DataObject) -> None:
    """Anything at all, or a valid document with one value replaced by anything: refused with
    a WireError, or decoded."""
    anything = data.draw(json_values)
    for decode in (lambda d: decode_harvest("r2", d), decode_routing):
        with contextlib.suppress(WireError):
            decode(anything)
    document = valid_harvest()
    node: Any = document
    while isinstance(node, (dict, list)) and node:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()) or not isinstance(node[key], (dict, list)):
            node[key] = data.draw(json_values | harvest_keys)
            break
        node = node[key]
    with contextlib.suppress(WireError):
        decode_harvest("r2", document)
