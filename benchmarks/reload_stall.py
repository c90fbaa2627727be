#!/usr/bin/env python3
"""Does reloading a large routing file stall serving? Loopback only.

A real ``splitproxy serve`` process serves a steady stream of requests (a few concurrent
clients, one small upstream) while its routing file is rewritten ``--writes`` times with a
~1 MB file (``--routes`` routes with overrides, each write a new revision and a new candidate
revision for every route, so nothing can be reused). The request latencies are split into
those that overlapped a reload (from the write until 0.5 s after the new revision is in
force) and the rest; p50 / p99 / max of both are reported. Whatever holds the interpreter
during a reload shows in the "during" row: work on the event loop, and, from the reload's
thread, long C calls and garbage collections (a full collection stops every thread).

    .venv/bin/python benchmarks/reload_stall.py                   # 5 writes of ~1 MB
    .venv/bin/python benchmarks/reload_stall.py --routes 100 --writes 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from serving import start_serve, start_upstream

# How long after the new revision is in force a request still counts as "during" the reload.
SETTLE = 0.5


def routing_file(port: int, routes: int, revision: int) -> str:
    lines = [f"revision: r{revision}", "routes:"]
    for i in range(routes):
        lines += [
            f"  - name: route-{i}",
            f"    match: {{host: host-{i}.example, path_prefix: /p{i}}}",
            f"    stable: http://127.0.0.1:{port}",
            f"    candidate: {{url: 'http://127.0.0.1:{port}', revision: 'c{revision}'}}",
            "    overrides:",
            "      - {header: X-Canary}",
            "      - {cookie: beta, regex: '^(1|yes|true)$'}",
            "      - {header: X-Group, value: beta-testers}",
            "      - {cookie: tier, regex: '^(gold|platinum)-[0-9]{1,6}$'}",
            "    sticky: {cookie: splitproxy_id}",
            "    weight: 5",
        ]
    lines += [
        "  - name: main",
        f"    stable: http://127.0.0.1:{port}",
        "",
    ]
    return "\n".join(lines)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> int:
    upstream, port = await start_upstream("ok")
    root = Path(tempfile.mkdtemp(prefix="reload-stall-"))
    path = root / "routes.yaml"
    path.write_text(routing_file(port, args.routes, 0))
    size = path.stat().st_size
    log_path = root / "proxy.log"
    proc: asyncio.subprocess.Process | None = None
    samples: list[tuple[float, float]] = []  # (start, latency)
    windows: list[tuple[float, float]] = []  # (write, in force)
    try:
        proc, url, base = await start_serve(path, log_path, "--no-access-log", timeout=60)
        # one route's view, not /api/v1/status: rendering all ~2,000 routes every 20 ms would
        # itself stall the loop and be counted as the reload's stall. The write changes
        # route-0's candidate revision, in the same swap as the file's revision.
        admin = base + "/api/v1/routes/route-0"
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                samples.append((t0, time.monotonic() - t0))
                await asyncio.sleep(0.002)

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = [asyncio.create_task(client(session)) for _ in range(args.clients)]
            await asyncio.sleep(2.0)  # baseline
            for i in range(1, args.writes + 1):
                tmp = root / "routes.yaml.tmp"
                tmp.write_text(routing_file(port, args.routes, i))
                written = time.monotonic()
                tmp.replace(path)
                while True:  # until the new revision is in force
                    async with session.get(admin) as resp:
                        status = await resp.json()
                    if status["candidate"]["revision"] == f"c{i}":
                        break
                    await asyncio.sleep(0.02)
                windows.append((written, time.monotonic()))
                await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*clients)
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await upstream.cleanup()
        if args.show_log:  # the proxy's own log: which reload logged what, and when
            print(log_path.read_text()[-args.show_log :])
        shutil.rmtree(root, ignore_errors=True)

    def overlaps(start: float, latency: float) -> bool:
        # a reload's after-effects (the collection of what it freed) count as the reload's
        return any(start <= end + SETTLE and start + latency >= begin for begin, end in windows)

    during = [lat * 1000 for start, lat in samples if overlaps(start, lat)]
    outside = [lat * 1000 for start, lat in samples if not overlaps(start, lat)]
    took = [(end - begin) for begin, end in windows]
    print(f"routing file: {size / 1e6:.2f} MB, {args.routes + 1} routes; {args.writes} writes")
    print(f"write -> in force: median {statistics.median(took):.2f} s, max {max(took):.2f} s")
    print("| requests | count | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in (("outside reloads", outside), ("during reloads", during)):
        print(
            f"| {name} | {len(values)} | {pct(values, 0.5):.2f} | {pct(values, 0.99):.2f} "
            f"| {max(values, default=float('nan')):.2f} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=2000, help="routes in the file (~1 MB)")
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--show-log", type=int, default=0, metavar="CHARS", help="print the proxy log's tail"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
