"""A real ``redis-server`` on 127.0.0.1 for the tests of the Redis state backend and replicas.

`RedisServer` starts Debian's ``redis-server`` (``scripts/test.sh`` installs it when missing)
on a free loopback port with its data in a temporary directory, append-only with an fsync per
write (so a restart loses nothing, as the replicas' tests require), and stops it. ``restart``
stops it (SIGTERM: it saves and exits) and starts it again on the same port and data.
The ``redis_server`` fixture gives a started one and stops it when the test ends; a machine
without ``redis-server`` fails the test with the reason (the test script installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import held_port

START_TIMEOUT = 10.0


class RedisServer:
    """One ``redis-server`` process on loopback (see the module docstring)."""

    def __init__(self, directory: Path, port: int) -> None:
        """``port``: one the caller holds until the server has bound it (`held_port`)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self.process.returncode}: {log}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not answer on port {self.port} in {START_TIMEOUT}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """Stop it at once (SIGKILL): what is not in the append-only file is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started ``redis-server`` on a free loopback port, stopped when the test ends."""
    # the port is held for the whole test, so a restart finds it still free
    with held_port() as held:
        server = RedisServer(tmp_path / "redis", int(held.getsockname()[1]))
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()


__all__ = ["RedisServer", "redis_server"]
