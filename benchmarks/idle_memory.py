#!/usr/bin/env python3
"""splitproxy's memory: RSS idle, and with 1, 1,000 and 10,000 idle client connections.

Starts ``splitproxy serve`` (the benchmark's routing file, defaults: access log on), reads its
RSS (``VmRSS``) once it is up and quiet, then opens idle keep-alive connections to it (TCP
connections that send nothing, as browsers keep them) in steps, waits until the proxy holds
them all (its open descriptors) and reads the RSS again. The cost of an idle connection is
the RSS growth over the connections added. Loopback only; the proxy is stopped by its pid.

    .venv/bin/python benchmarks/idle_memory.py --steps 1,1000,10000
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

from configs import REPO, ROUTES_YAML, STICKY_COOKIE
from run import Proc, stop_all


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(pid: int, want_fds: int, timeout: float = 60.0) -> int:
    """Wait until the proxy holds ``want_fds`` descriptors and its RSS stops moving."""
    deadline = time.monotonic() + timeout
    while fds(pid) < want_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    last = -1
    while time.monotonic() < deadline:
        rss = status_kib(pid, "VmRSS")
        if rss == last:
            return rss
        last = rss
        time.sleep(0.5)
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", default="1,1000,10000", help="idle connections, cumulative")
    ap.add_argument("--port", type=int, default=29281, help="proxy port (admin: +1)")
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    a = ap.parse_args()
    steps = [int(s) for s in a.steps.split(",")]
    need = max(steps) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:  # the proxy inherits the limit: room for every connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    out = Path(tempfile.mkdtemp(prefix="splitproxy-memory-"))
    routes = out / "routes.yaml"
    routes.write_text(ROUTES_YAML.format(upstream="127.0.0.1:9", cookie=STICKY_COOKIE))
    env = {
        "PYTHONPATH": str(REPO),
        "SPLITPROXY_STATE_DIR": str(out / "state"),
        "SPLITPROXY_CLIENT_IDLE_TIMEOUT": "600",  # idle connections stay for the measurement
        "SPLITPROXY_MAX_CONNECTIONS": str(max(steps) + 100),
        "SPLITPROXY_DRAIN_TIMEOUT": "1",
    }
    argv = [a.py, "-m", "splitproxy", "serve", "-c", str(routes),
            "--listen", f"127.0.0.1:{a.port}", "--admin", f"127.0.0.1:{a.port + 1}"]  # fmt: skip
    held: list[socket.socket] = []
    try:
        proxy = Proc("splitproxy", argv, "-", out / "proxy.log", env, cwd=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        base_fds = fds(proxy.pid)
        idle = settle(proxy.pid, base_fds)
        print(f"idle: RSS {idle / 1024:.1f} MiB (peak {status_kib(proxy.pid, 'VmHWM') / 1024:.1f})")
        for n in steps:
            while len(held) < n:
                held.append(socket.create_connection(("127.0.0.1", a.port), timeout=5))
            rss = settle(proxy.pid, base_fds + n)
            per = (rss - idle) * 1024 / n
            print(f"{n:>6} idle connections: RSS {rss / 1024:.1f} MiB, {per:,.0f} B per connection")
    finally:
        for s in held:
            s.close()
        stop_all()


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent)
    main()
