"""Running the real CLI in a subprocess, and always stopping it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LISTENING = re.compile(r"listening on [\d.]+:(\d+) \(admin on [\d.]+:(\d+)\)")


@dataclass
class Proxy:
    process: subprocess.Popen[str]
    port: int
    admin_port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def cli(
    *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m splitproxy ARGS`` to completion (``env``: added to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "splitproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def serving(
    config: Path | str, log: Path, *extra: str, env: Mapping[str, str] | None = None
) -> Iterator[Proxy]:
    """``splitproxy serve`` on free loopback ports (``env``: added to the environment);
    stopped (SIGKILL at worst) on exit. ``config``: a file, or a ``git+URL#BRANCH:PATH``."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "splitproxy", "serve", "-c", str(config),
             "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        match = None
        while match is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            match = LISTENING.search(log.read_text())
        if match is None:
            raise AssertionError(f"splitproxy did not start:\n{log.read_text()}")
        yield Proxy(process, int(match.group(1)), int(match.group(2)), log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
