#!/usr/bin/env python3
"""Replicas through Redis: what the Redis state backend costs, and how fast a weight spreads.

*Cost* (``--part cost``): ``wrk`` (1 thread, 64 keep-alive connections, ``GET /ok``) against
one ``splitproxy serve`` with a canary rollout running (weight 50, sticky cookie, access log
off), its state either in a directory (``--state-dir``, the file backend) or in a real
``redis-server`` on loopback (``--state redis://...``: the lease renewed every second, the
1 s buckets published four times a second, the state saved every 2 s). Runs alternate between
the two in an order that flips every round, each on a fresh proxy after a warm-up, so a change
of the machine's load hits both alike; the upstream is nginx (1 worker, ``upstream_nginx.sh``).
The figure is the paired ratio redis/file per round.

*Propagation* (``--part propagation``): three replicas on one Redis. ``--flips`` times, a runtime
weight of 100 or 0 is set through a follower's admin API (forwarded to the leader, carried out,
published); from the moment the API answered, each replica is probed on its proxy port (new
connections) until it answers with the version the new weight names. The time until the last
replica did is the propagation time (an upper bound: it includes the probes' round trips).

    .venv/bin/python benchmarks/replicas_bench.py --part cost --rounds 4 --duration 8
    .venv/bin/python benchmarks/replicas_bench.py --part propagation --flips 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from serving import start_serve, start_upstream
from workers_bench import tree, wrk, wrk_result

BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``redis-server`` on a free loopback port, append-only with an fsync per write (what
    the replicas' compose profile runs)."""
    port = free_port()
    data = work / f"redis-{port}"
    data.mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def rollout_yaml(stable: int, candidate: int | None = None) -> str:
    candidate = candidate or stable
    return f"""routes:
  - name: app
    stable: {{url: "http://127.0.0.1:{stable}", revision: "1.0"}}
    candidate: {{url: "http://127.0.0.1:{candidate}", revision: "1.1"}}
    sticky: {{cookie: splitproxy_id}}
    rollout:
      steps: [50]
      interval: 1h
      min_requests: 100
"""


async def cost_run(config: Path, backend: str, redis_url: str, args: argparse.Namespace,
                   nginx: list[int], work: Path) -> dict[str, Any]:  # fmt: skip
    state = ["--state", redis_url] if backend == "redis" else ["--state-dir", str(work / "s")]
    proc, url, admin = await start_serve(
        config, work / f"proxy-{backend}.log", *state, "--no-access-log", "--drain-timeout", "2"
    )
    try:
        warm, _ = wrk(url + "ok", args.warmup, args.connections)
        await asyncio.to_thread(wrk_result, warm)
        started, _ = wrk(url + "ok", args.duration, args.connections)
        result = await asyncio.to_thread(wrk_result, started)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{admin}/api/v1/routes/app") as resp:
                view = await resp.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    return {
        "backend": backend,
        "rps": round(result["rps"], 1),
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["errors"],
        "phase": view["rollout"]["phase"],
    }


def cost(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx (apt-get install wrk nginx)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="splitproxy-replicas-bench-"))
    upstream = subprocess.Popen(
        ["bash", str(BENCH / "upstream_nginx.sh"), str(args.upstream_port), str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    redis, url = start_redis(work)
    runs: list[dict[str, Any]] = []
    try:
        time.sleep(1.0)
        master = int((work / f"upstream-{args.upstream_port}" / "nginx.pid").read_text())
        nginx = tree(master)
        config = work / "routes.yaml"
        config.write_text(rollout_yaml(args.upstream_port))
        for i in range(args.rounds):
            order = ("file", "redis") if i % 2 == 0 else ("redis", "file")
            for backend in order:
                run = asyncio.run(cost_run(config, backend, url, args, nginx, work))
                run["round"] = i + 1
                run["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        redis.terminate()
        redis.wait(10)
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| backend | req/s median (min–max) | p99 ms median |")
    print("|---|---|---|")
    for backend in ("file", "redis"):
        rps = [r["rps"] for r in runs if r["backend"] == backend]
        p99 = statistics.median(r["p99_ms"] for r in runs if r["backend"] == backend)
        print(f"| {backend} | {statistics.median(rps):.0f} ({min(rps):.0f}–{max(rps):.0f}) "
              f"| {p99:.2f} |")  # fmt: skip
    ratios = []
    for i in range(1, args.rounds + 1):
        f = [r["rps"] for r in runs if r["round"] == i and r["backend"] == "file"]
        r_ = [r["rps"] for r in runs if r["round"] == i and r["backend"] == "redis"]
        ratios.append(r_[0] / f[0])
    print(f"\nredis/file paired ratio: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} rounds")  # fmt: skip
    return 0


async def version_of(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.text()


async def propagation(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="splitproxy-replicas-prop-"))
    redis, url = start_redis(work)
    stable, stable_port = await start_upstream("stable")
    candidate, candidate_port = await start_upstream("candidate")
    config = work / "routes.yaml"
    config.write_text(rollout_yaml(stable_port, candidate_port).split("    sticky:")[0]
                      + "    weight: 0\n")  # fmt: skip
    procs = []
    times: list[float] = []
    try:
        for i in range(3):
            procs.append(await start_serve(config, work / f"r{i}.log", "--state", url,
                                           "--no-access-log", "--drain-timeout", "1"))  # fmt: skip
        async with aiohttp.ClientSession() as admin:
            leaders = []
            for _, _, a in procs:
                async with admin.get(f"{a}/api/v1/status") as resp:
                    leaders.append((await resp.json())["rollouts"]["replica"]["leading"])
            follower = procs[leaders.index(False)][2]
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)
            ) as probe:
                for flip in range(args.flips):
                    weight = 100 if flip % 2 == 0 else 0
                    want = "candidate" if weight else "stable"
                    async with admin.put(f"{follower}/api/v1/routes/app/weight",
                                         json={"weight": weight}) as resp:  # fmt: skip
                        assert resp.status == 200, await resp.text()
                    t0 = time.monotonic()
                    pending = {u for _, u, _ in procs}
                    while pending:
                        if time.monotonic() - t0 > 30:
                            raise SystemExit(f"weight {weight} never reached {pending}")
                        got = await asyncio.gather(*(version_of(probe, u) for u in pending))
                        pending = {u for u, v in zip(list(pending), got, strict=True) if v != want}
                    times.append((time.monotonic() - t0) * 1000)
                    await asyncio.sleep(0.2)
    finally:
        for proc, _, _ in procs:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await stable.cleanup()
        await candidate.cleanup()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print(
        f"propagation of a weight (set on a follower) to 3 replicas over {len(times)} flips: "
        f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("cost", "propagation"), required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--upstream-port", type=int, default=28091)
    ap.add_argument("--flips", type=int, default=30)
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        print("needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    if args.part == "cost":
        return cost(args)
    return asyncio.run(propagation(args))


if __name__ == "__main__":
    sys.exit(main())
