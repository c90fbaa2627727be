"""How a mirrored answer is judged against the user's (`dataplane.mirror_compare`), and how
the route's status shows the results (`admin.mirror_view`, typed as `views.MirrorView`)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from splitproxy.admin import route_view
from splitproxy.config import MirrorCompare
from splitproxy.dataplane.mirror_compare import (
    Answer,
    MirrorOutcome,
    compare,
    json_difference,
    new_digest,
    status_class,
    strip,
)
from splitproxy.metrics import MIRROR_EXAMPLES, Recorder
from splitproxy.views import RouteView
from tests.unit.fakes import ROUTES, runtime_state
from tests.unit.test_admin_views import conforms

NONE = MirrorCompare()
HASH = MirrorCompare(body="hash")


def answer(status: int, body: bytes = b"", small: bool = False) -> Answer:
    digest = new_digest()
    digest.update(body)
    return Answer(status, digest.digest(), body if small else None, len(body))


@pytest.mark.parametrize(
    ("a", "b", "differed"),
    [
        (200, 204, None),
        (200, 302, "status 200 vs 302"),
        (404, 400, None),
        (200, 500, "status 200 vs 500"),
        (503, 500, None),
    ],
)
def test_statuses_compare_by_class(a: int, b: int, differed: str | None) -> None:
    assert compare(answer(a, b"x"), answer(b, b"y"), NONE) == differed


def test_status_class() -> None:
    assert [status_class(s) for s in (101, 200, 399, 404, 599)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx",
    ]  # fmt: skip


def test_bodies_compare_by_digest_with_body_hash() -> None:
    assert compare(answer(200, b"same"), answer(200, b"same"), HASH) is None
    assert compare(answer(200, b"abc"), answer(200, b"abcd"), HASH) == "body (3 vs 4 bytes)"
    assert compare(answer(200, b"abc"), answer(200, b"abcd"), NONE) is None


def test_json_ignore_drops_the_paths_before_comparing() -> None:
    settings = MirrorCompare(body="hash", json_ignore=("meta.at", "items.*.ts"))
    a = b'{"id": 1, "meta": {"at": 1, "v": 2}, "items": [{"ts": 5, "n": 1}, {"ts": 6, "n": 2}]}'
    b = b'{"items": [{"n": 1, "ts": 9}, {"ts": 8, "n": 2}], "meta": {"v": 2, "at": 3}, "id": 1}'
    assert compare(answer(200, a, True), answer(200, b, True), settings) is None
    c = b.replace(b'"n": 2', b'"n": 3')
    assert compare(answer(200, a, True), answer(200, c, True), settings) == "json at items.1.n"
    # not JSON, or too large to have been kept: the digests decide
    assert (
        compare(answer(200, a, True), answer(200, b), settings)
        == f"body ({len(a)} vs {len(b)} bytes)"
    )
    assert compare(answer(200, b"<html>", True), answer(200, b"<html>", True), settings) is None


def test_strip_leaves_the_document_alone() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [{"x": 1}, {"x": 2, "y": 3}], "s": "v"}
    before = copy.deepcopy(doc)
    assert strip(doc, ("a.b", "l.*.x", "s.nope", "zz")) == {
        "a": {"c": 2},
        "l": [{}, {"y": 3}],
        "s": "v",
    }
    assert strip(doc, ("*",)) == {}
    assert strip(doc, ("l.*",)) == {**doc, "l": []}
    assert doc == before


def test_json_difference_names_the_first_place() -> None:
    assert json_difference({"a": [1, 2]}, {"a": [1, 2]}) is None
    assert json_difference({"a": [1, 2]}, {"a": [1]}) == "a (length 2 vs 1)"
    assert json_difference({"a": 1}, {"b": 1}) == "a"
    assert json_difference({"a": 1}, {"a": 1.0}) == "a"  # 1 and 1.0 are different texts
    assert json_difference({"a": True}, {"a": 1}) == "a"
    assert json_difference(1, 2) == ""


def outcome(result: Any, path: str = "/p", status: int | None = 200) -> MirrorOutcome:
    return MirrorOutcome(
        result, "GET", path, 200, status, 0.010, 0.020, "" if result == "match" else "x"
    )


def mirrored_routes() -> dict[str, Any]:
    config = copy.deepcopy(ROUTES)
    config["routes"][0]["mirror"] = {"percent": 10, "compare": {"body": "hash"}}
    return config


def test_the_route_view_shows_counts_rate_latencies_and_the_last_examples() -> None:
    state = runtime_state(mirrored_routes())
    recorder = Recorder(state, clock=lambda: 1000.0)
    state.subscribe(recorder.on_swap)
    snapshot = state.snapshot
    assert snapshot is not None
    for _ in range(3):
        recorder.mirror_compared("shop", outcome("match"))
    for i in range(MIRROR_EXAMPLES + 5):
        recorder.mirror_compared("shop", outcome("diverged", f"/d{i}"))
    recorder.mirror_compared("shop", outcome("error", "/e", None))
    recorder.mirror_result("shop", "dropped")
    recorder.mirror_result("shop", "skipped")
    assert recorder.mirror_counts("shop") == {
        "match": 3, "diverged": 25, "error": 1, "dropped": 1, "skipped": 1,
    }  # fmt: skip
    assert recorder.mirror_counts("nope")["match"] == 0
    views = [route_view(snapshot, r, recorder, 1000.0) for r in snapshot.routes]
    sent = json.loads(json.dumps(views))
    assert [p for view in sent for p in conforms(view, RouteView)] == []
    assert sent[1]["mirror"] is None
    mirror = sent[0]["mirror"]
    assert mirror["divergence_rate"] == round(25 / 28, 6)
    assert len(mirror["examples"]) == MIRROR_EXAMPLES
    assert mirror["examples"][-1] == {
        "at": 1000.0, "method": "GET", "path": "/e", "primary_status": 200,
        "mirror_status": None, "differed": "x",
    }  # fmt: skip
    assert mirror["examples"][0]["path"] == "/d6"  # the oldest ones went
    assert mirror["latency_ms"]["stable"]["p50"] == 10.0
    assert mirror["latency_ms"]["candidate"]["p99"] == 20.0
    # the candidate's answers to copies are never user traffic
    assert recorder.requests("shop", "candidate", 200) == 0
    assert recorder.summary("shop", 1000.0)["candidate"].requests == 0
