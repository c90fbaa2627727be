#!/usr/bin/env python3
"""Soak: a real ``splitproxy serve`` under steady load for minutes, with rollouts and reloads.

A stable and a candidate upstream (aiohttp, loopback) sit behind the proxy. An open-loop
client sends ``--rate`` requests per second for ``--minutes``; every ``--reload-every``
seconds the routing file is rewritten (a new candidate revision, which restarts the canary
rollout, and every third write a bad file that must be rejected while the last good one keeps
serving). Every ``--sample-every`` seconds the proxy's RSS and open file descriptors are read
from /proc. Reported: requests sent, failed (connection errors or a status other than 200),
rollouts started/promoted, reloads accepted/rejected, and RSS and fds over time (a table).

    .venv/bin/python benchmarks/soak.py                      # 10 minutes at 200 req/s
    .venv/bin/python benchmarks/soak.py --minutes 1 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import aiohttp
from serving import start_serve, start_upstream

BAD = "routes:\n  - {name: app, stable: 'http://127.0.0.1:9', weight: 150}\n"


def routes_yaml(stable: int, candidate: int, revision: int) -> str:
    return (
        f"revision: soak-{revision}\n"
        "routes:\n"
        "  - name: app\n"
        f"    stable: http://127.0.0.1:{stable}\n"
        f"    candidate: {{url: 'http://127.0.0.1:{candidate}', revision: 'c{revision}'}}\n"
        "    sticky: {cookie: splitproxy_id}\n"
        "    rollout:\n"
        "      steps: [10, 50]\n"
        "      interval: 2s\n"
        "      min_requests: 20\n"
        "      checks: [{metric: error_rate, max: 0.05}]\n"
    )


def rss_and_fds(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def metric_sum(session: aiohttp.ClientSession, admin: str, name: str) -> dict[str, float]:
    async with session.get(admin + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


async def run(args: argparse.Namespace) -> int:
    stable, stable_port = await start_upstream("stable")
    candidate, candidate_port = await start_upstream("candidate")
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    path = root / "routes.yaml"
    revision = 0
    path.write_text(routes_yaml(stable_port, candidate_port, revision))
    log_path = root / "proxy.log"
    proc: asyncio.subprocess.Process | None = None
    sent = failed = 0
    errors: dict[str, int] = {}
    samples: list[tuple[float, float, int]] = []
    reloads = {"good": 0, "bad": 0}
    try:
        proc, url, admin = await start_serve(path, log_path, "--state-dir", str(root / "state"))
        pid = proc.pid
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + args.minutes * 60
        in_flight: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=200)
        timeout = aiohttp.ClientTimeout(total=30)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(jar_user: int) -> None:
                nonlocal failed
                headers = {"Cookie": f"splitproxy_id=user-{jar_user}"}
                try:
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            failed += 1
                            key = f"status {resp.status}"
                            errors[key] = errors.get(key, 0) + 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failed += 1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

            async def reloader() -> None:
                nonlocal revision
                writes = 0
                while loop.time() < end:
                    await asyncio.sleep(args.reload_every)
                    writes += 1
                    tmp = root / "routes.yaml.tmp"
                    if writes % 3 == 0:
                        tmp.write_text(BAD)
                        reloads["bad"] += 1
                    else:
                        revision += 1
                        tmp.write_text(routes_yaml(stable_port, candidate_port, revision))
                        reloads["good"] += 1
                    tmp.replace(path)

            async def sampler() -> None:
                while loop.time() < end:
                    samples.append((loop.time() - started, *rss_and_fds(pid)))
                    await asyncio.sleep(args.sample_every)

            side = [loop.create_task(reloader()), loop.create_task(sampler())]
            interval = 1 / args.rate
            next_at = loop.time()
            while next_at < end:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                task = loop.create_task(one(sent % 1000))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
                next_at += interval
            await asyncio.gather(*in_flight)
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            samples.append((loop.time() - started, *rss_and_fds(pid)))
            rollouts = await metric_sum(session, admin, "splitproxy_rollouts_total")
            config = await metric_sum(session, admin, "splitproxy_config_reloads_total")
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await stable.cleanup()
        await candidate.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"{args.minutes:g} min at {args.rate:g} req/s, a reload every {args.reload_every:g} s "
        f"({reloads['good']} good, {reloads['bad']} bad)"
    )
    print(f"requests: {sent} sent, {failed} failed {errors or ''}")
    print(f"rollouts ended: {rollouts}; reloads: {config}")
    print("| t (s) | RSS (MiB) | open fds |")
    print("|---:|---:|---:|")
    step = max(1, len(samples) // 10)
    for t, rss, fds in [*samples[::step], samples[-1]]:
        print(f"| {t:.0f} | {rss:.1f} | {fds} |")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--reload-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
