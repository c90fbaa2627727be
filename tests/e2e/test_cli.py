"""The real CLI in a subprocess: check, demo, serve with graceful shutdown, admin verbs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.e2e.proc import cli, serving

REPO = Path(__file__).resolve().parents[2]


def test_check_accepts_the_example_config() -> None:
    result = cli("check", str(REPO / "config" / "splitproxy.yaml"))
    assert result.returncode == 0, result.stderr
    assert "3 route(s)" in result.stdout
    assert result.stdout.count("\n") == 1  # one line


def test_check_names_every_bad_field_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "routes:\n"
        "  - {name: ok, stable: http://a:1}\n"
        "  - {name: shop, stable: http://b:1, candidate: http://c:1, weight: 150, colour: red}\n"
    )
    result = cli("check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: routes[1].weight: must be <= 100" in result.stderr
    assert f"{bad}: routes[1].colour: unknown key" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_check_reports_a_missing_file(tmp_path: Path) -> None:
    result = cli("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


@pytest.mark.timeout(60)
def test_demo_runs_by_itself_and_shows_the_split() -> None:
    # the default scenario: a canary rollout of a healthy candidate, promoted in under a
    # minute; not a terminal, so a log of its progress and decisions instead of a live view
    result = cli("demo", timeout=55)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "scenario good: candidate 1.1 is as healthy as stable 1.0" in out
    assert "started      now progressing: new candidate 1.1" in out
    for step in ("step 1 at 10%", "step 2 at 25%", "step 3 at 50%"):
        assert step in out
    assert "progress     step 1/3 at 10%" in out
    assert "promoted     step 3 at 50%: all steps passed" in out
    assert "✓ latency_p99" in out  # the evidence, check by check
    assert "measured split, per candidate weight the rollout set" in out
    assert "promoted after" in out
    assert "as expected for this candidate" in out
    assert "\x1b[" not in out  # no animation, no colours


def test_serve_refuses_an_invalid_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {name: shop, stable: ftp://x}\n")
    result = cli("serve", "-c", str(bad), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert result.returncode == 1
    assert (
        "routes[0].stable.url[0]: 'ftp://x': only http:// upstreams are supported" in result.stderr
    )


def test_check_loads_nothing_of_the_proxy() -> None:
    # validating a file in CI must not pull in the data path, the controller or aiohttp
    probe = (
        "import sys\n"
        "from splitproxy.cli import main\n"
        f"code = main(['check', {str(REPO / 'config' / 'splitproxy.yaml')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('aiohttp', 'asyncio', "
        "'splitproxy.server', 'splitproxy.dataplane', 'splitproxy.rollout', "
        "'splitproxy.settings', 'pydantic_settings', 'uvloop', 'httptools')))\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"
    assert "3 route(s)" in result.stdout


async def _echo_forwarded_for() -> TestServer:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-For", ""))

    app = web.Application()
    app.router.add_get("/", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.timeout(40)
async def test_serve_reads_a_comma_separated_list_setting_from_the_environment(
    tmp_path: Path,
) -> None:
    upstream = await _echo_forwarded_for()
    config = tmp_path / "routes.yaml"
    config.write_text(
        yaml.safe_dump({"routes": [{"name": "app", "stable": f"http://127.0.0.1:{upstream.port}"}]})
    )
    env = {"SPLITPROXY_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.0/8"}
    try:
        with serving(config, tmp_path / "proxy.log", env=env) as proxy:
            request = urllib.request.Request(
                f"http://127.0.0.1:{proxy.port}/", headers={"X-Forwarded-For": "6.6.6.6"}
            )
            with await asyncio.to_thread(urllib.request.urlopen, request, timeout=5) as resp:
                # loopback is trusted: the client's X-Forwarded-For is kept and appended to
                assert resp.read() == b"6.6.6.6, 127.0.0.1"
    finally:
        await upstream.close()


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"SPLITPROXY_TRUSTED_PROXIES": "10.0.0.0/33"},
            "splitproxy: invalid setting trusted_proxies (SPLITPROXY_TRUSTED_PROXIES): "
            "'10.0.0.0/33' is not a network",
        ),
        (
            {"SPLITPROXY_LOG_LEVEL": "loud"},
            "splitproxy: invalid setting log_level (SPLITPROXY_LOG_LEVEL): "
            "Input should be 'debug', 'info', 'warning' or 'error', got 'loud'",
        ),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(env: dict[str, str], line: str) -> None:
    for command in (
        ("serve", "-c", str(REPO / "config" / "splitproxy.yaml"), "--listen", "127.0.0.1:0"),
        ("demo",),
    ):
        result = cli(*command, env=env, timeout=30)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr == line + "\n", command
        assert result.stdout == ""


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    result = cli("serve", "-c", "routes.yaml", "--read-timeout", "0")
    assert result.returncode == 2
    assert result.stderr == (
        "splitproxy: invalid setting read_timeout (SPLITPROXY_READ_TIMEOUT): "
        "Input should be greater than 0, got 0.0\n"
    )


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _slow_upstream(delay: float) -> TestServer:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.timeout(40)
async def test_sigterm_drains_a_slow_request_then_exits_0(tmp_path: Path) -> None:
    upstream = await _slow_upstream(1.5)
    config = tmp_path / "routes.yaml"
    config.write_text(
        yaml.safe_dump({"routes": [{"name": "app", "stable": f"http://127.0.0.1:{upstream.port}"}]})
    )
    try:
        with serving(config, tmp_path / "proxy.log", "--drain-delay", "0.3") as proxy:
            admin = f"http://127.0.0.1:{proxy.admin_port}"
            assert (await asyncio.to_thread(_get, admin + "/readyz"))[0] == 200
            async with aiohttp.ClientSession() as session:
                slow = asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/slow"))
                await asyncio.sleep(0.4)  # the request is in flight at the upstream
                proxy.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                status, body = await asyncio.to_thread(_get, admin + "/readyz")
                assert status == 503
                assert json.loads(body)["status"] == "draining"
                resp = await asyncio.wait_for(slow, 10)
                async with resp:
                    assert resp.status == 200
                    assert await resp.text() == "finished"
            code = await asyncio.to_thread(proxy.process.wait, 15)
            assert code == 0, proxy.output()
    finally:
        await upstream.close()


@pytest.mark.timeout(40)
async def test_admin_verbs_through_the_cli(tmp_path: Path) -> None:
    upstream = await _slow_upstream(0)
    config = tmp_path / "routes.yaml"
    url = f"http://127.0.0.1:{upstream.port}"
    config.write_text(
        yaml.safe_dump({"routes": [{"name": "shop", "stable": url, "candidate": url, "weight": 5}]})
    )
    try:
        with serving(config, tmp_path / "proxy.log") as proxy:
            admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
            assert (await asyncio.to_thread(cli, "healthcheck", *admin)).returncode == 0
            weight = await asyncio.to_thread(cli, "weight", "shop", "42.5", *admin)
            assert weight.returncode == 0, weight.stderr
            assert "42.5%" in weight.stdout
            status = await asyncio.to_thread(cli, "status", "--json", *admin)
            data = json.loads(status.stdout)
            assert data["routes"][0]["weight"] == {
                "effective": 42.5,
                "file": 5.0,
                "runtime": data["routes"][0]["weight"]["runtime"],
                "source": "runtime",
            }
            table = await asyncio.to_thread(cli, "status", *admin)
            assert "shop" in table.stdout
            assert "42.5%" in table.stdout
            cleared = await asyncio.to_thread(cli, "weight", "shop", "--clear", *admin)
            assert cleared.returncode == 0, cleared.stderr
            assert "candidate weight 5% (set by file)" in cleared.stdout
            data = json.loads((await asyncio.to_thread(cli, "status", "--json", *admin)).stdout)
            assert data["routes"][0]["weight"] == {
                "effective": 5.0,
                "file": 5.0,
                "runtime": None,
                "source": "file",
            }
            both = await asyncio.to_thread(cli, "weight", "shop", "7", "--clear", *admin)
            assert both.returncode == 2
            assert "not allowed with argument PERCENT" in both.stderr
            neither = await asyncio.to_thread(cli, "weight", "shop", *admin)
            assert neither.returncode == 2
            assert "one of the arguments PERCENT --clear is required" in neither.stderr
            missing = await asyncio.to_thread(cli, "weight", "nope", "1", *admin)
            assert missing.returncode == 1
            assert "no route named 'nope'" in missing.stderr
        down = await asyncio.to_thread(cli, "healthcheck", *admin)
        assert down.returncode == 1
    finally:
        await upstream.close()


@pytest.mark.timeout(40)
async def test_reload_verb_applies_a_good_file_and_reports_a_bad_one(tmp_path: Path) -> None:
    upstream = await _slow_upstream(0)
    config = tmp_path / "routes.yaml"
    url = f"http://127.0.0.1:{upstream.port}"

    def write(weight: object) -> None:
        config.write_text(
            yaml.safe_dump(
                {"routes": [{"name": "shop", "stable": url, "candidate": url, "weight": weight}]}
            )
        )

    write(5)
    try:
        with serving(
            config, tmp_path / "proxy.log", "--no-reload-watch", "--reload-poll-interval", "0"
        ) as proxy:
            admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
            write(30)
            done = await asyncio.to_thread(cli, "reload", *admin)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("loaded: revision ")
            status = json.loads((await asyncio.to_thread(cli, "status", "--json", *admin)).stdout)
            assert status["routes"][0]["weight"]["effective"] == 30.0
            write(300)
            bad = await asyncio.to_thread(cli, "reload", *admin)
            assert bad.returncode == 1
            assert "routes[0].weight: must be <= 100" in bad.stderr
            status = json.loads((await asyncio.to_thread(cli, "status", "--json", *admin)).stdout)
            assert status["routes"][0]["weight"]["effective"] == 30.0
    finally:
        await upstream.close()


def test_admin_verbs_say_when_the_proxy_is_not_there() -> None:
    result = cli("promote", "shop", "--admin-url", "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 1
    assert "cannot reach the admin API at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
