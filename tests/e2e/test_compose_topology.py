"""The docker-compose stack's topology as local processes on loopback (CI has no engine).

The demo service as stable and as candidate (``python -m splitproxy.demo.service``, as the
compose services run it) and ``splitproxy serve`` with the compose routing file, its URLs
rewritten to the loopback ports, and the compose service's environment: the state directory
(here in ``tmp_path``, as the named volume is there) and the admin token read from a file (as
the compose secret is). Only the rollout's ``interval`` is shortened, so the test takes
seconds, not minutes. The proxy is stopped with SIGTERM mid-rollout and started again: the
rollout resumes at the step it was at and goes on to promotion, and the admin API, asked with
the token, says so. Every process started here is stopped (SIGKILL at worst) at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.proc import Proxy, cli, serving
from tests.helpers import held_port

REPO = Path(__file__).resolve().parents[2]
ROUTE = "app"
TOKEN = "compose-test-token"
STEP_INTERVAL = "4s"  # the file's interval, shortened for the test


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def _argv(entrypoint: list[str], port: int) -> list[str]:
    """A compose service's entrypoint as a local command: this interpreter, a loopback port."""
    assert entrypoint[:2] == ["python", "-m"], entrypoint
    args = list(entrypoint[2:])
    args[args.index("--port") + 1] = str(port)
    return [sys.executable, "-m", *args, "--host", "127.0.0.1"]


@contextmanager
def demo_service(entrypoint: list[str], log: Path) -> Iterator[int]:
    """One compose app service as a process on a free loopback port (its port); healthy
    (``/healthz`` 200) on entry, stopped on exit."""
    held = held_port()  # until the service answers on it
    port = int(held.getsockname()[1])
    with log.open("w") as sink:
        process = subprocess.Popen(
            _argv(entrypoint, port), stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        with held:
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"no /healthz in 15 s:\n{log.read_text()}"
                try:
                    # the compose health check's own probe
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        break
                except OSError:
                    pass
                time.sleep(0.1)
        yield port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def routing_file(tmp_path: Path, ports: dict[str, int]) -> Path:
    """The compose routing file with each ``http://SERVICE:PORT`` on its loopback port."""
    proxy = compose()["services"]["splitproxy"]
    in_container = proxy["command"][proxy["command"].index("-c") + 1]
    (mount,) = [m for m in proxy["volumes"] if m.split(":")[1] == in_container.rsplit("/", 1)[0]]
    text = (REPO / mount.split(":")[0] / in_container.rsplit("/", 1)[1]).read_text()
    for service, port in ports.items():
        text = text.replace(f"http://{service}:8000", f"http://127.0.0.1:{port}")
    document = yaml.safe_load(text)
    (route,) = document["routes"]
    assert "127.0.0.1" in route["stable"]["url"]
    assert "127.0.0.1" in route["candidate"]["url"]
    route["rollout"]["interval"] = STEP_INTERVAL
    path = tmp_path / "routing" / "routes.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def environment(tmp_path: Path) -> dict[str, str]:
    """The compose service's environment, its container paths swapped for local ones."""
    env = {k: str(v) for k, v in compose()["services"]["splitproxy"]["environment"].items()}
    token = tmp_path / "secrets" / "splitproxy_admin_token"
    token.parent.mkdir()
    token.write_text(TOKEN + "\n")
    swapped = {
        "SPLITPROXY_STATE_DIR": str(tmp_path / "state"),
        "SPLITPROXY_ADMIN_TOKEN_FILE": str(token),
    }
    assert set(swapped) <= set(env), sorted(env)
    env.update(swapped)
    # the listener and admin addresses are serve's loopback flags (proc.serving)
    return env


async def get(proxy: Proxy, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{proxy.admin_port}{path}", headers=headers) as resp,
    ):
        body = await resp.text()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body


async def rollout(proxy: Proxy) -> dict[str, Any]:
    status, view = await get(proxy, f"/api/v1/routes/{ROUTE}")
    assert status == 200, view
    found: dict[str, Any] = view["rollout"]
    return found


async def wait_rollout(proxy: Proxy, done: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = await rollout(proxy)
        if done(seen):
            return seen
        await asyncio.sleep(0.2)
    _, ledger = await get(proxy, f"/api/v1/events?route={ROUTE}")
    raise AssertionError(
        f"not {what} in {timeout:g} s: {seen.get('phase')} step {seen.get('step')} "
        f"weight {seen.get('weight')}\nledger: {[e['message'] for e in ledger['events']]}\n"
        f"log:\n{proxy.output()[-3000:]}"
    )


async def served_by(proxy: Proxy, n: int, headers: dict[str, str] | None = None) -> list[str]:
    """Who answers ``n`` requests through the proxy (no cookies kept)."""
    seen = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{proxy.port}/", headers=headers) as resp:
                assert resp.status == 200
                seen.append((await resp.json())["version"])
    return seen


async def post(proxy: Proxy, path: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{proxy.admin_port}{path}", headers=headers, data="{}"
        ) as resp,
    ):
        return resp.status


@pytest.mark.timeout(90)
async def test_the_compose_topology_rolls_out_across_a_restart_of_the_proxy(
    tmp_path: Path,
) -> None:
    services = compose()["services"]
    env = environment(tmp_path)
    with (
        demo_service(services["app-stable"]["entrypoint"], tmp_path / "stable.log") as stable,
        demo_service(services["app-candidate"]["entrypoint"], tmp_path / "cand.log") as cand,
    ):
        config = routing_file(tmp_path, {"app-stable": stable, "app-candidate": cand})
        check = await asyncio.to_thread(cli, "check", str(config))
        assert check.returncode == 0, check.stderr

        with serving(config, tmp_path / "first.log", env=env) as proxy:
            # the token guards the API, mutations included; metrics and health stay open
            assert (await get(proxy, "/api/v1/status", token=None))[0] == 401
            assert (await get(proxy, "/api/v1/status", token="wrong"))[0] == 401
            assert await post(proxy, f"/api/v1/routes/{ROUTE}/pause", token=None) == 401
            metrics_status, metrics = await get(proxy, "/metrics", token=None)
            assert metrics_status == 200
            assert 'splitproxy_route_weight{route="app",version="candidate"}' in metrics
            assert (await get(proxy, "/readyz", token=None))[0] == 200

            # the synthetic traffic of the file alone moves the rollout (a demo has no users)
            first = await wait_rollout(
                proxy, lambda r: r["phase"] == "progressing" and r["step"] == 1, "at step 1"
            )
            assert first["weight"] == 10
            assert (await rollout(proxy))["phase"] == "progressing"  # the 401 paused nothing
            # users reach both versions, and an override the candidate
            assert set(await served_by(proxy, 60)) == {"stable", "candidate"}
            forced = await served_by(proxy, 5, {"X-Canary": "always"})
            assert forced == ["candidate"] * 5
            _, before = await get(proxy, f"/api/v1/events?route={ROUTE}")
            proxy.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proxy.process.wait, 15)
            assert code == 0, proxy.output()

        saved = json.loads((tmp_path / "state" / f"{ROUTE}.json").read_text())
        analyzer = saved["analyzer"]
        assert analyzer["phase"] == "progressing"
        at_stop = analyzer["step_index"] + 1  # the step it was at (1-based), as saved
        weight = (10, 50)[at_stop - 1]

        with serving(config, tmp_path / "second.log", env=env) as proxy:
            _, ledger = await get(proxy, f"/api/v1/events?route={ROUTE}")
            kinds = [e["kind"] for e in ledger["events"]]
            # the ledger carries on, and the rollout was resumed, not started over
            assert kinds[: len(before["events"])] == [e["kind"] for e in before["events"]]
            after = kinds[len(before["events"]) :]
            assert after[0] == "state_restored", after
            assert "started" not in after
            restored = ledger["events"][len(before["events"])]
            assert restored["message"] == (
                f"state restored from disk: progressing, step {at_stop}, weight {weight}%"
            )
            assert (await rollout(proxy))["step"] >= at_stop

            # as `docker compose exec splitproxy splitproxy status` would run it: the token
            # from the same file, through the environment
            admin = f"http://127.0.0.1:{proxy.admin_port}"
            status = await asyncio.to_thread(cli, "status", "--json", "--admin-url", admin, env=env)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["routes"][0]["rollout"]["phase"] in (
                "progressing", "promoted"
            )  # fmt: skip

            done = await wait_rollout(proxy, lambda r: r["phase"] == "promoted", "promoted")
            assert done["weight"] == 100
            assert set(await served_by(proxy, 20)) == {"candidate"}
            _, ledger = await get(proxy, f"/api/v1/events?route={ROUTE}")
            assert ledger["events"][-1]["kind"] == "promoted"
    record = (tmp_path / "state" / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in record] == ["promoted"]
    assert os.listdir(tmp_path / "state")  # the state volume's content, as compose keeps it
