#!/usr/bin/env python3
"""splitproxy's memory: RSS idle, under load, and with 1, 1,000 and 10,000 idle connections.

Starts the upstream nginx and ``splitproxy serve`` in front of it (the benchmark's routing
file: one route, sticky, weight 50; defaults: access log on, admin listener on), and reads its
RSS (``VmRSS``) once it is up and quiet. Then:

* under load: wrk, 64 keep-alive connections, ``--load`` seconds on /1k then on /64k; the RSS
  at the end of each and the peak (``VmHWM``);
* idle connections: opens TCP connections that send nothing (as browsers keep them) in steps,
  waits until the proxy holds them all (its open descriptors) and reads the RSS again. The
  cost of an idle connection is the RSS growth over the connections added.

``--env KEY=VALUE`` (repeatable) sets the proxy's environment (``MALLOC_ARENA_MAX=2``, ...);
``--repo DIR`` measures another checkout (before/after). Loopback only; every process is
stopped by its pid.

    .venv/bin/python benchmarks/idle_memory.py --steps 1,1000,10000 --load 5
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from configs import COOKIE_HEADER, REPO, ROUTES_YAML, STICKY_COOKIE
from run import Proc, stop_all, wait_ready

BENCH = Path(__file__).resolve().parent


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def quiet_fds(pid: int, timeout: float = 10.0) -> int:
    """The proxy's descriptors once they stop moving (a closed probe is let go first)."""
    deadline = time.monotonic() + timeout
    last = fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = fds(pid)
        if now == last:
            return now
        last = now
    return last


def settle(pid: int, want_fds: int, timeout: float = 60.0) -> int:
    """Wait until the proxy holds ``want_fds`` descriptors and its RSS stops moving."""
    deadline = time.monotonic() + timeout
    while fds(pid) < want_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    last = -1
    while True:
        rss = status_kib(pid, "VmRSS")
        if rss == last or time.monotonic() >= deadline:
            return rss
        last = rss
        time.sleep(0.5)


def wrk(port: int, path: str, seconds: int) -> str:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-H", COOKIE_HEADER,
           f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    lines = [ln.strip() for ln in out.splitlines() if "Requests/sec" in ln]
    return lines[0] if lines else "wrk: no result"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", default="1,1000,10000", help="idle connections, cumulative")
    ap.add_argument("--load", type=int, default=5, help="seconds of wrk per path (0: none)")
    ap.add_argument("--port", type=int, default=29281, help="proxy port (admin: +1)")
    ap.add_argument("--upstream-port", type=int, default=29280)
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the proxy")
    a = ap.parse_args()
    repo = a.repo.resolve()
    py = str(repo / ".venv" / "bin" / "python")
    steps = [int(s) for s in a.steps.split(",") if s]
    need = max(steps, default=0) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:  # the proxy inherits the limit: room for every connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    out = Path(tempfile.mkdtemp(prefix="splitproxy-memory-"))
    routes = out / "routes.yaml"
    upstream = f"127.0.0.1:{a.upstream_port}"
    routes.write_text(ROUTES_YAML.format(upstream=upstream, cookie=STICKY_COOKIE))
    env = {
        "PYTHONPATH": str(repo),
        "SPLITPROXY_STATE_DIR": str(out / "state"),
        "SPLITPROXY_CLIENT_IDLE_TIMEOUT": "600",  # idle connections stay for the measurement
        "SPLITPROXY_MAX_CONNECTIONS": str(max(steps, default=0) + 100),
        "SPLITPROXY_DRAIN_TIMEOUT": "1",
    }
    env.update(kv.split("=", 1) for kv in a.env)
    argv = [py, "-m", "splitproxy", "serve", "-c", str(routes),
            "--listen", f"127.0.0.1:{a.port}", "--admin", f"127.0.0.1:{a.port + 1}"]  # fmt: skip
    held: list[socket.socket] = []
    try:
        up_argv = ["bash", str(BENCH / "upstream_nginx.sh"), str(a.upstream_port), str(out)]
        up = Proc("upstream", up_argv, "1", out / "upstream.log")
        wait_ready(a.upstream_port, None, up)
        proxy = Proc("splitproxy", argv, "0", out / "proxy.log", env, cwd=out)
        wait_ready(a.port, COOKIE_HEADER, proxy, timeout=30)
        base_fds = quiet_fds(proxy.pid)
        idle = settle(proxy.pid, base_fds)
        print(f"idle: RSS {mib(idle)} (peak {mib(status_kib(proxy.pid, 'VmHWM'))})")
        if a.load:
            for path in ("/1k", "/64k"):
                rate = wrk(a.port, path, a.load)
                rss = status_kib(proxy.pid, "VmRSS")
                peak = status_kib(proxy.pid, "VmHWM")
                print(f"load {path:>4} ({rate}): RSS {mib(rss)}, peak {mib(peak)}")
            base_fds = quiet_fds(proxy.pid)
            after = settle(proxy.pid, base_fds)
            print(f"idle after load: RSS {mib(after)}")
            idle = after
        for n in steps:
            while len(held) < n:
                held.append(socket.create_connection(("127.0.0.1", a.port), timeout=5))
            rss = settle(proxy.pid, base_fds + n)
            per = (rss - idle) * 1024 / n
            print(f"{n:>6} idle connections: RSS {mib(rss)}, {per:,.0f} B per connection")
    finally:
        for s in held:
            s.close()
        stop_all()


if __name__ == "__main__":
    os.chdir(BENCH)
    main()
