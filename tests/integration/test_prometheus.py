"""A real Prometheus server scrapes splitproxy: the documented PromQL agrees with the traffic.

Debian's ``prometheus`` is installed when it is missing (as root, with apt-get; the test is
skipped only where neither is available). The server runs on loopback with a 1 s scrape of
the admin listener. The candidate fails a known share of requests and is slow for a known
share; the success-rate and p99 queries from ``docs/observability.md`` must say so. Requests
to the preview listener (all failing, all slow) go to the same candidate: the documented
queries are about user traffic and must not see them.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy
from tests.helpers import held_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def _installed() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


@contextmanager
def _no_service_starts() -> Iterator[None]:
    """Debian starts a packaged daemon on install unless policy-rc.d says no: say no."""
    if POLICY_RC.exists():
        yield
        return
    POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    found = _installed()
    if found is not None:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("prometheus is not installed, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    with _no_service_starts():
        done = subprocess.run(install, env=env, capture_output=True, timeout=900, check=False)
        if done.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    found = _installed()
    assert found is not None
    return found


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        async with self.session.get(f"{self.url}/api/v1/query", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def scalar(self, promql: str, at: float | None = None) -> float | None:
        result = await self.query(promql, at)
        if not result:
            return None
        (only,) = result
        return float(only["value"][1])

    async def until(self, promql: str, expected: float, within: float = 20.0) -> float:
        """Poll until ``promql`` returns ``expected`` (i.e. the last scrape has it)."""
        deadline = time.monotonic() + within
        seen = None
        while time.monotonic() < deadline:
            seen = await self.scalar(promql)
            if seen == expected:
                return time.time()
            await asyncio.sleep(0.2)
        raise AssertionError(f"{promql} stayed at {seen}, expected {expected}")


class Prometheuses:
    """Real Prometheus servers on loopback for one test, each with its own config; `close`
    stops them all (SIGTERM, SIGKILL after 10 s) and closes their sessions."""

    def __init__(self, binary: str, tmp_path: Path) -> None:
        self.binary = binary
        self.tmp_path = tmp_path
        self.procs: list[asyncio.subprocess.Process] = []
        self.sessions: list[aiohttp.ClientSession] = []

    async def launch(self, config: Path) -> Prometheus:
        """Start one with ``config`` and wait (at most 30 s) until it is ready."""
        log_path = self.tmp_path / "prometheus.log"
        held = held_port()  # until prometheus is ready on it
        port = int(held.getsockname()[1])
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        session = aiohttp.ClientSession()
        self.sessions.append(session)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with held:
            while True:
                assert proc.returncode is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "prometheus did not become ready in 30 s"
                try:
                    async with session.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        return Prometheus(url, session)

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def prometheus(prometheus_binary: str, tmp_path: Path) -> AsyncIterator[Any]:
    """``await prometheus(admin_port)``: a Prometheus scraping that port every second."""
    servers = Prometheuses(prometheus_binary, tmp_path)

    async def start(admin_port: int) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: splitproxy\n"
            "    scrape_interval: 1s\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{admin_port}']}}]\n"
        )
        return await servers.launch(config)

    try:
        yield start
    finally:
        await servers.close()


@dataclass
class Candidate:
    """Every 5th request fails (500); every 10th, from the 2nd, takes 550 ms. ``/preview``
    requests (not counted in ``served``) all fail, after 1.2 s.

    The delays sit 50 ms over a latency bucket's lower bound and 200 ms under its upper one
    ((0.5, 0.75] and (1.0, 1.5]), so a loaded machine that slows a request down does not move
    it out of its bucket; the previews are the slower, so that the p99 would show them if the
    user-traffic query counted them."""

    served: int = 0
    failed: int = 0
    slow: float = 0.55
    latencies: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/preview":
            await asyncio.sleep(1.2)
            return web.Response(status=500, text="preview boom")
        n = self.served
        self.served += 1
        if n % 5 == 0:
            self.failed += 1
            return web.Response(status=500, text="boom")
        if n % 10 == 1:
            await asyncio.sleep(self.slow)
        return web.Response(text="candidate")


async def _upstream(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def documented_queries() -> list[tuple[str, str]]:
    """Every query in docs/observability.md's ``promql`` blocks: (its comment, the query)."""
    queries: list[tuple[str, str]] = []
    for block in re.findall(r"```promql\n(.*?)```", DOCS.read_text(), re.S):
        for line in block.splitlines():
            if line.lstrip().startswith("#"):
                queries.append((line.strip("# "), ""))
            else:
                comment, query = queries[-1]
                queries[-1] = (comment, f"{query} {line.strip()}".strip())
    return queries


def documented(what: str) -> str:
    """The documented query whose comment starts with ``what``, for route "app" over 1 min."""
    (query,) = [q for comment, q in documented_queries() if comment.startswith(what)]
    return query.replace('route="shop"', 'route="app"')


@pytest.mark.timeout(1200)  # the first run may install prometheus
async def test_prometheus_queries_agree_with_the_traffic(
    start_proxy: StartProxy, prometheus: Any
) -> None:
    candidate = Candidate()

    async def stable(request: web.Request) -> web.Response:
        return web.Response(text="stable")

    ups = [await _upstream(stable), await _upstream(candidate.handle)]
    try:
        routes = {
            "routes": [
                {
                    "name": "app",
                    "stable": f"http://127.0.0.1:{ups[0].port}",
                    "candidate": {"url": f"http://127.0.0.1:{ups[1].port}", "revision": "2"},
                    "weight": 0,
                    "overrides": [{"header": "X-Canary"}],
                }
            ]
        }
        server = await start_proxy(routes, preview_listen="127.0.0.1:0")
        prom = await prometheus(server.admin_port)
        await prom.until('up{job="splitproxy"}', 1)
        base = f"http://127.0.0.1:{server.listen_port}"

        preview = f"http://127.0.0.1:{server.preview_port}/preview"

        async def drive(
            session: aiohttp.ClientSession, to_candidate: int, to_stable: int, previews: int
        ) -> None:
            sem = asyncio.Semaphore(10)

            async def one(canary: str) -> None:
                async with sem, session.get(f"{base}/x", headers={"X-Canary": canary}) as r:
                    await r.read()

            async def look() -> None:
                async with sem, session.get(preview) as r:
                    assert r.status == 500
                    await r.read()

            await asyncio.gather(
                *(one("always") for _ in range(to_candidate)),
                *(one("never") for _ in range(to_stable)),
                *(look() for _ in range(previews)),
            )

        total = 'sum(splitproxy_requests_total{route="app",traffic="user"})'
        previewed = 'sum(splitproxy_requests_total{route="app",traffic="preview"})'
        async with aiohttp.ClientSession() as session:
            # phase A: every series exists and Prometheus has it
            await drive(session, 50, 20, 10)
            scraped_a = await prom.until(total, 70)
            await prom.until(previewed, 10)
            served_a, failed_a = candidate.served, candidate.failed
            await asyncio.sleep(1.5)  # samples with phase A's values only
            window_start = time.time()
            await asyncio.sleep(1.5)
            # phase B: what the queries must describe
            await drive(session, 100, 40, 20)
            # evaluated once Prometheus has every user request and every preview of phase B
            scraped_b = max(await prom.until(total, 210), await prom.until(previewed, 30))
        assert scraped_b > scraped_a

        sent = candidate.served - served_a
        failed = candidate.failed - failed_a
        assert (sent, failed) == (100, 20)
        span = math.ceil(scraped_b - window_start)
        success_q, p99_q = (
            documented(what).replace("[1m]", f"[{span}s]")
            for what in ("success rate (%) of the candidate of", "p99 latency (ms)")
        )
        success = await prom.scalar(success_q, at=scraped_b)
        assert success == pytest.approx(100 * (sent - failed) / sent, abs=0.01)  # 80 %
        # stable, in the same window, never failed: the selector picks the version
        stable_q = success_q.replace('version="candidate"', 'version="stable"')
        assert await prom.scalar(stable_q, at=scraped_b) == pytest.approx(100.0)

        # 10 % of the candidate's requests took 550 ms: the p99 is in the (500 ms, 750 ms]
        # bucket, where histogram_quantile interpolates (the previews' 1.2 s are not counted)
        p99_ms = await prom.scalar(p99_q, at=scraped_b)
        assert p99_ms is not None
        assert 500.0 < p99_ms <= 750.0

        # every other documented query is valid PromQL and has an answer
        for comment, query in documented_queries():
            assert await prom.query(query.replace('route="shop"', 'route="app"')), comment

        # the proxy's own view agrees (p99 within 2 % of the true latency, from the sketch)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.admin_port}/api/v1/routes/app") as resp,
        ):
            traffic = (await resp.json())["traffic"]
        cand = traffic["candidate"]
        assert (cand["requests"], cand["errors"]) == (150, 30)
        assert cand["latency_ms"]["p99"] >= candidate.slow * 1000 * 0.98
        assert cand["latency_ms"]["p99"] < 750
        assert traffic["stable"]["requests"] == 60
    finally:
        for up in ups:
            await up.close()
