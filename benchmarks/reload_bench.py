#!/usr/bin/env python3
"""Hot reload under load: N routing-file writes (good and bad mixed) while clients keep
sending requests through a real ``splitproxy serve`` process. Loopback only.

What it checks and measures:

* no request fails (non-200 or a connection error) during the whole run;
* every bad write is rejected (counted in ``splitproxy_config_reloads_total{result="failure"}``,
  shown in status) while the last good config keeps serving;
* for every good write, the time from the end of the write until the change is in force,
  seen from the data path: each good write flips the route's weight between 0 and 100, and a
  probe client sends requests until one is answered by the version the new file names.
  p50 / p99 / max are reported, and how many took longer than 2 s.

Writes rotate through the ways files change on disk (``--method rotate``): an atomic rename
in the same directory, an in-place rewrite of the same inode, and a ``mv`` from another
directory; ``--method configmap`` uses a Kubernetes ConfigMap layout (``..data`` symlink swap)
instead. The proxy runs with its defaults (directory watch + 1 s poll + 200 ms debounce).

    .venv/bin/python benchmarks/reload_bench.py                 # 200 writes, every 3rd bad
    .venv/bin/python benchmarks/reload_bench.py --method configmap --writes 60 --json out.json
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
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from serving import start_serve, start_upstream

BAD_FILES = (
    "routes:\n  - name: app\n    stable: [unclosed\n",  # YAML error (line, column)
    "routes:\n  - {name: app, stable: 'http://127.0.0.1:9', weight: 150}\n",  # field error
    "",  # empty file
    "routes: []\n",  # no routes
    "routes:\n  - {name: app, stable: 'http://127.0.0.1:9', colour: red}\n",  # unknown key
)


# -- the upstreams --------------------------------------------------------------------------


def routes_yaml(stable: int, candidate: int, weight: int, revision: str) -> str:
    return (
        f"revision: {revision}\n"
        "routes:\n"
        "  - name: app\n"
        f"    stable: http://127.0.0.1:{stable}\n"
        f"    candidate: {{url: 'http://127.0.0.1:{candidate}', revision: c}}\n"
        f"    weight: {weight}\n"
    )


# -- ways to write the file -------------------------------------------------------------------


class ConfigFile:
    """The routing file and the ways it gets changed."""

    def __init__(self, root: Path, method: str, text: str) -> None:
        self.root = root
        self.method = method
        self.n = 0
        self.rotation = {False: 0, True: 0}  # good and bad writes rotate separately
        self.conf = root / "conf"
        self.conf.mkdir()
        self.staging = root / "staging"
        self.staging.mkdir()
        self.path = self.conf / "routes.yaml"
        if method == "configmap":
            self._configmap(text)
            (self.conf / "routes.yaml").symlink_to("..data/routes.yaml")
        else:
            self.path.write_text(text)

    def write(self, text: str, bad: bool = False) -> str:
        """Change the file; returns how."""
        self.n += 1
        if self.method == "configmap":
            self._configmap(text)
            return "configmap"
        how = self.method
        if how == "rotate":
            self.rotation[bad] += 1
            how = ("rename", "in-place", "mv")[self.rotation[bad] % 3]
        if how == "rename":
            tmp = self.conf / ".routes.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.path)
        elif how == "in-place":
            with self.path.open("r+") as f:
                f.truncate(0)
                f.write(text)
        else:
            tmp = self.staging / "routes.yaml"
            tmp.write_text(text)
            shutil.move(tmp, self.path)
        return how

    def _configmap(self, text: str) -> None:
        gen = self.conf / f"..gen_{self.n}"
        gen.mkdir()
        (gen / "routes.yaml").write_text(text)
        tmp = self.conf / "..data_tmp"
        tmp.symlink_to(gen.name)
        os.replace(tmp, self.conf / "..data")
        for old in self.conf.glob("..gen_*"):
            if old != gen:
                shutil.rmtree(old)


# -- load and probe -------------------------------------------------------------------------


@dataclass
class Load:
    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set() and loop.time() < deadline:
            try:
                async with session.get(self.url) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        self.ok += 1
                        self.bodies[body] += 1
                    else:
                        self.failures.append(f"{resp.status} {body[:120]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))


async def serves(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as resp:
        return f"{resp.status}:{await resp.text()}"


async def wait_until(
    session: aiohttp.ClientSession, url: str, want: str, started: float, limit: float
) -> float | None:
    """Probe until a response comes from ``want``; seconds since ``started`` (or None)."""
    while time.monotonic() - started < limit:
        if await serves(session, url) == f"200:{want}":
            return time.monotonic() - started
        await asyncio.sleep(0.002)
    return None


async def scrape(session: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    async with session.get(admin + "/metrics") as resp:
        text = await resp.text()
    out = {}
    for key in ("success", "failure"):
        m = re.search(rf'^splitproxy_config_reloads_total{{result="{key}"}} (\S+)$', text, re.M)
        out[key] = float(m.group(1)) if m else float("nan")
    return out


# -- the run --------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stable_runner, stable_port = await start_upstream("stable")
    cand_runner, cand_port = await start_upstream("candidate")
    root = Path(tempfile.mkdtemp(prefix="reload-bench-"))
    log_path = root / "proxy.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        cfg = ConfigFile(root, args.method, routes_yaml(stable_port, cand_port, 0, "g0"))
        proc, url, admin = await start_serve(cfg.path, log_path, "--no-access-log", timeout=20)
        await asyncio.sleep(0.5)  # the watch is up

        load = Load(url)
        latencies: list[float] = []
        by_method: dict[str, list[float]] = {}
        missed: list[int] = []
        bad_writes = 0
        kept_serving = 0
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=args.workers)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            aiohttp.ClientSession(timeout=timeout) as probe,
        ):
            before = await scrape(probe, admin)
            end = loop.time() + args.max_seconds
            workers = [loop.create_task(load.worker(session, end)) for _ in range(args.workers)]
            started_at = time.monotonic()
            current = "stable"
            for i in range(1, args.writes + 1):
                if i % args.bad_every == 0:
                    bad_writes += 1
                    cfg.write(BAD_FILES[bad_writes % len(BAD_FILES)], bad=True)
                    target = before["failure"] + bad_writes
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < args.limit:  # rejected, and counted
                        if (await scrape(probe, admin))["failure"] >= target:
                            break
                        await asyncio.sleep(0.01)
                    else:
                        missed.append(i)
                    if await serves(probe, url) == f"200:{current}":
                        kept_serving += 1
                    continue
                current = "candidate" if current == "stable" else "stable"
                weight = 100 if current == "candidate" else 0
                how = cfg.write(routes_yaml(stable_port, cand_port, weight, f"g{i}"))
                t0 = time.monotonic()
                took = await wait_until(probe, url, current, t0, args.limit)
                if took is None:
                    missed.append(i)
                else:
                    latencies.append(took)
                    by_method.setdefault(how, []).append(took)
                await asyncio.sleep(args.pause)
            elapsed = time.monotonic() - started_at
            load.stop.set()
            await asyncio.gather(*workers)
            after = await scrape(probe, admin)
            async with probe.get(admin + "/api/v1/status") as resp:
                status = await resp.json()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            exit_code = await proc.wait()
        proc = None
        good = len(latencies) + len([i for i in missed if i % args.bad_every])
        return {
            "method": args.method,
            "writes": args.writes,
            "good_writes": good,
            "bad_writes": bad_writes,
            "seconds": round(elapsed, 1),
            "requests_ok": load.ok,
            "requests_per_second": round(load.ok / elapsed),
            "failed_requests": len(load.failures),
            "failure_samples": load.failures[:5],
            "served_by": dict(load.bodies),
            "reloads_success": after["success"] - before["success"],
            "reloads_failure": after["failure"] - before["failure"],
            "bad_kept_old_config": kept_serving,
            "not_in_force_within_limit": missed,
            "latency_s": {
                "p50": round(statistics.median(latencies), 3) if latencies else None,
                "p99": round(pct(latencies, 99), 3),
                "max": round(max(latencies), 3) if latencies else None,
                "over_2s": sum(1 for x in latencies if x > 2.0),
            },
            "latency_p50_by_method_s": {
                k: round(statistics.median(v), 3) for k, v in sorted(by_method.items())
            },
            "final_revision": status["config"]["revision"],
            "proxy_exit_code": exit_code,
        }
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            async with asyncio.timeout(5):
                await proc.wait()
        await stable_runner.cleanup()
        await cand_runner.cleanup()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--writes", type=int, default=200, help="file writes in all (200)")
    parser.add_argument("--bad-every", type=int, default=3, help="every Nth write is bad (3)")
    parser.add_argument(
        "--method", choices=("rotate", "rename", "in-place", "mv", "configmap"), default="rotate"
    )
    parser.add_argument("--workers", type=int, default=4, help="closed-loop clients (4)")
    parser.add_argument("--limit", type=float, default=10.0, help="give up on a change after S")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between writes")
    parser.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (proxy log)")
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = (
        result["failed_requests"] == 0
        and not result["not_in_force_within_limit"]
        and result["reloads_failure"] == result["bad_writes"]
        and result["bad_kept_old_config"] == result["bad_writes"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
