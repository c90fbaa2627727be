#!/usr/bin/env python3
"""How long does the rollout controller's tick take with many routes under rollout?

Builds the real pieces the server builds (`RuntimeState`, `Recorder`, `Controller`) for a
routing file of ``--routes`` routes, each with a canary rollout (four steps, the documented
checks: error rate and p99 limits and both comparisons with stable), and drives the clock by
hand: for each simulated second it writes each route's traffic straight into its live window
(``--rps`` requests split at the weight in force, a few path classes, lognormal latencies, a
small error rate, every third route sticky by user), then times ``controller.tick(now)``. The
feeding is not timed; no sleeps, no sockets (the hooks and external reads are stubs).

Reports the median / p99 / max time per tick over ``--seconds`` ticks (after ``--warmup``
untimed ones), where the rollouts stand at the end, and, with ``--profile``, cProfile's top
entries (by own time and by cumulative time) over the timed ticks. Each tick runs on the event
loop beside a probe task that yields at every turn: its longest wait is the loop's longest
stall in that tick (in wall time, and in CPU time, which the machine's other load does not
move). ``--paced`` times the background loop's pass in slices (`Controller.paced_tick`)
instead of the synchronous `Controller.tick`. The collector's runs in the timed ticks are
counted by generation (`gc.callbacks`), each full one with its tick and duration; ``--settle``
settles the heap after each tick as the background loop does after each pass (so ``--paced
--settle`` is the loop as the server runs it).

    .venv/bin/python benchmarks/controller_tick.py                    # 1,000 routes, 60 ticks
    .venv/bin/python benchmarks/controller_tick.py --profile --seconds 20
    .venv/bin/python benchmarks/controller_tick.py --paced --settle --seconds 30  # as served
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splitproxy.config import PrometheusCheck, WebCheck, parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.heap import settle_after_pass
from splitproxy.metrics import Recorder
from splitproxy.rollout.controller import Controller, ControlOptions
from splitproxy.rollout.hooks import HookResult
from splitproxy.rollout.pacing import SLICE_BUDGET

T0 = 1_700_000_000.0
PATHS = ("/api/users/7", "/api/orders", "/static/app.js", "/", "/api/cart/3", "/health")
PATH_SHARES = (0.4, 0.2, 0.15, 0.1, 0.1, 0.05)


def routing(routes: int) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for i in range(routes):
        route: dict[str, Any] = {
            "name": f"route-{i}",
            "match": {"host": f"host-{i}.example"},
            "stable": f"http://stable-{i}:80",
            "candidate": {"url": f"http://candidate-{i}:80", "revision": "v2"},
            "weight": 0,
            "rollout": {
                "steps": [5, 10, 25, 50],
                "interval": "30s",
                "min_requests": 100,
                "checks": [
                    {"metric": "error_rate", "max": "1%"},
                    {"metric": "latency_p99", "max": "500ms"},
                    {"metric": "error_rate", "compare": "stable"},
                    {"metric": "latency", "compare": "stable"},
                ],
            },
        }
        if i % 3 == 0:
            route["sticky"] = {"cookie": "splitproxy_id"}
        out.append(route)
    out.append({"name": "main", "stable": "http://main:80"})
    return {"routes": out}


class NoHooks:
    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> HookResult:
        return HookResult(True, 200, 1, None)


async def no_reader(check: PrometheusCheck | WebCheck) -> float | None:
    return None


class Traffic:
    """Each route's requests, drawn afresh every second as a proxy would see them.

    Latencies, errors and paths come from pre-drawn pools (drawing them is not what is
    measured), read from a random place per route and second, so no two seconds repeat; a
    request goes to the candidate with the weight's probability (a fresh draw per request), or,
    on a sticky route, as its user's key hashes (a user keeps its version, as in
    `dataplane.routing`: candidate iff the key's bucket < ``weight_bp``), from 500 users per
    route. ``replay=True`` is the earlier feeding, kept to reproduce its A/A rollbacks: every
    route got the very same 20 requests every second (the pools were exactly one second of
    traffic long) and the candidate the same slot of them, so a candidate whose one slot was
    the slowest of the 20 was slower than stable's p95 every second."""

    def __init__(self, rng: random.Random, size: int = 20_000, *, replay: bool = False) -> None:
        self.rng = rng
        self.replay = replay
        self.paths = rng.choices(PATHS, PATH_SHARES, k=size)
        self.latency = [rng.lognormvariate(-3.0, 0.5) for _ in range(size)]
        self.errors = [rng.random() < 0.005 for _ in range(size)]
        self.users = [rng.randrange(500) for _ in range(size)]
        self.offsets = [rng.random() for _ in range(size)]
        self.at = 0

    def second(self, recorder: Recorder, state: RuntimeState, now: float, rps: int) -> None:
        snapshot = state.snapshot
        assert snapshot is not None
        windows = recorder.windows
        size = len(self.paths)
        rng = self.rng
        for i, route in enumerate(snapshot.config.routes):
            if route.rollout is None:
                continue
            compiled = snapshot.route(route.name)
            assert compiled is not None
            bp = compiled.weight_bp
            p = bp / 10_000
            sticky = i % 3 == 0
            window = windows.window(route.name)
            start = self.at if self.replay else rng.randrange(size)
            for k in range(rps):
                j = (start + k + 1) % size
                unit: int | None = None
                if sticky:  # the earlier feeding's users were shared by all routes
                    key = ("user", self.users[j]) if self.replay else (i, "user", self.users[j])
                    unit = hash(key)
                if self.replay:
                    cand = (k + 0.5) / rps < p
                elif unit is not None:
                    cand = unit % 10_000 < bp
                else:
                    cand = rng.random() < p
                window.observe(
                    now + self.offsets[j] * 0.999,
                    CANDIDATE if cand else STABLE,
                    self.latency[j],
                    self.errors[j],
                    p,
                    self.paths[j],
                    "/",
                    unit=unit,
                )
            if self.replay:
                self.at = (self.at + rps) % size


class Collections:
    """The collector's runs, by generation, with their duration (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, float]] = []  # (generation, seconds)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.runs.append((info["generation"], time.perf_counter() - self._started))

    def take(self) -> list[tuple[int, float]]:
        runs, self.runs = self.runs, []
        return runs


async def timed(
    control: Controller, now: float, *, paced: bool, settle: bool
) -> tuple[float, float, float, float, int]:
    """One tick (``paced``: the background loop's pass, in slices; else `Controller.tick`; then,
    with ``settle``, a young collection and `gc.freeze`): its wall and CPU time, and the
    longest a probe task on the same loop waited for a turn, in wall time and in the thread's
    CPU time (the probe yields at every turn, so its longest wait is the loop's longest stall;
    the CPU measure is the stall on an idle machine, whatever the neighbours' load does to the
    wall measure; the probe's own turns, a few µs each, are in the tick's CPU time)."""
    done = False
    longest = longest_cpu = 0.0
    turns = -1  # the probe's turns from the tick on: a paced pass's slices (1 for a tick)

    async def probe() -> None:
        nonlocal longest, longest_cpu, turns
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not done:
            turns += 1
            await asyncio.sleep(0)
            at, at_cpu = time.perf_counter(), time.thread_time()
            longest, last = max(longest, at - last), at
            longest_cpu, last_cpu = max(longest_cpu, at_cpu - last_cpu), at_cpu

    task = asyncio.get_running_loop().create_task(probe())
    await asyncio.sleep(0)  # the probe is waiting for its next turn when the tick begins
    started, cpu = time.perf_counter(), time.process_time()
    if paced:
        await control.paced_tick(now)
    else:
        control.tick(now)
    if settle:  # as the background loop does after each pass: a turn of the loop, then settle
        if paced:
            await asyncio.sleep(0)
        settle_after_pass()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await asyncio.sleep(0)  # the probe's turn after the tick: its wait through the tick
    done = True
    await task
    return elapsed, cpu, longest, longest_cpu, turns


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    now = T0
    text = yaml.safe_dump(routing(args.routes), sort_keys=False)
    state = RuntimeState()
    started = time.perf_counter()
    state.load(parse_routing(text), content_hash(text), now)
    loaded = time.perf_counter() - started
    recorder = Recorder(state, clock=lambda: now)
    options = ControlOptions(slice_budget=args.slice_budget)
    control = Controller(
        state, recorder, hooks=NoHooks(), reader=no_reader, clock=lambda: now, options=options
    )
    for follower in (recorder.on_swap, control.on_swap):  # as server.py does
        state.subscribe(follower)
    traffic = Traffic(random.Random(args.seed), replay=args.replay)
    started = time.perf_counter()
    control.tick(now)  # the first tick creates the analyzers
    first = time.perf_counter() - started
    profile = cProfile.Profile() if args.profile else None
    times: list[float] = []
    cpus: list[float] = []  # the process's CPU time: what the neighbours' load does not move
    stalls: list[float] = []  # the longest the probe waited for the loop, per tick
    stalls_cpu: list[float] = []  # ... in the thread's CPU time
    slices: list[int] = []  # the slices of each tick
    collections = Collections()
    gc.callbacks.append(collections)
    full: list[tuple[int, float]] = []  # (timed tick, seconds) of each full collection
    young = Counter[int]()
    for second in range(args.warmup + args.seconds):
        traffic.second(recorder, state, now, args.rps)
        now += 1.0
        if args.feed_only and second >= args.warmup:
            continue  # callgrind's baseline: the same feeding without the timed ticks
        if profile is not None and second >= args.warmup:
            profile.enable()
        collections.take()
        elapsed, cpu, stall, stall_cpu, turns = await timed(
            control, now, paced=args.paced, settle=args.settle
        )
        if profile is not None:
            profile.disable()
        runs = collections.take()
        if second >= args.warmup:
            times.append(elapsed)
            cpus.append(cpu)
            stalls.append(stall)
            stalls_cpu.append(stall_cpu)
            slices.append(turns)
            full.extend((second + 2, took) for generation, took in runs if generation == 2)
            young.update(generation for generation, _ in runs if generation < 2)
    gc.callbacks.remove(collections)
    phases = Counter(a.phase for a in control.analyzers().values())
    weights = Counter(a.weight for a in control.analyzers().values())
    if args.feed_only:
        await control.stop()
        return
    ms = [t * 1000 for t in times]
    if args.series:
        print("ticks (ms):", " ".join(f"{m:.0f}" for m in ms))
    print(
        f"{args.routes} routes under rollout, {args.rps} requests per route per second, "
        f"{args.seconds} timed ticks after {args.warmup}"
    )
    print(f"load of the routing file: {loaded * 1000:.0f} ms; first tick: {first * 1000:.0f} ms")
    print(
        f"tick: median {statistics.median(ms):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms"
    )
    cpu_ms = [t * 1000 for t in cpus]
    print(
        f"tick CPU time: median {statistics.median(cpu_ms):.1f} ms, "
        f"p99 {pct(cpu_ms, 0.99):.1f} ms, max {max(cpu_ms):.1f} ms"
    )
    how = "paced pass" if args.paced else "synchronous tick"
    for clock, values in (("wall", stalls), ("CPU", stalls_cpu)):
        stall_ms = [t * 1000 for t in values]
        print(
            f"longest loop stall per tick ({how}), {clock} time: "
            f"median {statistics.median(stall_ms):.1f} ms, p99 {pct(stall_ms, 0.99):.1f} ms, "
            f"max {max(stall_ms):.1f} ms"
        )
    print(f"slices per tick: median {statistics.median(slices):.0f}, max {max(slices)}")
    fulls = ", ".join(f"tick {tick}: {took * 1000:.0f} ms" for tick, took in full)
    print(
        f"collections in the timed ticks: {young[0]} of generation 0, {young[1]} of 1, "
        f"{len(full)} full{f' ({fulls})' if full else ''}"
    )
    print(f"objects the collector tracks: {len(gc.get_objects())}, frozen: {gc.get_freeze_count()}")
    gc.unfreeze()  # what a full collection finds now would have leaked, had it been frozen
    print(f"cyclic garbage at the end (objects): {gc.collect()}")
    print(f"phases at the end: {dict(phases)}; weights: {dict(weights)}")
    why = Counter(
        next(e.message for e in reversed(a.history) if e.kind == "rolled_back")
        for a in control.analyzers().values()
        if a.phase == "rolled_back"
    )
    if why:
        print("rolled back (all A/A: stable and candidate alike):", dict(why))
    if profile is not None:
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(key).print_stats(args.top)
            print(f"\n--- cProfile, top {args.top} by {key} ---")
            print(out.getvalue().split("\n\n", 2)[-1].strip())
    await control.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--rps", type=int, default=20, help="requests per route per second")
    parser.add_argument("--seconds", type=int, default=60, help="timed ticks")
    parser.add_argument("--warmup", type=int, default=5, help="untimed ticks first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the timed ticks")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--series", action="store_true", help="print every tick's time")
    parser.add_argument(
        "--paced",
        action="store_true",
        help="time the background loop's pass (in slices, yielding between them) instead of "
        "the synchronous tick",
    )
    parser.add_argument(
        "--slice-budget",
        type=float,
        default=SLICE_BUDGET,
        help="with --paced: seconds per slice (under callgrind, scale it with the slow-down)",
    )
    parser.add_argument(
        "--settle",
        action="store_true",
        help="settle the heap after each tick, as the background loop does after each pass "
        "(`heap.settle_after_pass`: a young collection, then gc.freeze()); with --paced: the "
        "background loop as the server runs it",
    )
    parser.add_argument(
        "--feed-only",
        action="store_true",
        help="feed the timed seconds but do not tick them: the baseline that callgrind's "
        "count for a run with ticks is compared with (instructions per tick = the difference)",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="the earlier, unrealistic feeding (the same requests every second): A/A control",
    )
    args = parser.parse_args()
    if not (1 <= args.routes <= 20_000 and 1 <= args.seconds <= 600 and args.rps <= 1000):
        parser.error("keep it bounded: routes <= 20,000, seconds <= 600, rps <= 1,000")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
