"""What the end-to-end benchmarks share: a named loopback upstream and a real
``splitproxy serve`` process started the way users start it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on [\d.]+:(\d+) \(admin on [\d.]+:(\d+)\)")


async def start_upstream(name: str) -> tuple[web.AppRunner, int]:
    """An aiohttp upstream on 127.0.0.1 answering every GET with ``name``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def start_serve(
    config: Path, log_path: Path, *flags: str, timeout: float = 30.0
) -> tuple[asyncio.subprocess.Process, str, str]:
    """``python -m splitproxy serve -c CONFIG`` on free loopback ports, its output in
    ``log_path``; returns the process, the proxy URL and the admin URL once it listens.
    The caller terminates the process."""
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splitproxy", "serve", "-c", str(config),
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *flags,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    match = None
    deadline = time.monotonic() + timeout
    while match is None and time.monotonic() < deadline and proc.returncode is None:
        await asyncio.sleep(0.05)
        match = LISTENING.search(_read(log_path))
    if match is None:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        raise SystemExit(f"splitproxy did not start:\n{_read(log_path)}")
    return proc, f"http://127.0.0.1:{match.group(1)}/", f"http://127.0.0.1:{match.group(2)}"


def _read(path: Path) -> str:
    """The process log so far (a small local file: reading it does not stall the loop)."""
    return path.read_text()
