#!/usr/bin/env python3
"""Throughput of ``splitproxy serve --workers 1`` against ``--workers 2``, interleaved.

Topology, all on 127.0.0.1: ``wrk`` (1 thread, 64 keep-alive connections, ``GET /ok``) ->
splitproxy (one route, stable and candidate both the upstream, weight 50, sticky cookie, no
access log) -> nginx (1 worker, ``upstream_nginx.sh``). Runs alternate between the two
settings, in an order that flips every round (1 2 2 1 1 2 ...), each on a freshly started proxy,
after a warm-up, so a change of the machine's load hits both alike. Nothing is pinned: the
workers, wrk and nginx share whatever cores the machine has, which is the point (on a
2-core machine the load generator and the upstream compete with the second worker).

Per run: req/s, wrk's p50/p99, the share of requests each worker answered
(``splitproxy_worker_requests_total``), the CPU the proxy's processes, wrk and nginx used
(cores, from ``/proc/PID/stat``), and *other load*: busy cores on the machine that none of
those account for (other users' work: the noise).

    .venv/bin/python benchmarks/workers_bench.py                    # 5 rounds, 10 s runs
    .venv/bin/python benchmarks/workers_bench.py --rounds 3 --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from run import busy_cores, proc_stat
from serving import start_serve

BENCH = Path(__file__).resolve().parent
HEADER = "Cookie: splitproxy_id=bench-user-1"
TICKS = os.sysconf("SC_CLK_TCK")


def routes_yaml(port: int) -> str:
    upstream = f"http://127.0.0.1:{port}"
    return (
        "routes:\n  - name: bench\n"
        f"    stable: {{url: '{upstream}'}}\n"
        f"    candidate: {{url: '{upstream}', revision: b}}\n"
        "    weight: 50\n    sticky: {cookie: splitproxy_id}\n"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor and its workers)."""
    found = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


async def worker_requests(admin: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/metrics") as resp:
            text = await resp.text()
    found = re.findall(r'^splitproxy_worker_requests_total\{pid="\d+",worker="(\d+)"\} (\S+)$',
                       text, re.MULTILINE)  # fmt: skip
    return {worker: float(value) for worker, value in found}


async def wait_workers(admin: str, count: int, limit: float = 30.0) -> None:
    """Until every worker serves (its counts reach the leader)."""
    if count == 1:
        return
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{admin}/metrics") as resp:
                if re.search(rf"^splitproxy_workers {count}\.0$", await resp.text(), re.M):
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{count} workers did not all start")


def wrk(url: str, seconds: float, connections: int) -> tuple[dict[str, Any], int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "5s", "--latency",
           "-s", str(BENCH / "wrk_report.lua"), "-H", HEADER, url]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return {"cmd": cmd, "proc": proc}, proc.pid


def wrk_result(started: dict[str, Any]) -> dict[str, Any]:
    proc: subprocess.Popen[str] = started["proc"]
    out, err = proc.communicate(timeout=120)
    found = re.search(r"^WRKJSON (.*)$", out, re.M)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"wrk failed ({proc.returncode}): {(err or out).strip()[:300]}")
    data: dict[str, Any] = json.loads(found.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    errors = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    data["errors"] = sum(data[k] for k in errors)
    return data


async def one_run(
    config: Path, workers: int, args: argparse.Namespace, nginx: list[int], work: Path
) -> dict[str, Any]:
    log = work / f"proxy-w{workers}.log"
    proc, url, admin = await start_serve(
        config, log, "--workers", str(workers), "--no-access-log", "--drain-timeout", "2"
    )
    try:
        await wait_workers(admin, workers)
        warm, _ = wrk(url + "ok", args.warmup, args.connections)
        await asyncio.to_thread(wrk_result, warm)
        before_counts = await worker_requests(admin)
        ours = tree(proc.pid) + nginx
        started, wrk_pid = wrk(url + "ok", args.duration, args.connections)
        ours.append(wrk_pid)
        cpu0 = {pid: cpu_seconds(pid) for pid in ours}
        stat0, t0 = proc_stat(), time.monotonic()
        await asyncio.sleep(args.duration * 0.9)  # inside the run: wrk's own pid still counts
        cpu1 = {pid: cpu_seconds(pid) for pid in ours}
        stat1, t1 = proc_stat(), time.monotonic()
        result = await asyncio.to_thread(wrk_result, started)
        after_counts = await worker_requests(admin)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    span = t1 - t0
    proxy_pids = set(ours) - set(nginx) - {wrk_pid}
    used = {pid: (cpu1[pid] - cpu0[pid]) / span for pid in ours}
    ours_busy = sum(used.values())
    served = {w: after_counts.get(w, 0) - before_counts.get(w, 0) for w in after_counts}
    total = sum(served.values()) or 1.0
    return {
        "workers": workers,
        "rps": round(result["rps"], 1),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["errors"],
        "split": {w: round(n / total, 3) for w, n in sorted(served.items())},
        "proxy_cores": round(sum(used[p] for p in proxy_pids), 2),
        "wrk_cores": round(used[wrk_pid], 2),
        "nginx_cores": round(sum(used[p] for p in nginx), 2),
        "other_cores": round(max(0.0, busy_cores(stat0, stat1) - ours_busy), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--upstream-port", type=int, default=28090)
    ap.add_argument("--json", type=Path, help="write every run here (JSON lines)")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx (apt-get install wrk nginx)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="splitproxy-workers-bench-"))
    upstream = subprocess.Popen(
        ["bash", str(BENCH / "upstream_nginx.sh"), str(args.upstream_port), str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    runs: list[dict[str, Any]] = []
    try:
        time.sleep(1.0)  # nginx writes its pid file
        pidfile = work / f"upstream-{args.upstream_port}" / "nginx.pid"
        master = int(pidfile.read_text())
        nginx = tree(master)
        config = work / "routes.yaml"
        config.write_text(routes_yaml(args.upstream_port))
        for i in range(args.rounds):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            for workers in order:
                run = asyncio.run(one_run(config, workers, args, nginx, work))
                run["round"] = i + 1
                run["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in runs))
    report(runs)
    return 0


def report(runs: list[dict[str, Any]]) -> None:
    print("\n| workers | req/s median (min–max) | p99 ms median | proxy cores | wrk + nginx cores"
          " | other load (cores) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for workers in (1, 2):
        mine = [r for r in runs if r["workers"] == workers]
        rps = [r["rps"] for r in mine]
        other = [r["other_cores"] for r in mine]
        print(
            f"| {workers} | {statistics.median(rps):.0f} ({min(rps):.0f}–{max(rps):.0f}) "
            f"| {statistics.median(r['p99_ms'] for r in mine):.1f} "
            f"| {statistics.median(r['proxy_cores'] for r in mine):.2f} "
            f"| {statistics.median(r['wrk_cores'] + r['nginx_cores'] for r in mine):.2f} "
            f"| {statistics.median(other):.2f} ({min(other):.2f}–{max(other):.2f}) |"
        )
    ratios = []
    for i in sorted({r["round"] for r in runs}):
        one = [r["rps"] for r in runs if r["round"] == i and r["workers"] == 1]
        two = [r["rps"] for r in runs if r["round"] == i and r["workers"] == 2]
        if one and two:
            ratios.append(two[0] / one[0])
    if ratios:
        print(f"\n2 workers / 1 worker, paired per round: median {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
