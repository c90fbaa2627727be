"""Hot reload on a running proxy: every trigger, all-or-nothing swaps, bad files, pools.

Timings are never asserted tighter than "within a few seconds": each check polls with a
bounded loop (`eventually`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.config.vocabulary import FailureKind, Version
from splitproxy.dataplane.context import ExchangeObserver
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.state import Snapshot, upstream_keys
from splitproxy.reload import ReloadOptions
from splitproxy.server import Server
from splitproxy.settings import Settings

# -- upstreams and the proxy ---------------------------------------------------------------


@dataclass
class Upstream:
    """An aiohttp server answering with its name; ``/slow`` waits for ``release``."""

    name: str
    server: TestServer
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def key(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.server.port or 0))


async def _upstream(name: str) -> Upstream:
    up: Upstream | None = None

    async def handler(request: web.Request) -> web.Response:
        assert up is not None
        if request.path == "/slow":
            up.slow_started.set()
            async with asyncio.timeout(10):
                await up.release.wait()
        return web.Response(text=up.name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    up = Upstream(name, server)
    return up


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    ups = {name: await _upstream(name) for name in ("stable", "candidate", "other")}
    yield ups
    for up in ups.values():
        up.release.set()
        await up.server.close()


Start = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(routes, options=ReloadOptions(...), path=..., **settings)``."""
    servers: list[Server] = []

    async def run(
        routes: dict[str, Any] | str,
        options: ReloadOptions | None = None,
        path: Path | None = None,
        **overrides: Any,
    ) -> Server:
        path = path or tmp_path / "routes.yaml"
        if not path.exists():
            path.write_text(dump(routes))
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "config": path,
            "access_log": False,
            "drain_timeout": 2.0,
            **overrides,
        }
        server = Server(Settings(**values), reload_options=options or ReloadOptions())
        servers.append(server)
        await server.start()
        return server

    yield run
    for server in servers:
        await server.shutdown()


def dump(routes: dict[str, Any] | str) -> str:
    return routes if isinstance(routes, str) else yaml.safe_dump(routes, sort_keys=False)


def app_route(ups: dict[str, Upstream], weight: float, **fields: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "stable": ups["stable"].url,
        "candidate": {"url": ups["candidate"].url, "revision": "2"},
        "weight": weight,
        **fields,
    }


def config(*routes: dict[str, Any], revision: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"revision": revision} if revision else {}
    out["routes"] = list(routes)
    return out


# Only the watch: the poll could otherwise be what saw the change.
WATCH_ONLY = ReloadOptions(poll_interval=0, debounce=0.05)
POLL_ONLY = ReloadOptions(watch=False, poll_interval=0.1, debounce=0.05)
MANUAL = ReloadOptions(watch=False, poll_interval=0)


# -- ways to change a file -------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """What editors and careful tools do: a temp file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite the same inode (``cat > file``, some editors, bind mounts)."""
    with path.open("r+") as f:
        f.truncate(0)
        f.write(text)


def move_from_elsewhere(path: Path, text: str) -> None:
    """``mv /tmp/x routes.yaml``: a temp file written in another directory, moved over."""
    staging = path.parent.parent / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / "new.yaml"
    tmp.write_text(text)
    shutil.move(tmp, path)


class ConfigMapDir:
    """A Kubernetes ConfigMap volume: ``routes.yaml -> ..data/routes.yaml``, ``..data ->
    ..<timestamp>``; an update writes a new timestamped dir and renames ``..data_tmp`` over
    ``..data`` (the file's own directory entry never changes)."""

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0
        self._write(text)
        (root / "routes.yaml").symlink_to("..data/routes.yaml")

    @property
    def path(self) -> Path:
        return self.root / "routes.yaml"

    def _write(self, text: str) -> None:
        self.generation += 1
        gen = self.root / f"..gen_{self.generation}"
        gen.mkdir()
        (gen / "routes.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(gen.name)
        os.replace(tmp, self.root / "..data")
        old = self.root / f"..gen_{self.generation - 1}"
        if old.exists():
            shutil.rmtree(old)

    def update(self, text: str) -> None:
        self._write(text)


# -- checks --------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within}s: {check.__name__}")
        await asyncio.sleep(0.05)


async def get(server: Server, path: str = "/") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.listen_port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def admin(server: Server, method: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"http://127.0.0.1:{server.admin_port}{path}",
            headers={"Content-Type": "application/json"},  # mutations are JSON only
        ) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def split(server: Server, n: int = 20) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{server.listen_port}/") as resp:
                seen[await resp.text()] += 1
    return seen


def snap(server: Server) -> Snapshot:
    snapshot = server.state.snapshot
    assert snapshot is not None
    return snapshot


async def serves_only(server: Server, name: str) -> bool:
    return await split(server, 10) == Counter({name: 10})


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


# -- triggers: weight 0 -> 100 applies within seconds ------------------------------------------


@pytest.mark.parametrize(
    "write", [write_atomic, write_in_place, move_from_elsewhere], ids=lambda f: f.__name__
)
async def test_watch_applies_weight_0_to_100(
    start: Start, upstreams: dict[str, Upstream], write: Callable[[Path, str], None]
) -> None:
    server = await start(config(app_route(upstreams, 0)), WATCH_ONLY)
    assert await serves_only(server, "stable")
    write(server.settings.config, dump(config(app_route(upstreams, 100))))  # type: ignore[arg-type]

    async def moved() -> bool:
        return await serves_only(server, "candidate")

    await eventually(moved)
    assert server.reloader is not None
    assert server.reloader.watching
    assert server.recorder.reloads.success == 2  # start-up and this change


async def test_watch_follows_a_configmap_symlink_swap(
    start: Start, upstreams: dict[str, Upstream], tmp_path: Path
) -> None:
    volume = ConfigMapDir(tmp_path / "config", dump(config(app_route(upstreams, 0))))
    server = await start({}, WATCH_ONLY, path=volume.path)
    assert await serves_only(server, "stable")
    for generation, (weight, name) in enumerate([(100, "candidate"), (0, "stable")]):
        volume.update(dump(config(app_route(upstreams, weight), revision=f"g{generation}")))

        async def moved(name: str = name) -> bool:
            return await serves_only(server, name)

        await eventually(moved)
    assert snap(server).revision.startswith("g1+")


@pytest.mark.parametrize("write", [write_atomic, write_in_place], ids=lambda f: f.__name__)
async def test_poll_alone_applies_weight_0_to_100(
    start: Start, upstreams: dict[str, Upstream], write: Callable[[Path, str], None]
) -> None:
    server = await start(config(app_route(upstreams, 0)), POLL_ONLY)
    write(server.settings.config, dump(config(app_route(upstreams, 100))))  # type: ignore[arg-type]

    async def moved() -> bool:
        return await serves_only(server, "candidate")

    await eventually(moved)
    assert server.reloader is not None
    assert not server.reloader.watching


async def test_poll_sees_a_change_that_keeps_size_and_mtime(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    """A coarse-mtime file system: same size, same mtime; the periodic hash still sees it."""
    options = ReloadOptions(watch=False, poll_interval=0.05, full_check_every=3, debounce=0.01)
    server = await start(config(app_route(upstreams, 10)), options)
    path = server.settings.config
    assert path is not None
    before = path.stat()
    write_in_place(path, dump(config(app_route(upstreams, 90))))  # same length as "10"
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size

    async def applied() -> bool:
        return snap(server).routes[0].weight_bp == 9000

    await eventually(applied)


async def test_sighup_reloads(start: Start, upstreams: dict[str, Upstream]) -> None:
    server = await start(config(app_route(upstreams, 0)), MANUAL)
    loop = asyncio.get_running_loop()
    server.install_signal_handlers()
    try:
        write_in_place(server.settings.config, dump(config(app_route(upstreams, 100))))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert await serves_only(server, "stable")  # no watch, no poll: nothing yet
        os.kill(os.getpid(), signal.SIGHUP)

        async def moved() -> bool:
            return await serves_only(server, "candidate")

        await eventually(moved)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def test_admin_reload_returns_the_outcome_and_errors(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    server = await start(config(app_route(upstreams, 0)), MANUAL)
    path = server.settings.config
    assert path is not None
    first = snap(server).revision

    status, body = await admin(server, "POST", "/api/v1/reload")  # identical: a no-op
    assert (status, body) == (200, {"loaded": True, "revision": first, "errors": []})
    assert snap(server).revision == first

    write_atomic(path, dump(config(app_route(upstreams, 100), revision="r2")))
    status, body = await admin(server, "POST", "/api/v1/reload")
    assert status == 200
    assert body["loaded"] is True
    assert body["revision"] == snap(server).revision
    assert body["revision"].startswith("r2+")
    assert await serves_only(server, "candidate")

    write_atomic(path, dump(config(app_route(upstreams, 150))))
    status, body = await admin(server, "POST", "/api/v1/reload")
    assert status == 422
    assert body == {
        "loaded": False,
        "revision": snap(server).revision,
        "errors": ["routes[0].weight: must be <= 100"],
    }
    assert body["revision"].startswith("r2+")
    assert await serves_only(server, "candidate")


# -- a bad file never hurts traffic ------------------------------------------------------------


async def test_a_broken_file_keeps_the_old_config_and_is_reported(
    start: Start,
    upstreams: dict[str, Upstream],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    server = await start(config(app_route(upstreams, 100)), POLL_ONLY)
    path = server.settings.config
    assert path is not None
    good = snap(server)

    # a schema error: reported with its field path
    # on the logger itself: `logs.configure` (run by any in-process `serve`) stops propagation
    reload_log = logging.getLogger("splitproxy.reload")
    reload_log.addHandler(caplog.handler)
    request.addfinalizer(lambda: reload_log.removeHandler(caplog.handler))
    write_atomic(path, dump(config(app_route(upstreams, 100, colour="red"))))

    async def rejected() -> bool:
        return server.recorder.reloads.failure == 1

    await eventually(rejected)
    assert snap(server) is good
    assert await serves_only(server, "candidate")
    assert f"{path}: routes[0].colour: unknown key" in caplog.text
    status, body = await admin(server, "GET", "/api/v1/status")
    assert status == 200
    assert body["config"]["revision"] == good.revision
    assert body["config"]["last_reload_successful"] is False
    assert body["config"]["last_error"] == f"{path}: routes[0].colour: unknown key"
    _, text = await admin(server, "GET", "/metrics")
    assert metric(text, 'splitproxy_config_reloads_total{result="failure"}') == 1
    assert metric(text, "splitproxy_config_last_reload_successful") == 0

    # the poll keeps seeing the same bad content: it is reported once, not every poll
    await asyncio.sleep(0.5)
    assert server.recorder.reloads.failure == 1

    # a YAML error: reported with its line
    write_atomic(path, "routes:\n  - name: app\n    stable: [unclosed\n")

    async def rejected_again() -> bool:
        return server.recorder.reloads.failure == 2

    await eventually(rejected_again)
    assert server.last_error is not None
    assert re.search(r"line \d+, column \d+: invalid YAML", server.last_error)
    assert snap(server) is good

    # an empty file, a vanished file
    for breakage, count in ((lambda: path.write_text(""), 3), (path.unlink, 4)):
        breakage()

        async def rejected_n(count: int = count) -> bool:
            return server.recorder.reloads.failure == count

        await eventually(rejected_n)
        assert snap(server) is good
        assert await serves_only(server, "candidate")

    # the fix is applied, and status clears the error
    write_atomic(path, dump(config(app_route(upstreams, 0))))

    async def fixed() -> bool:
        return await serves_only(server, "stable")

    await eventually(fixed)
    _, body = await admin(server, "GET", "/api/v1/status")
    assert body["config"]["last_error"] is None
    assert body["config"]["last_reload_successful"] is True


async def test_back_to_the_serving_content_clears_the_error(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    server = await start(config(app_route(upstreams, 0)), MANUAL)
    path = server.settings.config
    assert path is not None
    good_text, good = path.read_text(), snap(server)
    write_atomic(path, "routes: 7\n")
    outcome = await server.reload()
    assert not outcome.loaded
    assert server.last_error is not None
    write_atomic(path, good_text)
    outcome = await server.reload()
    assert (outcome.loaded, outcome.changed) == (True, False)
    assert snap(server) is good
    assert server.last_error is None
    assert server.recorder.reloads.last_successful


# -- all or nothing ----------------------------------------------------------------------------


async def test_identical_content_is_a_no_op(start: Start, upstreams: dict[str, Upstream]) -> None:
    server = await start(config(app_route(upstreams, 50)), POLL_ONLY)
    path = server.settings.config
    assert path is not None
    first = snap(server)
    for _ in range(3):
        write_atomic(path, path.read_text())  # new inode and mtime, same bytes
    assert server.reloader is not None
    passes = server.reloader.passes

    async def seen() -> bool:
        return server.reloader is not None and server.reloader.passes > passes

    await eventually(seen)
    outcome = await server.reload()
    assert (outcome.loaded, outcome.changed) == (True, False)
    assert snap(server) is first
    assert server.recorder.reloads.success == 1  # only the start-up


class Served:
    """An observer wrapper: which snapshot each finished exchange was served by."""

    def __init__(self, inner: ExchangeObserver) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str, str]] = []  # (path, version, revision)

    def exchange_started(self, ex: Exchange) -> None:
        self.inner.exchange_started(ex)

    def exchange_finished(self, ex: Exchange) -> None:
        snapshot = ex.snapshot
        revision = snapshot.revision if snapshot is not None else ""
        self.seen.append((ex.target.decode(), ex.upstream_url, revision))
        self.inner.exchange_finished(ex)

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        self.inner.attempt_failed(ex, version, kind)


async def test_each_request_finishes_on_the_snapshot_it_started_with(
    start: Start, upstreams: dict[str, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    options = ReloadOptions(watch=False, poll_interval=0, pool_grace=30)
    server = await start(config(app_route(upstreams, 0)), options, access_log=True)
    path = server.settings.config
    assert path is not None
    assert server.ctx is not None
    served = Served(server.ctx.observer)
    server.ctx.observer = served
    old = snap(server).revision

    slow = asyncio.create_task(get(server, "/slow"))  # in flight on stable
    async with asyncio.timeout(5):
        await upstreams["stable"].slow_started.wait()
    # the new file drops the stable upstream altogether
    moved = {"name": "app", "stable": upstreams["other"].url}
    write_atomic(path, dump(config(moved, revision="next")))
    assert (await server.reload()).changed
    new = snap(server).revision
    assert await get(server) == (200, "other")
    upstreams["stable"].release.set()
    assert await slow == (200, "stable")

    assert served.seen == [
        ("/", upstreams["other"].url, new),
        ("/slow", upstreams["stable"].url, old),
    ]
    # the access log names the revision that served each request
    err = capsys.readouterr().err
    (slow_line,) = [line for line in err.splitlines() if "/slow" in line]
    assert old in slow_line
    assert new not in slow_line
    assert any(new in line and "/slow" not in line for line in err.splitlines())


async def test_unchanged_pools_and_listeners_are_never_recreated(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    server = await start(config(app_route(upstreams, 0)), MANUAL)
    path = server.settings.config
    assert path is not None
    await split(server, 5)
    listener, port = server._proxy_server, server.listen_port
    pool = server.pools.pools[upstreams["stable"].key]
    for weight in (10, 20, 30):
        write_atomic(path, dump(config(app_route(upstreams, weight))))
        assert (await server.reload()).changed
        await split(server, 5)
    assert server._proxy_server is listener
    assert listener is not None
    assert listener.is_serving()
    assert server.listen_port == port
    assert server.pools.pools[upstreams["stable"].key] is pool
    assert not pool.closed


async def test_removing_a_route_closes_its_pool(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    other = {"name": "other", "match": {"path_prefix": "/other"}, "stable": upstreams["other"].url}
    options = ReloadOptions(watch=False, poll_interval=0, pool_grace=0.3)
    server = await start(config(other, app_route(upstreams, 0)), options)
    path = server.settings.config
    assert path is not None
    assert await get(server, "/other") == (200, "other")
    assert await get(server, "/") == (200, "stable")
    kept = server.pools.pools[upstreams["stable"].key]
    removed = server.pools.pools[upstreams["other"].key]
    assert removed.idle_count == 1

    write_atomic(path, dump(config(app_route(upstreams, 0))))
    assert (await server.reload()).changed
    assert upstreams["other"].key not in server.pools.pools  # no new request can pick it
    assert not removed.closed  # requests that started before the swap still may

    async def closed() -> bool:
        return removed.closed and removed.open_count == 0 and removed.idle_count == 0

    await eventually(closed)
    assert server.janitor.retiring == {}
    assert server.pools.pools[upstreams["stable"].key] is kept
    assert not kept.closed
    status, _ = await get(server, "/other")
    assert status == 200  # now served by the app route's prefix "/"


# -- revision ----------------------------------------------------------------------------------


async def test_revision_in_status_metrics_and_access_log(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    server = await start(config(app_route(upstreams, 0), revision="abc123"), MANUAL)
    server_snap = snap(server)
    revision = server_snap.revision
    assert revision == f"abc123+{server_snap.content_hash[:12]}"
    _, body = await admin(server, "GET", "/api/v1/status")
    assert body["config"]["revision"] == revision
    _, text = await admin(server, "GET", "/metrics")
    info = (
        f'splitproxy_config_info{{content_hash="{server_snap.content_hash}",revision="{revision}"}}'
    )
    assert metric(text, info) == 1

    path = server.settings.config
    assert path is not None
    write_atomic(path, dump(config(app_route(upstreams, 0))))  # no user revision: hash only
    await server.reload()
    assert snap(server).revision == snap(server).content_hash[:12]
    _, text = await admin(server, "GET", "/metrics")
    assert f'revision="{revision}"' not in text
    assert f'revision="{snap(server).revision}"' in text


# -- runtime overrides vs the file -------------------------------------------------------------


async def test_runtime_weight_survives_until_the_file_changes_its_route(
    start: Start, upstreams: dict[str, Upstream]
) -> None:
    other = {"name": "other", "match": {"path_prefix": "/other"}, "stable": upstreams["other"].url}
    server = await start(config(other, app_route(upstreams, 0)), MANUAL)
    path = server.settings.config
    assert path is not None

    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://127.0.0.1:{server.admin_port}/api/v1/routes/app/weight", json={"weight": 100}
        ) as resp,
    ):
        assert resp.status == 200

    async def weight() -> dict[str, Any]:
        _, body = await admin(server, "GET", "/api/v1/routes/app")
        return dict(body["weight"])

    # the file changes another route: the override stays
    other["match"] = {"path_prefix": "/elsewhere"}
    write_atomic(path, dump(config(other, app_route(upstreams, 0))))
    assert (await server.reload()).changed
    w = await weight()
    assert (w["effective"], w["file"], w["source"]) == (100.0, 0.0, "runtime")
    assert w["runtime"]["percent"] == 100.0
    assert await serves_only(server, "candidate")

    # a bad file changes nothing
    write_atomic(path, "routes: []\n")
    assert not (await server.reload()).loaded
    assert (await weight())["source"] == "runtime"

    # the file changes this route: the file wins, the override is gone
    write_atomic(path, dump(config(other, app_route(upstreams, 25))))
    assert (await server.reload()).changed
    w = await weight()
    assert w == {"effective": 25.0, "file": 25.0, "runtime": None, "source": "file"}


# -- 200 reloads under load ----------------------------------------------------------------------

RELOADS = 200
WORKERS = 8


@dataclass
class Load:
    """Closed-loop clients hitting the proxy until told to stop (or a deadline passes)."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set() and loop.time() < deadline:
            try:
                async with session.get(self.url) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        self.ok += 1
                        self.bodies[body] += 1
                    else:
                        self.failures.append(f"{resp.status}: {body[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))


def variant(i: int, ups: dict[str, Upstream]) -> tuple[dict[str, Any] | str, bool]:
    """The i-th file written: every third one is bad; good ones change weights, swap the
    candidate's upstream (so pools retire) and add or remove a second route."""
    bad = ("routes: [\n  - name: app\n", "routes: []\n", "", "routes:\n  - {name: app}\n")
    if i % 3 == 2:
        return bad[i % len(bad)], False
    app = app_route(ups, weight=(i * 37) % 101)
    if i % 4 == 1:
        app["candidate"] = {"url": ups["other"].url, "revision": "3"}
    routes = [app]
    if i % 5 == 0:
        routes.insert(
            0, {"name": "extra", "match": {"path_prefix": "/x"}, "stable": ups["other"].url}
        )
    return config(*routes, revision=f"r{i}"), True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
async def test_200_mixed_reloads_under_load(
    start: Start,
    upstreams: dict[str, Upstream],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    # every trigger is live: the watch and the poll see the same writes as the explicit calls
    reload_log = logging.getLogger("splitproxy.reload")
    reload_log.addHandler(caplog.handler)
    request.addfinalizer(lambda: reload_log.removeHandler(caplog.handler))
    options = ReloadOptions(poll_interval=0.1, debounce=0.02, pool_grace=0.5)
    server = await start(config(app_route(upstreams, 50)), options, upstream_idle_timeout=0.5)
    path = server.settings.config
    assert path is not None
    await asyncio.sleep(0.2)  # the watch is up
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()

    loop = asyncio.get_running_loop()
    load = Load(f"http://127.0.0.1:{server.listen_port}/")
    connector = aiohttp.TCPConnector(limit=WORKERS)
    good = bad = 0
    last_good = ""
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = loop.time() + 90
        workers = [loop.create_task(load.worker(session, deadline)) for _ in range(WORKERS)]
        await asyncio.sleep(0.1)
        for i in range(RELOADS):
            routes, valid = variant(i, upstreams)
            write_atomic(path, dump(routes))
            outcome = await server.reload()
            assert outcome.loaded is valid, (i, outcome)
            good, bad = good + valid, bad + (not valid)
            if valid:
                last_good = f"r{i}+"
            await asyncio.sleep(0.005)
        load.stop.set()
        await asyncio.gather(*workers)

    assert load.failures == []
    assert load.ok > RELOADS
    assert set(load.bodies) <= {"stable", "candidate", "other"}
    reloads = server.recorder.reloads
    assert reloads.success == 1 + good  # start-up, then every good file (each is different)
    # Each bad file is reported once by the explicit reload that follows its write. A passive
    # trigger that read the file first (the watch can win the race on a loaded machine)
    # reports it once more: an explicit reload always reports. Never more than that: passive
    # triggers skip content already judged, though the watch and the poll see every file.
    records = {id(r): r for r in caplog.records}.values()  # (root's handler may see them too)
    rejected = [r.getMessage() for r in records if "routing file rejected" in r.getMessage()]
    explicit = [bool(re.match(r"routing file rejected \([^)]*\bapi\b", m)) for m in rejected]
    passive = explicit.count(False)
    assert len(rejected) == reloads.failure == bad + passive
    # a passive report is of the file the next explicit reload reports: right before it
    assert all(explicit[i + 1] for i, e in enumerate(explicit) if not e), explicit
    assert snap(server).revision.startswith(last_good)

    # nothing leaks: client connections, pools, upstream connections, tasks, descriptors
    ctx = server.ctx
    assert ctx is not None

    async def settled() -> bool:
        pools = list(server.pools.pools.values())
        return (
            not ctx.connections
            and not server.janitor.retiring
            and all(p.open_count == 0 for p in pools)  # idle ones close after 0.5 s
            and len(asyncio.all_tasks()) <= tasks_before
        )

    await eventually(settled, within=15)
    assert set(server.pools.pools) <= upstream_keys(snap(server))
    assert server.janitor.closed > 0
    assert open_fds() <= fds_before
