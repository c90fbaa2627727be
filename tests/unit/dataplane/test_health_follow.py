"""The health book follows a swap by redoing only the changed routes, and ends exactly where
redoing every route would: same addresses, states, back-offs, readiness and checks."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.health import HealthBook
from splitproxy.dataplane.state import RuntimeState, Snapshot
from splitproxy.dataplane.swapdiff import changed_routes

URLS = ["http://a:80", "http://b:80", "http://c:80"]
NAMES = ["r0", "r1", "r2", "r3"]
HEALTH = "health: {path: /h, unhealthy_after: 1, healthy_after: 2}"

route_defs = st.fixed_dictionaries(
    {
        "stable": st.lists(st.sampled_from(URLS), min_size=1, max_size=2, unique=True),
        "stable_health": st.booleans(),
        "candidate": st.none() | st.tuples(st.sampled_from(URLS), st.sampled_from(["1", "2"])),
        "rollout": st.booleans(),
    }
)
files = st.dictionaries(st.sampled_from(NAMES), route_defs, min_size=1)


def text_of(routes: dict[str, dict[str, Any]]) -> str:
    lines = ["routes:"]
    for name in routes:  # in the order drawn: routes move between files too
        spec = routes[name]
        health = f", {HEALTH}" if spec["stable_health"] else ""
        lines += [f"  - name: {name}", f"    match: {{path_prefix: /{name}}}"]
        lines.append(f"    stable: {{url: {spec['stable']}{health}}}")
        if spec["candidate"] is not None:
            url, revision = spec["candidate"]
            lines.append(f"    candidate: {{url: '{url}', revision: '{revision}'}}")
            if spec["rollout"]:
                lines.append("    rollout: {steps: [10, 50]}")
    return "\n".join(lines) + "\n"


events = st.lists(
    st.tuples(
        st.sampled_from(["failed", "succeeded", "check_ok", "check_bad", "tick", "weight"]),
        st.sampled_from(NAMES),
        st.sampled_from([STABLE, CANDIDATE]),
        st.sampled_from(URLS),
    ),
    max_size=12,
)


def apply(book: HealthBook, state: RuntimeState, event: tuple[str, str, Version, str]) -> None:
    kind, name, version, url = event
    rh = book.route(name)
    backend = rh.backend(version) if rh is not None else None
    if kind == "tick":
        book.tick(book.now + 7.0)
    elif backend is None:
        return
    elif kind == "failed":
        book.failed(backend, url, "refused")
    elif kind == "succeeded":
        book.succeeded(backend, url)
    else:
        for probe in book.probes():
            if (probe.route, probe.version, probe.url) == (name, version, url):
                book.check(probe, "success" if kind == "check_ok" else "timeout")


def picture(book: HealthBook) -> Any:
    routes = {}
    for name, rh in book.routes.items():
        backends = []
        for b in (rh.stable, rh.candidate):
            if b is None:
                continue
            addresses = [
                (a.url, a.state, a.available, a.failures, a.ejections, a.ejected_until,
                 a.probing, a.trial_since, a.since, a.ready, a.active_successes,
                 a.active_failures, a.last_check, dict(a.checks), a.backend is b)
                for a in b.addresses
            ]  # fmt: skip
            backends.append((b.version, b.all_available, b.any_available, b.clean,
                             b.tracked, b.ready, addresses))  # fmt: skip
        routes[name] = (rh.candidate_up, rh.unhealthy_since, backends)
    ejected = sorted((a.backend.route, a.backend.version, a.url) for a in book._ejected)
    return routes, list(book.routes), book.probes(), ejected, book._candidates


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(files, events, events), min_size=1, max_size=5))
def test_following_the_changes_equals_redoing_every_route(
    steps: list[tuple[dict[str, dict[str, Any]], list[Any], list[Any]]],
) -> None:
    state = RuntimeState()
    incremental, full = HealthBook(), HealthBook()
    for book in (incremental, full):
        book.tick(1000.0)
    state.subscribe(incremental.on_swap)
    state.subscribe(lambda old, new: full.resync(new))
    for routes, before, after in steps:
        for event in before:  # health news between reloads, and weight-only swaps
            if event[0] == "weight":
                snapshot = state.snapshot
                route = snapshot.config.route(event[1]) if snapshot is not None else None
                if route is not None and route.candidate is not None:
                    state.set_weight(event[1], 33.0, 1000.0)
                continue
            for book in (incremental, full):
                apply(book, state, event)
        text = text_of(routes)
        state.load(parse_routing(text), content_hash(text), 1000.0)
        for event in after:
            if event[0] != "weight":
                for book in (incremental, full):
                    apply(book, state, event)
        assert picture(incremental) == picture(full)


def test_a_reload_that_changes_one_route_redoes_only_that_one() -> None:
    state = RuntimeState()
    snapshots: list[Snapshot] = []
    state.subscribe(lambda old, new: snapshots.append(new))
    first = {n: {"stable": [URLS[0]], "stable_health": False, "candidate": None,
                 "rollout": False} for n in NAMES}  # fmt: skip
    second = {**first, "r2": {**first["r2"], "stable": [URLS[1]]}}
    for routes in (first, second):
        text = text_of(routes)
        state.load(parse_routing(text), content_hash(text), 1000.0)
    diff = changed_routes(snapshots[0], snapshots[1])
    assert (diff.changed, diff.removed, diff.renamed) == (("r2",), (), False)
    book = HealthBook()
    book.on_swap(None, snapshots[0])
    kept = book.route("r0")
    book.on_swap(snapshots[0], snapshots[1])
    assert book.route("r0") is kept  # untouched, not rebuilt
    assert [a.url for a in book.routes["r2"].stable.addresses] == [URLS[1]]
