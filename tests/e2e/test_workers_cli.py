"""``splitproxy serve --workers 2`` end to end: a supervisor and two worker processes on one
listener, real upstreams on 127.0.0.1, driven through the proxy, the admin API and signals.

Which worker answered a request: each worker process numbers its request ids with its own
random prefix (``X-Request-Id: <prefix>-<n>``), and the upstreams here answer with the id they
received, so a test tells the workers apart without asking the proxy.

Every process is stopped at the end of its test (``proc.serving``), every upstream closed, every
loop bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.e2e.conftest import Serve
from tests.e2e.proc import Proxy, cli, serving

ROUTE = "app"


class Upstream:
    """An upstream named ``version`` that answers ``{"version", "worker"}`` (``worker``: the
    request id's prefix, i.e. the proxy worker that sent it); every ``fail_every``-th request
    gets a 500, each request for ``/slow`` waits ``delay`` seconds first. ``workers`` counts who
    sent what."""

    def __init__(self, version: str, *, fail_every: int = 0, delay: float = 0.0) -> None:
        self.version = version
        self.fail_every = fail_every
        self.delay = delay
        self.workers: Counter[str] = Counter()
        self.arrived = 0

    def total(self) -> int:
        """Requests the proxy's workers sent (its health checks not counted)."""
        return sum(self.workers.values())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        worker = request.headers.get("X-Request-Id", "").partition("-")[0]
        if worker:  # not the proxy's own health checks
            self.workers[worker] += 1
        self.arrived += 1
        if self.delay and request.path == "/slow":
            await asyncio.sleep(self.delay)
        status = 500 if self.fail_every and self.arrived % self.fail_every == 0 else 200
        return web.json_response({"version": self.version, "worker": worker}, status=status)


def write_config(path: Path, stable: str, candidate: str | None = None, **rollout: Any) -> Path:
    route: dict[str, Any] = {"name": ROUTE, "stable": {"url": stable, "revision": "1.0"}}
    if candidate is not None:
        route["candidate"] = {"url": candidate, "revision": "1.1"}
        route["weight"] = 0
    if rollout:
        route["rollout"] = rollout
    path.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    return path


def start_workers(tmp_path: Path, config: Path, *extra: str) -> Any:
    return serving(
        config, tmp_path / "proxy.log", "--workers", "2", "--state-dir", str(tmp_path / "state"),
        "--no-access-log", "--drain-delay", "0", "--drain-timeout", "5", *extra,
    )  # fmt: skip


async def fresh(proxy: Proxy, path: str = "/") -> tuple[int, dict[str, Any]]:
    """One request on a new connection (so any worker may accept it): status and body."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(
            f"http://127.0.0.1:{proxy.port}{path}", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            return resp.status, body


async def answers_until(
    proxy: Proxy, done: Callable[[list[dict[str, Any]]], bool], limit: int = 400
) -> list[dict[str, Any]]:
    """Requests on new connections until ``done(answers so far)``; at most ``limit``."""
    answers: list[dict[str, Any]] = []
    while len(answers) < limit:
        answers.append((await fresh(proxy))[1])
        if done(answers):
            return answers
    raise AssertionError(f"not done after {limit} requests: {Counter(map(str, answers))}")


def workers_in(answers: list[dict[str, Any]], version: str | None = None) -> set[str]:
    return {a["worker"] for a in answers if version is None or a["version"] == version}


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def metrics(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as resp:
            return await resp.text()


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of the samples called ``name``."""
    found = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never {what}")


async def leader_pid(proxy: Proxy) -> int:
    """Worker 0's pid, as ``/metrics`` names it."""
    text = await metrics(proxy)
    found = re.search(r'splitproxy_worker_requests_total\{pid="(\d+)",worker="0"\}', text)
    assert found is not None, text
    return int(found.group(1))


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (the supervisor's workers)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.add(int(entry))
    return found


async def kill_the_follower(proxy: Proxy) -> None:
    """SIGKILL worker 1 and wait until the supervisor has started another in its place."""
    pids = children(proxy.process.pid)
    assert len(pids) == 2
    [follower] = pids - {await leader_pid(proxy)}
    os.kill(follower, signal.SIGKILL)

    async def replaced() -> bool:
        now = children(proxy.process.pid)
        return len(now) == 2 and follower not in now

    await eventually(replaced, "a new worker in place of the killed one")


@pytest.mark.timeout(40)
async def test_two_workers_serve_one_listener_and_count_as_one(
    tmp_path: Path, serve: Serve
) -> None:
    up = Upstream("stable")
    config = write_config(tmp_path / "routes.yaml", await serve(up.app()))
    with start_workers(tmp_path, config) as proxy:

        async def two() -> bool:  # the follower starts once the leader serves
            return len(children(proxy.process.pid)) == 2

        await eventually(two, "two worker processes")
        answers = await answers_until(proxy, lambda a: len(workers_in(a)) == 2)
        assert len(workers_in(answers)) == 2  # two processes answered on one port
        sent = len(answers)

        async def counted() -> bool:
            text = await metrics(proxy)
            total = sum(samples(text, "splitproxy_requests_total").values())
            per_worker = samples(text, "splitproxy_worker_requests_total")
            return total == sent and len(per_worker) == 2 and sum(per_worker.values()) == sent

        await eventually(counted, f"/metrics counting all {sent} requests over both workers")

        async def status_sums() -> bool:
            view = await get_json(f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}")
            return bool(view["traffic"]["stable"]["requests"] == sent)

        await eventually(status_sums, f"status counting all {sent} requests")
        # each worker names itself in its log lines; the pool says it judged every bucket
        assert "[worker 0] " in proxy.output()
        assert "[worker 1] " in proxy.output()
        assert samples(await metrics(proxy), "splitproxy_pool_late_buckets_total") == {"": 0.0}


@pytest.mark.timeout(60)
async def test_a_faulty_candidate_is_rolled_back_on_every_worker_from_pooled_traffic(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate", fail_every=2)
    rollout = {
        "steps": [20, 50],
        "interval": "2s",
        "min_requests": 30,
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app()), **rollout
    )
    with start_workers(tmp_path, config) as proxy:
        url = f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}"

        async def rolled_back() -> bool:
            await answers_until(proxy, lambda a: len(a) >= 10)  # steady traffic, new connections
            view = await get_json(url)
            return bool(view["rollout"]["phase"] == "rolled_back")

        await eventually(rolled_back, "rolled back", limit=40)
        # both workers sent users to the candidate: the analyzer judged their pooled traffic
        assert len(candidate.workers) == 2, candidate.workers
        # and neither sends anyone there any more
        after = await answers_until(proxy, lambda a: len(workers_in(a)) == 2 and len(a) >= 20)
        assert {a["version"] for a in after} == {"stable"}

        async def judged_all() -> bool:  # what the analyzer and status see: both workers' share
            view = await get_json(url)
            return bool(view["traffic"]["candidate"]["requests"] == candidate.total())

        await eventually(judged_all, f"status counting all {candidate.total()} candidate requests")


@pytest.mark.timeout(40)
async def test_a_runtime_weight_reaches_every_worker(tmp_path: Path, serve: Serve) -> None:
    stable, candidate = Upstream("stable"), Upstream("candidate")
    config = write_config(
        tmp_path / "routes.yaml", await serve(stable.app()), await serve(candidate.app())
    )
    with start_workers(tmp_path, config) as proxy:
        before = await answers_until(proxy, lambda a: len(workers_in(a)) == 2)
        assert {a["version"] for a in before} == {"stable"}  # weight 0 in the file
        async with aiohttp.ClientSession() as session:
            async with session.put(
                f"http://127.0.0.1:{proxy.admin_port}/api/v1/routes/{ROUTE}/weight",
                json={"weight": 100},
            ) as resp:
                assert resp.status == 200, await resp.text()
        after = await answers_until(proxy, lambda a: len(workers_in(a, "candidate")) == 2)
        assert len(workers_in(after, "candidate")) == 2  # set on the leader, served by both


@pytest.mark.timeout(40)
async def test_a_reload_reaches_every_worker(tmp_path: Path, serve: Serve) -> None:
    old, new = Upstream("old"), Upstream("new")
    config = write_config(tmp_path / "routes.yaml", await serve(old.app()))
    new_url = await serve(new.app())
    manual = ("--no-reload-watch", "--reload-poll-interval", "0")  # SIGHUP reloads, nothing else
    with start_workers(tmp_path, config, *manual) as proxy:
        before = await answers_until(proxy, lambda a: len(workers_in(a)) == 2)
        assert {a["version"] for a in before} == {"old"}
        write_config(config, new_url)
        proxy.process.send_signal(signal.SIGHUP)  # to the supervisor: it asks the leader
        after = await answers_until(proxy, lambda a: len(workers_in(a, "new")) == 2)
        assert len(workers_in(after, "new")) == 2  # both workers serve the new file


@pytest.mark.timeout(40)
async def test_sigterm_drains_every_worker(tmp_path: Path, serve: Serve) -> None:
    slow = Upstream("slow", delay=1.5)
    config = write_config(tmp_path / "routes.yaml", await serve(slow.app()))
    with start_workers(tmp_path, config) as proxy:
        await answers_until(proxy, lambda a: len(workers_in(a)) == 2)  # both serve
        slow.workers.clear()
        in_flight: list[asyncio.Task[tuple[int, dict[str, Any]]]] = []
        for _ in range(100):  # slow requests on new connections until both workers hold one
            in_flight.append(asyncio.create_task(fresh(proxy, "/slow")))
            await asyncio.sleep(0.02)
            if len(slow.workers) == 2:
                break
        assert len(slow.workers) == 2, slow.workers
        proxy.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*in_flight)
        assert {status for status, _ in answers} == {200}  # every in-flight request finished
        assert {a["worker"] for _, a in answers} == set(slow.workers)
        assert await asyncio.to_thread(proxy.process.wait, 10) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await fresh(proxy)  # and nobody listens any more


@pytest.mark.timeout(40)
async def test_a_killed_worker_is_restarted(tmp_path: Path, serve: Serve) -> None:
    up = Upstream("stable")
    config = write_config(tmp_path / "routes.yaml", await serve(up.app()))
    with start_workers(tmp_path, config) as proxy:
        before = await answers_until(proxy, lambda a: len(workers_in(a)) == 2)
        await kill_the_follower(proxy)
        # the new worker serves (a request-id prefix not seen before), the other one still does
        after = await answers_until(proxy, lambda a: len(workers_in(a) - workers_in(before)) == 1)
        assert len(workers_in(after) & workers_in(before)) <= 1
        assert "restarting" in proxy.output()


@pytest.mark.timeout(40)
async def test_a_killed_leader_is_restarted_while_the_follower_serves(
    tmp_path: Path, serve: Serve
) -> None:
    up = Upstream("stable")
    config = write_config(tmp_path / "routes.yaml", await serve(up.app()))
    with start_workers(tmp_path, config) as proxy:
        await answers_until(proxy, lambda a: len(workers_in(a)) == 2)
        leader = await leader_pid(proxy)
        os.kill(leader, signal.SIGKILL)
        # users are served all along, by the follower while the leader is away
        statuses: Counter[int] = Counter()

        async def admin_back() -> bool:
            statuses[(await fresh(proxy))[0]] += 1
            try:
                text = await metrics(proxy)
            except aiohttp.ClientError:
                return False
            return 'worker="0"' in text and f'pid="{leader}"' not in text

        await eventually(admin_back, "a new leader with the admin API")
        assert set(statuses) == {200}
        text = await metrics(proxy)
        assert samples(text, "splitproxy_worker_restarts_total") == {"": 1.0}


def test_a_leader_that_cannot_start_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("routes: []\n")
    result = cli(
        "serve", "-c", str(bad), "--workers", "2",
        "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "routes" in result.stderr
    assert "restarting" not in result.stderr


def test_a_port_in_use_stops_start_up(tmp_path: Path) -> None:
    config = write_config(tmp_path / "routes.yaml", "http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "serve", "-c", str(config), "--workers", "2",
            "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0", timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


class Checked(Upstream):
    """An upstream whose ``/health`` counts the checks it gets and answers 503 once ``down``."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.checks = 0
        self.down = False

    async def _answer(self, request: web.Request) -> web.Response:
        if request.path == "/health":
            self.checks += 1
            return web.Response(status=503 if self.down else 200)
        return await super()._answer(request)


@pytest.mark.timeout(60)
async def test_only_the_leader_checks_health_and_every_worker_follows(
    tmp_path: Path, serve: Serve
) -> None:
    a, b = Checked("a"), Checked("b")
    config = tmp_path / "routes.yaml"
    route = {
        "name": ROUTE,
        "stable": [await serve(a.app()), await serve(b.app())],
        "health": {"path": "/health", "interval": "0.2s", "timeout": "0.2s",
                   "unhealthy_after": 1, "healthy_after": 1},
    }  # fmt: skip
    config.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    with start_workers(tmp_path, config) as proxy:
        await answers_until(proxy, lambda got: len(workers_in(got)) == 2)
        # one worker checks: about 10 checks in 2 s at 0.2 s (two workers would make 20)
        before = a.checks
        await asyncio.sleep(2)
        assert 5 <= a.checks - before <= 14, a.checks - before
        # A fails its checks: both workers take it out of rotation, on the leader's word
        a.down = True
        await asyncio.sleep(1)
        answers = await answers_until(proxy, lambda got: len(workers_in(got)) == 2)
        assert {x["version"] for x in answers} == {"b"}, Counter(map(str, answers))
        # a worker started now learns where A stands from the leader, without checking it
        await kill_the_follower(proxy)
        await asyncio.sleep(1)
        first = workers_in(answers)
        answers = await answers_until(proxy, lambda got: bool(workers_in(got) - first))
        assert {x["version"] for x in answers} == {"b"}, Counter(map(str, answers))
        # A recovers: back in rotation in every worker
        a.down = False
        await asyncio.sleep(1)
        answers = await answers_until(
            proxy, lambda got: len(workers_in(got, "a")) == 2 and len(workers_in(got, "b")) == 2
        )
