#!/usr/bin/env python3
"""A reload of a 10,000-route file under load: how soon is it in force, does serving stall?

A real ``splitproxy serve`` (subprocess, loopback, access log off) serves a routing file of
``--routes`` routes (a host and a path prefix each, stable and candidate on one small loopback
upstream, every fifth route sticky, every tenth with a header override) while ``--clients``
closed-loop clients send requests through it without pause. Then:

1. ``--writes`` times, the file is rewritten (an atomic rename) with one route's weight changed,
   and the admin API's ``/api/v1/routes/NAME`` is polled until that weight is in force:
   (a) the time from the write to then; (b) the largest gap between two completed client
   requests from the write until one second after it is in force (the stall), against the
   largest gap in a quiet stretch before;
2. ``GET /api/v1/status`` ``--status`` times, one after the other, for the default page and
   then with ``?limit=`` of every route: (c) its latency, and the largest gap between two
   completed client requests meanwhile (a server without pages answers every route both
   times).

    .venv/bin/python benchmarks/reload_big.py                 # 10,000 routes, 3 writes
    .venv/bin/python benchmarks/reload_big.py --routes 1000 --writes 2 --status 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Final

import aiohttp
from serving import start_serve, start_upstream

AFTER: Final = 1.0  # seconds after the change is in force still counted as the reload's


def routing_file(port: int, routes: int, changed: int, weight: int) -> str:
    """The file; route ``changed`` has weight ``weight``, every other route 10."""
    up = f"http://127.0.0.1:{port}"
    lines = ["routes:"]
    for i in range(routes):
        lines += [
            f"  - name: route-{i}",
            f"    match: {{host: host-{i}.example, path_prefix: /p{i % 7}}}",
            f"    stable: {up}",
            f"    candidate: {{url: '{up}', revision: 'c{i % 3}'}}",
            f"    weight: {weight if i == changed else 10}",
        ]
        if i % 5 == 0:
            lines.append("    sticky: {cookie: splitproxy_id}")
        if i % 10 == 0:
            lines.append("    overrides: [{header: X-Canary}]")
    lines += ["  - name: main", f"    stable: {up}", ""]
    return "\n".join(lines)


def gaps(done: list[float], begin: float, end: float) -> float:
    """The largest time between two completed requests (or an edge) within [begin, end]."""
    inside = [t for t in done if begin <= t <= end]
    edges = [begin, *inside, end]
    return max(b - a for a, b in pairwise(edges))


async def run(args: argparse.Namespace) -> int:
    upstream, port = await start_upstream("ok")
    root = Path(tempfile.mkdtemp(prefix="reload-big-"))
    path = root / "routes.yaml"
    path.write_text(routing_file(port, args.routes, 0, 10))
    size = path.stat().st_size
    log_path = root / "proxy.log"
    proc: asyncio.subprocess.Process | None = None
    done: list[float] = []  # when each client request completed
    try:
        started = time.monotonic()
        proc, url, base = await start_serve(path, log_path, "--no-access-log", timeout=120)
        print(f"routing file: {size / 1e6:.2f} MB, {args.routes + 1} routes")
        print(f"start until listening: {time.monotonic() - started:.2f} s")
        stop = asyncio.Event()
        target = url + "p0/x"
        headers = {"Host": "main.example"}

        async def client(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                async with session.get(target, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                done.append(time.monotonic())

        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = [asyncio.create_task(client(session)) for _ in range(args.clients)]
            await asyncio.sleep(1.0)
            quiet_from = time.monotonic()
            await asyncio.sleep(2.0)
            quiet = gaps(done, quiet_from, time.monotonic())
            print(f"largest gap between completed requests, no reload: {quiet * 1000:.1f} ms")
            took: list[float] = []
            stalls: list[float] = []
            for n in range(1, args.writes + 1):
                name, weight = f"route-{n * 997 % args.routes}", 10 + n
                changed = int(name.split("-")[1])
                tmp = root / "routes.yaml.tmp"
                tmp.write_text(routing_file(port, args.routes, changed, weight))
                written = time.monotonic()
                tmp.replace(path)
                while True:
                    async with session.get(f"{base}/api/v1/routes/{name}") as resp:
                        view = await resp.json()
                    if view["weight"]["file"] == weight:
                        break
                    if time.monotonic() - written > 60:
                        raise SystemExit(f"{name}'s new weight not in force after 60 s")
                    await asyncio.sleep(0.01)
                in_force = time.monotonic()
                await asyncio.sleep(AFTER)
                took.append(in_force - written)
                stalls.append(gaps(done, written, in_force + AFTER))
                print(
                    f"write {n}: in force after {took[-1]:.2f} s; "
                    f"largest gap between completed requests {stalls[-1] * 1000:.1f} ms"
                )
            status_lines = []
            for label, query in [
                ("", ""),  # the default page
                (" every route", f"?limit={args.routes + 1}"),
            ]:
                latencies: list[float] = []
                status_from = time.monotonic()
                for _ in range(args.status):
                    t0 = time.monotonic()
                    async with session.get(f"{base}/api/v1/status{query}") as resp:
                        body = await resp.read()
                    latencies.append(time.monotonic() - t0)
                status_gap = gaps(done, status_from, time.monotonic())
                status_lines.append(
                    f"GET /api/v1/status{query}{label} ({len(body) / 1e6:.1f} MB): median "
                    f"{statistics.median(latencies) * 1000:.0f} ms, "
                    f"max {max(latencies) * 1000:.0f} ms; "
                    f"largest gap between completed requests meanwhile {status_gap * 1000:.0f} ms"
                )
            stop.set()
            await asyncio.gather(*clients)
        print(
            f"write -> in force: median {statistics.median(took):.2f} s, max {max(took):.2f} s; "
            f"stall (largest gap): median {statistics.median(stalls) * 1000:.0f} ms, "
            f"max {max(stalls) * 1000:.0f} ms"
        )
        for line in status_lines:
            print(line)
        print(f"client requests completed: {len(done)}")
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await upstream.cleanup()
        if args.show_log:
            print(log_path.read_text()[-args.show_log :])
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--status", type=int, default=3, help="GET /api/v1/status calls")
    parser.add_argument("--show-log", type=int, default=0, metavar="CHARS")
    args = parser.parse_args()
    if not (1 <= args.routes <= 20_000 and 1 <= args.writes <= 20 and args.status <= 20):
        parser.error("keep it bounded: routes <= 20,000, writes <= 20, status <= 20")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
