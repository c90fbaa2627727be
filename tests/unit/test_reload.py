"""The reload path without a proxy: `splitproxy.reload.Reloader`, `PoolJanitor`, the change log
line, and the runtime-override rule of `splitproxy.dataplane.state`."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from splitproxy import reload as reload_module
from splitproxy.config import RoutingConfig, load_document, parse_routing, read_routing_file
from splitproxy.dataplane.pools import PoolRegistry
from splitproxy.dataplane.state import RuntimeState, Snapshot, content_hash, upstream_keys
from splitproxy.errors import ConfigError
from splitproxy.reload import (
    UNREADABLE,
    PoolJanitor,
    Reloader,
    ReloadOptions,
    describe_changes,
    file_digest,
    file_signature,
)

MANUAL = ReloadOptions(watch=False, poll_interval=0, debounce=0.02)


def routes(*weights: float, revision: str | None = None, cand: str = "http://c:8080") -> str:
    doc: dict[str, Any] = {"revision": revision} if revision else {}
    doc["routes"] = [
        {"name": f"r{i}", "stable": f"http://s{i}:8080", "candidate": cand, "weight": w}
        for i, w in enumerate(weights)
    ]
    return yaml.safe_dump(doc, sort_keys=False)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Harness:
    def __init__(self, path: Path, options: ReloadOptions) -> None:
        self.path = path
        self.state = RuntimeState()
        self.records: list[bool] = []
        config, digest = read_routing_file(path)
        self.state.load(config, digest, 0.0)
        self.reloader = Reloader(path, self.state, self.record, options, clock=lambda: 1.0)

    def record(self, ok: bool, now: float) -> None:
        self.records.append(ok)

    @property
    def snapshot(self) -> Snapshot:
        snapshot = self.state.snapshot
        assert snapshot is not None
        return snapshot


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    harnesses: list[Harness] = []

    async def build(text: str, options: ReloadOptions = MANUAL) -> Harness:
        path = tmp_path / "routes.yaml"
        path.write_text(text)
        h = Harness(path, options)
        h.reloader.start()
        harnesses.append(h)
        return h

    yield build
    for h in harnesses:
        await h.reloader.stop()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- the reload path -----------------------------------------------------------------------


async def test_good_bad_identical(make: Make) -> None:
    h = await make(routes(0))
    first = h.snapshot

    same = await h.reloader.reload_now()
    assert (same.loaded, same.changed, same.problems) == (True, False, ())
    assert h.snapshot is first
    assert h.records == []

    write(h.path, routes(100, revision="two"))
    good = await h.reloader.reload_now()
    assert (good.loaded, good.changed) == (True, True)
    assert good.revision == h.snapshot.revision
    assert good.revision is not None
    assert good.revision.startswith("two+")
    assert h.snapshot.routes[0].weight_bp == 10_000
    assert h.snapshot.content_hash == content_hash(h.path.read_bytes())
    second = h.snapshot

    write(h.path, routes(100, 101))
    bad = await h.reloader.reload_now()
    assert (bad.loaded, bad.changed) == (False, False)
    assert bad.problems == ("routes[1].weight: must be <= 100",)
    assert bad.revision == second.revision
    assert h.snapshot is second
    assert h.reloader.last_error == f"{h.path}: routes[1].weight: must be <= 100"
    assert h.records == [True, False]

    # an explicit trigger asks again and is answered (and counted) again
    assert not (await h.reloader.reload_now()).loaded
    assert h.records == [True, False, False]


async def test_file_events_report_the_same_bad_content_once(make: Make) -> None:
    h = await make(routes(0))
    write(h.path, "routes: {}\n")
    for _ in range(3):
        passes = h.reloader.passes
        h.reloader.request("poll")
        await until(lambda passes=passes: h.reloader.passes > passes)  # type: ignore[misc]
    assert h.records == [False]
    assert h.reloader.last_error is not None

    h.path.unlink()  # a vanished file: also reported once
    for _ in range(2):
        passes = h.reloader.passes
        h.reloader.request("watch")
        await until(lambda passes=passes: h.reloader.passes > passes)  # type: ignore[misc]
    assert h.records == [False, False]
    assert "cannot read the file" in (h.reloader.last_error or "")


async def test_a_burst_of_events_is_one_reload(make: Make) -> None:
    h = await make(routes(0), ReloadOptions(watch=False, poll_interval=0, debounce=0.1))
    for weight in range(1, 51):
        write(h.path, routes(weight))
        h.reloader.request("watch")
    await until(lambda: h.reloader.passes == 1)
    await asyncio.sleep(0.3)
    assert h.reloader.passes == 1
    assert h.records == [True]
    assert h.snapshot.routes[0].weight_bp == 5000  # the last write


async def test_a_stream_of_events_cannot_put_a_reload_off_past_max_delay(make: Make) -> None:
    options = ReloadOptions(watch=False, poll_interval=0, debounce=60.0, max_delay=0.1)
    h = await make(routes(0), options)
    write(h.path, routes(7))
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0
    while loop.time() < end and h.reloader.passes == 0:
        h.reloader.request("watch")  # never quiet for 60 s
        await asyncio.sleep(0.01)
    assert h.reloader.passes >= 1
    assert h.snapshot.routes[0].weight_bp == 700


async def test_an_explicit_request_skips_the_debounce(make: Make) -> None:
    h = await make(routes(0), ReloadOptions(watch=False, poll_interval=0, debounce=60.0))
    write(h.path, routes(3))
    h.reloader.request("watch")  # would wait up to max_delay (1 s) ...
    async with asyncio.timeout(0.9):
        outcome = await h.reloader.reload_now("admin")  # ... the admin does not
    assert outcome.changed
    assert outcome.trigger == "admin,watch"


async def test_poll_sees_rename_and_in_place_edits(make: Make) -> None:
    h = await make(routes(0), ReloadOptions(watch=False, poll_interval=0.02, debounce=0.01))
    write(h.path, routes(10))
    await until(lambda: h.snapshot.routes[0].weight_bp == 1000)
    h.path.write_text(routes(20))
    await until(lambda: h.snapshot.routes[0].weight_bp == 2000)


async def test_an_unexpected_error_is_reported_and_the_worker_lives_on(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await make(routes(0))
    write(h.path, routes(5))
    interval = sys.getswitchinterval()

    def boom(text: str, source: str = "") -> dict[str, object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(reload_module, "load_document", boom)
    outcome = await h.reloader.reload_now()
    assert not outcome.loaded
    assert outcome.problems == ("internal error: RuntimeError('boom')",)
    assert gc.isenabled()  # the collector, paused while the file loads, is back on
    assert sys.getswitchinterval() == interval  # and threads switch as often as before
    monkeypatch.setattr(reload_module, "load_document", load_document)
    assert (await h.reloader.reload_now()).changed


async def test_reload_now_needs_a_running_reloader(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(routes(0))
    h = Harness(path, MANUAL)
    with pytest.raises(RuntimeError):
        await h.reloader.reload_now()
    h.reloader.start()
    h.reloader.start()  # idempotent
    assert (await h.reloader.admin_reload()) == (True, [])
    await h.reloader.stop()
    await h.reloader.stop()


async def test_stop_answers_callers_still_waiting(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await make(routes(0))
    gate = asyncio.Event()  # never set: the read hangs, like one on a dead network mount

    async def hanging(func: Any, /, *args: Any) -> Any:
        await gate.wait()

    monkeypatch.setattr(asyncio, "to_thread", hanging)
    first = asyncio.create_task(h.reloader.reload_now())  # runs, stuck reading
    await asyncio.sleep(0.05)
    second = asyncio.create_task(h.reloader.reload_now())  # queued behind it
    await asyncio.sleep(0.05)
    await h.reloader.stop()
    assert (await first).problems == ("the proxy is stopping",)
    assert (await second).problems == ("the proxy is stopping",)


# -- reading and signatures ----------------------------------------------------------------


def test_signature_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    assert file_signature(path) is None
    assert file_digest(path) == UNREADABLE
    path.write_bytes(b"a: 1\n")
    before = file_signature(path)
    assert file_digest(path) == content_hash(b"a: 1\n") == content_hash("a: 1\n")
    write(path, "a: 1\n")  # same bytes, new inode
    assert file_signature(path) != before
    link = tmp_path / "link.yaml"
    link.symlink_to(path.name)
    assert file_signature(link) == file_signature(path)


def test_read_routing_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_routing_file(path)
    with pytest.raises(ConfigError, match="cannot read the file"):
        read_routing_file(tmp_path / "missing.yaml")


def test_describe_changes() -> None:
    def cfg(text: str) -> RoutingConfig:
        return parse_routing(text)

    a = cfg(routes(0, 10))
    assert describe_changes(None, a) == "2 route(s)"
    assert describe_changes(a, a) == "no route changed"
    assert describe_changes(a, cfg(routes(0, 20))) == "changed r1 (weight 10 -> 20)"
    assert describe_changes(a, cfg(routes(0))) == "removed r1"
    assert describe_changes(a, cfg(routes(0, 10, 5))) == "added r2"
    assert describe_changes(a, cfg(routes(0, 10, cand="http://d"))) == "changed r0, r1"
    swapped = cfg(routes(0, 10)).model_copy(update={"routes": tuple(reversed(a.routes))})
    assert describe_changes(a, swapped) == "route order changed"


# -- pools of removed upstreams ------------------------------------------------------------


class _Clock:
    now = 0.0


def _snapshot(state: RuntimeState, text: str) -> Snapshot:
    return state.load(parse_routing(text), content_hash(text), 0.0)


async def test_janitor_retires_pools_no_route_names() -> None:
    registry = PoolRegistry(_Clock(), connect_timeout=1.0, idle_timeout=1.0)
    state = RuntimeState()
    janitor = PoolJanitor(registry, state, grace=0.05)
    state.subscribe(janitor.on_swap)
    first = _snapshot(state, routes(0, 0, cand="http://c:1"))
    for key in upstream_keys(first):
        registry.get(key)
    kept, gone = registry.get(("s0", 8080)), registry.get(("c", 1))

    _snapshot(state, routes(0))  # drops route r1 (s1) and candidate c:1 -> c:8080
    assert set(registry.pools) == {("s0", 8080)}
    assert len(janitor.retiring) == 2
    straggler = registry.get(("c", 1))  # a request still on the old snapshot
    await until(lambda: not janitor.retiring and gone.closed)
    assert straggler.closed  # retired by the closing pass, after its own grace
    assert registry.pools == {("s0", 8080): kept}
    assert not kept.closed
    assert janitor.closed == 3


async def test_janitor_abort_all_cancels_pending_closes() -> None:
    registry = PoolRegistry(_Clock(), connect_timeout=1.0, idle_timeout=1.0)
    state = RuntimeState()
    janitor = PoolJanitor(registry, state, grace=60)
    state.subscribe(janitor.on_swap)
    _snapshot(state, routes(0))
    pool = registry.get(("s0", 8080))
    _snapshot(state, routes(0).replace("s0", "s9"))
    assert pool in janitor.retiring
    janitor.abort_all()
    assert janitor.retiring == {}
    assert pool.closed


# -- runtime overrides vs the file -----------------------------------------------------------


def test_a_listener_that_fails_does_not_stop_the_swap_or_the_others() -> None:
    state = RuntimeState()
    seen: list[Snapshot] = []

    def broken(old: Snapshot | None, new: Snapshot) -> None:
        raise ValueError("bug")

    state.subscribe(broken)
    state.subscribe(lambda old, new: seen.append(new))
    snapshot = _snapshot(state, routes(0))
    assert state.snapshot is snapshot
    assert seen == [snapshot]


def test_override_rule() -> None:
    state = RuntimeState()
    _snapshot(state, routes(0, 0))
    state.set_weight("r0", 40, 5.0)
    state.set_weight("r1", 60, 5.0)
    # r1's weight changes in the file; r0 is untouched -> r0 keeps its override, r1 loses it
    after = _snapshot(state, routes(0, 10, revision="x"))
    assert set(after.overrides) == {"r0"}
    assert after.routes[0].weight_bp == 4000
    assert after.routes[1].weight_bp == 1000


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 100)), max_size=25))
def test_an_override_lives_exactly_while_the_file_leaves_its_route_alone(
    steps: list[tuple[bool, int, int]],
) -> None:
    """Random interleavings of file loads and runtime weights: the effective weight is the
    override if one was set since the file last changed that route, else the file's."""
    state = RuntimeState()
    file_weights = [0, 0, 0]
    _snapshot(state, routes(*file_weights))
    expected_override: dict[int, int] = {}
    for is_file, index, weight in steps:
        if is_file:
            if file_weights[index] != weight:
                expected_override.pop(index, None)
            file_weights[index] = weight
            _snapshot(state, routes(*file_weights))
        else:
            state.set_weight(f"r{index}", weight, 0.0)
            expected_override[index] = weight
        snapshot = state.snapshot
        assert snapshot is not None
        for i, route in enumerate(snapshot.routes):
            want = expected_override.get(i, file_weights[i])
            assert route.weight_bp == want * 100
            assert (f"r{i}" in snapshot.overrides) == (i in expected_override)


async def test_a_watch_that_cannot_start_leaves_the_poll_working(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchfiles

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("inotify watch limit reached")

    monkeypatch.setattr(watchfiles, "awatch", broken)
    h = await make(routes(0), ReloadOptions(poll_interval=0.02, debounce=0.01))
    write(h.path, routes(30))
    await until(lambda: h.snapshot.routes[0].weight_bp == 3000)
    assert not h.reloader.watching
    async with asyncio.timeout(2):  # the watch's retry back-off does not hold up stopping
        await h.reloader.stop()


async def test_a_reload_of_an_edited_file_reuses_the_routes_it_did_not_touch(make: Make) -> None:
    h = await make(routes(0, 5, 10))
    write(h.path, routes(0, 5, 20))
    assert (await h.reloader.reload_now()).changed  # the reloader has now seen each route
    before = h.snapshot
    write(h.path, routes(0, 7, 20))
    assert (await h.reloader.reload_now()).changed
    after = h.snapshot
    assert after.routes[0] is before.routes[0]
    assert after.config.routes[2] is before.config.routes[2]  # not validated again
    assert after.routes[1] is not before.routes[1]
    assert after.routes[1].weight_bp == 700
    write(h.path, routes(0, 7, 20) + "routes: []\n")  # a bad file still rejects the whole
    outcome = await h.reloader.reload_now()
    assert not outcome.loaded
    assert h.snapshot is after
