#!/usr/bin/env python3
"""What does traffic mirroring cost the users? Loopback only.

A real ``splitproxy serve`` process (one route, weight 0: every user request goes to stable)
serves load while 100 % of its GETs are mirrored to a candidate that is (a) healthy, (b)
hanging (accepts, reads, never answers) or (c) resetting (an RST on every request); the same
run without ``mirror:`` is the reference. Each upstream runs in its own process (raw asyncio
on uvloop, a fixed 1 KB answer), so the candidate's work never slows stable's.

Per configuration, interleaved in rounds (none, healthy, hanging, resetting, none, ...):
  * closed loop: wrk, ``--connections`` keep-alive connections for ``--duration`` s:
    throughput and user p50/p99;
  * open loop: ``loadgen_open.py`` at ``--rate`` req/s for ``--duration`` s: user p50/p99 at
    a fixed arrival rate (what a user waits, free of coordinated omission);
  * what became of the copies (``splitproxy_mirror_requests_total``) and every user error.
Medians over the rounds. The bar: with a hanging candidate, open-loop user p99 within 10 %
(or 1 ms) of no mirroring, and no user request failing.

    .venv/bin/python benchmarks/mirror_bench.py                  # 3 rounds, 8 s each (~5 min)
    .venv/bin/python benchmarks/mirror_bench.py --rounds 1 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, cast

from serving import start_serve

BENCH = Path(__file__).resolve().parent
BODY = b"x" * 1024
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
CONFIGS = ("none", "healthy", "hanging", "resetting")


# ---------------------------------------------------------------- upstreams (own processes)
class _Upstream(asyncio.Protocol):
    """``ok``: answers every request head with `ANSWER` (keep-alive, GETs without bodies);
    ``hang``: reads and never answers; ``reset``: an RST as soon as a request arrives."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.kind == "hang":
            return
        if self.kind == "reset":
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return
        self.buf += data
        answers = 0
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            del self.buf[: end + 4]
            answers += 1
        if answers:
            self.transport.write(ANSWER * answers)


def serve_upstream(kind: str) -> None:
    """Run one upstream until killed; print its port."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Upstream(kind), "127.0.0.1", 0, backlog=1024)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def start_upstreams() -> tuple[dict[str, int], list[asyncio.subprocess.Process]]:
    ports: dict[str, int] = {}
    procs = []
    for name, kind in (("stable", "ok"), ("healthy", "ok"), ("hanging", "hang"),
                       ("resetting", "reset")):  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--upstream", kind,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        ports[name] = int(line.split()[1])
    return ports, procs


# ---------------------------------------------------------------- the proxy and the load
def routing_file(ports: dict[str, int], config: str) -> str:
    candidate = ports["healthy" if config == "none" else config]
    lines = [
        "routes:",
        "  - name: app",
        f"    stable: http://127.0.0.1:{ports['stable']}",
        f"    candidate: http://127.0.0.1:{candidate}",
        "    weight: 0",
    ]
    if config != "none":
        lines.append("    mirror: {percent: 100, compare: {body: hash}}")
    return "\n".join(lines) + "\n"


def run(cmd: list[str], pattern: str, timeout: float) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    m = re.search(pattern, r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"{cmd[0]} failed (rc={r.returncode}): {r.stderr.strip()[-300:]}")
    out: dict[str, Any] = json.loads(m.group(1))
    return out


def wrk(url: str, args: argparse.Namespace, duration: float) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{duration:g}s", "--timeout", "5s"]
    cmd += ["--latency", "-s", str(BENCH / "wrk_report.lua"), url]
    d = run(cmd, r"^WRKJSON (.*)$", duration + 30)
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    d["errors"] = sum(d[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                     "err_timeout"))  # fmt: skip
    return d


def open_loop(port: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "loadgen_open.py"), "--port", str(port), "--path", "/a"]
    cmd += ["--rate", str(args.rate), "--duration", str(args.duration)]
    d = run(cmd, r"^OPENJSON (.*)$", args.duration + 60)
    d["user_errors"] = d["non_2xx"] + d["unfinished"] + sum(d["errors"].values())
    return d


def mirror_counts(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^splitproxy_mirror_requests_total\{.*result="(\w+)".*\} (\S+)$',
                         text, re.M):  # fmt: skip
        out[m.group(1)] = float(m.group(2))
    return out


async def measure(
    ports: dict[str, int], config: str, args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    path = root / f"{config}.yaml"
    path.write_text(routing_file(ports, config))
    proc, url, admin = await start_serve(path, root / f"{config}.log", "--no-access-log")
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        await asyncio.to_thread(wrk, url + "a", args, args.warmup)
        closed = await asyncio.to_thread(wrk, url + "a", args, args.duration)
        opened = await asyncio.to_thread(open_loop, port, args)
        counts = await asyncio.to_thread(mirror_counts, admin)
    finally:
        proc.terminate()
        await proc.wait()
    return {
        "config": config,
        "rps": closed["rps"],
        "closed_p50_ms": closed["p50_us"] / 1000,
        "closed_p99_ms": closed["p99_us"] / 1000,
        "open_p50_ms": opened["p50_us"] / 1000,
        "open_p99_ms": opened["p99_us"] / 1000,
        "user_errors": closed["errors"] + opened["user_errors"],
        "user_requests": closed["requests"] + opened["completed"],
        "copies": counts,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate (mirror 100 %) | req/s | p50 ms | p99 ms | p50 ms @rate | p99 ms @rate "
        "| user errors | copies: match / error / dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for config in CONFIGS:
        runs = [r for r in results if r["config"] == config]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(r[key] for r in runs))

        errors = sum(r["user_errors"] for r in runs)
        total = sum(r["user_requests"] for r in runs)
        copies = " / ".join(
            f"{sum(r['copies'].get(k, 0) for r in runs):,.0f}"
            for k in ("match", "error", "dropped")
        )
        name = "no mirroring" if config == "none" else config
        lines.append(
            f"| {name} | {med('rps'):,.0f} | {med('closed_p50_ms'):.2f} | "
            f"{med('closed_p99_ms'):.2f} | {med('open_p50_ms'):.2f} | {med('open_p99_ms'):.2f} "
            f"| {errors} of {total:,} | {copies if config != 'none' else '–'} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        sys.exit("mirror_bench: needs wrk (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    ports, procs = await start_upstreams()
    results: list[dict[str, Any]] = []
    try:
        for i in range(args.rounds):
            for config in CONFIGS:
                result = await measure(ports, config, args, root)
                results.append(result)
                print(f"round {i + 1} {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            proc.kill()
            await proc.wait()
    print(table(results))
    none = [r["open_p99_ms"] for r in results if r["config"] == "none"]
    hanging = [r["open_p99_ms"] for r in results if r["config"] == "hanging"]
    base, hung = statistics.median(none), statistics.median(hanging)
    failed = sum(r["user_errors"] for r in results if r["config"] == "hanging")
    ok = (hung <= base * 1.10 or hung - base <= 1.0) and failed == 0
    print(
        f"\nbar (hanging candidate): p99 @rate {hung:.2f} ms vs {base:.2f} ms without mirroring, "
        f"{failed} user errors: {'met' if ok else 'NOT met'}"
    )
    shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before measuring")
    p.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second")
    p.add_argument("--upstream", choices=("ok", "hang", "reset"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream:
        serve_upstream(args.upstream)
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
