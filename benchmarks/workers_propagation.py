#!/usr/bin/env python3
"""How long a runtime weight takes to reach every worker of ``splitproxy serve --workers N``.

Two aiohttp upstreams on 127.0.0.1 (``stable`` and ``candidate``) answer with their name and
the request id the proxy sent, whose prefix names the worker process that sent it. For each
of ``--flips`` changes, the script sets the route's runtime weight to 100 or 0 through the
admin API (on the leader) and, from the moment the API answered, sends requests on new
connections (so any worker may take them; several at a time) until every worker has answered
with the version the new weight names. The time until the last worker did is the
propagation time (an upper bound: it includes the probes' own round trips).

    .venv/bin/python benchmarks/workers_propagation.py                 # 2 workers, 30 flips
    .venv/bin/python benchmarks/workers_propagation.py --workers 3 --flips 50
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from serving import start_serve


async def upstream(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        worker = request.headers.get("X-Request-Id", "").partition("-")[0]
        return web.Response(text=f"{name} {worker}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def probe(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            version, _, worker = (await resp.text()).partition(" ")
            return version, worker


LIMIT = 30.0  # seconds: a worker that never answers stops the benchmark


async def workers_seen(url: str, count: int) -> set[str]:
    """Worker prefixes, probing until ``count`` distinct ones answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + LIMIT
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(seen)} of {count} workers answered")
        for _, worker in await asyncio.gather(*(probe(url) for _ in range(8))):
            seen.add(worker)
    return seen


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flips", type=int, default=30)
    args = ap.parse_args()
    stable, stable_port = await upstream("stable")
    candidate, candidate_port = await upstream("candidate")
    work = Path(tempfile.mkdtemp(prefix="splitproxy-propagation-"))
    config = work / "routes.yaml"
    config.write_text(
        "routes:\n  - name: app\n"
        f"    stable: {{url: 'http://127.0.0.1:{stable_port}'}}\n"
        f"    candidate: {{url: 'http://127.0.0.1:{candidate_port}', revision: b}}\n"
        "    weight: 0\n"
    )
    proc, url, admin = await start_serve(
        config, work / "proxy.log", "--workers", str(args.workers), "--no-access-log"
    )
    times: list[float] = []
    try:
        workers = await workers_seen(url, args.workers)
        async with aiohttp.ClientSession() as session:
            for i in range(args.flips):
                weight, want = (100, "candidate") if i % 2 == 0 else (0, "stable")
                async with session.put(
                    f"{admin}/api/v1/routes/app/weight", json={"weight": weight}
                ) as resp:
                    resp.raise_for_status()
                t0 = time.perf_counter()
                done: set[str] = set()
                while done != workers:
                    if time.perf_counter() - t0 > LIMIT:
                        raise SystemExit(f"weight {weight} never reached {workers - done}")
                    for version, worker in await asyncio.gather(*(probe(url) for _ in range(8))):
                        if version == want:
                            done.add(worker)
                times.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        await proc.wait()
        await stable.cleanup()
        await candidate.cleanup()
    ms = sorted(t * 1000 for t in times)
    print(
        f"{args.workers} workers, {len(ms)} weight changes: until every worker serves the new "
        f"weight, median {statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.1f} "
        f"ms, max {ms[-1]:.1f} ms (probe round trips included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
