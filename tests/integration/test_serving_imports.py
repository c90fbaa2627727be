"""A serving proxy carries no code it does not serve with: the console, the demo and rich (the
terminal UI) and the Redis client are never imported by ``serve`` with its defaults. Checked at
run time in a fresh interpreter that starts a real server on loopback (ports 0) and lists its
``sys.modules`` once it is up, so an import hidden in a start-up path counts too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SERVE_AND_LIST = """
import asyncio, json, sys
from splitproxy import logs
from splitproxy.cli import main as _cli  # what `splitproxy serve` imports before serving
from splitproxy.server import Server, new_event_loop
from splitproxy.settings import load_settings

async def run():
    settings = load_settings(config=sys.argv[1], listen="127.0.0.1:0", admin="127.0.0.1:0",
                             state_dir=sys.argv[2])
    logs.configure(settings.log_format, settings.log_level)
    server = Server(settings)
    await server.start()
    try:
        print(json.dumps(sorted(sys.modules)))
    finally:
        await server.shutdown()

with asyncio.Runner(loop_factory=new_event_loop) as runner:
    runner.run(run())
"""

ROUTES = """\
routes:
  - name: app
    stable: http://127.0.0.1:9
    candidate: {url: http://127.0.0.1:9, revision: b}
    weight: 10
    sticky: {cookie: uid}
"""

# Packages serving must not load: what they cost is paid by `splitproxy status`, `demo`, or a
# Redis state backend, never by every proxy.
NOT_FOR_SERVING = ("rich", "redis", "splitproxy.console", "splitproxy.demo")


def _served_modules(tmp_path: Path) -> list[str]:
    """``sys.modules`` of a real server started in a fresh interpreter, once it is up."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_LIST, str(routes), str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPLITPROXY_")},
    )
    assert out.returncode == 0, out.stderr
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    assert "aiohttp.web" in modules  # it did serve, admin API included
    return modules


def test_serving_imports_no_console_demo_rich_or_redis(tmp_path: Path) -> None:
    modules = _served_modules(tmp_path)
    loaded = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_SERVING)]
    assert loaded == []


# Imported on first use only: RE2 by the first regex in a routing file (this one has none);
# pydantic-settings is no longer a dependency (the settings read the environment themselves).
LAZY_FOR_SERVING = ("re2", "_re2", "pydantic_settings", "dotenv")


def test_serving_without_a_regex_loads_no_re2(tmp_path: Path) -> None:
    modules = _served_modules(tmp_path)
    loaded = [m for m in modules if any(m == n or m.startswith(n + ".") for n in LAZY_FOR_SERVING)]
    assert loaded == []
