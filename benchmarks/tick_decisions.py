#!/usr/bin/env python3
"""Do the rollout controller's decisions stay the same? A fingerprint of every decision.

Drives the real `Controller` (as `controller_tick.py` does: `RuntimeState`, `Recorder`, the
clock moved by hand, traffic written straight into the live windows) over a mix of rollouts
whose decisions differ, and fingerprints, per route, everything the analyzer decides and
shows: after every tick its phase, weight, step and check results (each `CheckResult` in
full), and at the end its whole saved state (`codec.encode`: e-processes, windows, stable's
trailing history, the event history) and its ledger. Optimisations of the tick must leave
every fingerprint unchanged: ``tests/unit/rollout/test_tick_decisions.py`` compares a small
mix with the fingerprints recorded in ``tests/unit/rollout/data/tick_decisions.json``.

The mix (route ``i`` is of kind ``i % 8``): 0 an A/A canary (the tick benchmark's spec);
1 the same, sticky; 2 a candidate failing 4 % of its requests; 3 a candidate 60 % slower;
4 a short canary (5 s steps, a guard) that promotes; 5 blue/green (test traffic, the switch,
the bake); 6 an A/B test (its users and conversions drawn, not routed); 7 a sticky canary over
its error-rate line (failed windows, some users failing again and again).

    .venv/bin/python benchmarks/tick_decisions.py --routes 64 --seconds 400
    .venv/bin/python benchmarks/tick_decisions.py --out /tmp/a.json   # per-route fingerprints
    .venv/bin/python benchmarks/tick_decisions.py --outcomes /tmp/o.json  # what each decided
    .venv/bin/python benchmarks/tick_decisions.py --paced --slice-budget 0   # in slices
    PYTHONHASHSEED=0 .venv/bin/python benchmarks/tick_decisions.py --bench --routes 200 \
        --seconds 245 --seed 2 --out /tmp/b.json
    PYTHONHASHSEED=0 .venv/bin/python benchmarks/tick_decisions.py --bench --replay \
        --routes 1000 --seconds 65 --final-only --out /tmp/c.json

``--bench`` fingerprints the tick benchmark's own routes and feeding instead (``--replay``:
its earlier feeding, whose 49 A/A rollbacks are the ones to keep). Its sticky keys are hashed
strings, so fix ``PYTHONHASHSEED`` to compare two runs (two trees: run each, compare the
``--out`` files). ``--final-only`` fingerprints the end state alone, without reading every
tick's results: the path on which deferred results are never read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller_tick import PATH_SHARES, PATHS, T0, NoHooks, Traffic, no_reader
from controller_tick import routing as bench_routing

from splitproxy.config import parse_routing
from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.dataplane.abpool import AbCounts
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.metrics import Recorder
from splitproxy.rollout.codec import encode
from splitproxy.rollout.controller import Controller, ControlOptions

KINDS = 8
COMPARE = [
    {"metric": "error_rate", "compare": "stable"},
    {"metric": "latency", "compare": "stable"},
]
CANARY = {
    "steps": [5, 10, 25, 50],
    "interval": "30s",
    "min_requests": 100,
    "checks": [
        {"metric": "error_rate", "max": "1%"},
        {"metric": "latency_p99", "max": "500ms"},
        *COMPARE,
    ],
}


def spec(kind: int) -> dict[str, Any]:
    """Route kind ``kind``'s rollout (see the module docstring)."""
    if kind == 4:
        return {
            "steps": [10, 50],
            "interval": "5s",
            "min_requests": 10,
            "guard": {"error_rate": "10%"},
            "checks": [{"metric": "error_rate", "max": "5%"}, *COMPARE],
        }
    if kind == 5:
        return {
            "strategy": "bluegreen",
            "iterations": 2,
            "interval": "10s",
            "min_requests": 20,
            "bake": "30s",
            "checks": [
                {"metric": "error_rate", "max": "5%"},
                *({**c, "traffic": "all"} for c in COMPARE),
            ],
        }
    if kind == 6:
        return {
            "strategy": "ab",
            "interval": "10s",
            "min_requests": 20,
            "ab": {
                "split": 50,
                "goals": [
                    {"name": "signup", "method": "POST", "path_prefix": "/signup"},
                    {"name": "buy", "header": "X-Goal", "value_header": "X-Goal-Value"},
                ],
                "min_duration": "60s",
                "max_duration": "300s",
            },
            "checks": [{"metric": "error_rate", "max": "5%"}],
        }
    if kind == 7:
        return {
            "steps": [10, 30],
            "interval": "10s",
            "min_requests": 20,
            "failure_limit": 3,
            "checks": [{"metric": "error_rate", "max": "1%"}, *COMPARE],
        }
    return CANARY


def routing(routes: int) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for i in range(routes):
        kind = i % KINDS
        route: dict[str, Any] = {
            "name": f"route-{i}",
            "match": {"host": f"host-{i}.example"},
            "stable": f"http://stable-{i}:80",
            "candidate": {"url": f"http://candidate-{i}:80", "revision": "v2"},
            "weight": 0,
            "rollout": spec(kind),
        }
        if kind in (1, 6, 7):
            route["sticky"] = {"cookie": "splitproxy_id"}
        out.append(route)
    out.append({"name": "main", "stable": "http://main:80"})
    return {"routes": out}


class Mix:
    """Each route's requests per second as its kind has them (deterministic: the sticky
    users' keys are made from integers, not hashed strings)."""

    def __init__(self, rng: random.Random, rps: int) -> None:
        self.rng = rng
        self.rps = rps

    def second(self, recorder: Recorder, state: RuntimeState, now: float) -> None:
        snapshot = state.snapshot
        assert snapshot is not None
        rng = self.rng
        for i, route in enumerate(snapshot.config.routes):
            if route.rollout is None:
                continue
            kind = i % KINDS
            compiled = snapshot.route(route.name)
            assert compiled is not None
            bp = compiled.weight_bp
            p = bp / 10_000
            window = recorder.windows.window(route.name)
            rps = self.rps * (3 if kind == 4 else 1)
            for _ in range(rps):
                unit: int | None = None
                if kind in (1, 6, 7):
                    unit = (i * 1_000_003 + rng.randrange(300)) * 2_654_435_761 % (1 << 61)
                    cand = unit % 10_000 < bp
                else:
                    cand = rng.random() < p
                error_rate, slow = 0.005, 1.0
                if cand and kind == 2:
                    error_rate = 0.04
                elif cand and kind == 3:
                    slow = 1.6
                elif kind == 7:
                    error_rate = 0.013 if cand else 0.004
                    if unit is not None and unit % 97 == 0:
                        error_rate = 0.5  # a user whose every other request fails
                path = rng.choices(PATHS, PATH_SHARES)[0]
                window.observe(
                    now + rng.random() * 0.999,
                    CANDIDATE if cand else STABLE,
                    rng.lognormvariate(-3.0, 0.5) * slow,
                    rng.random() < error_rate,
                    p,
                    path,
                    "/",
                    unit=unit,
                )
            if kind == 5:  # blue/green: test traffic to the candidate every second
                for _ in range(5):
                    window.observe(
                        now + rng.random() * 0.999,
                        CANDIDATE,
                        rng.lognormvariate(-3.0, 0.5),
                        rng.random() < 0.01,
                        None,
                        "/health",
                        "/",
                        synthetic=True,
                    )


class AbShim:
    """The recorder's A/B book for the A/B routes: each tick's users and conversions drawn
    (the candidate converting better on every other A/B route), the rest delegated."""

    def __init__(self, book: Any, rng: random.Random) -> None:
        self.book = book
        self.rng = rng

    def take(self, route: str) -> AbCounts | None:
        i = int(route.rsplit("-", 1)[1])
        if i % KINDS != 6:
            return self.book.take(route)  # type: ignore[no-any-return]
        rng = self.rng
        better = 0.16 if (i // KINDS) % 2 else 0.1
        users = (rng.randrange(5, 15), rng.randrange(5, 15))
        rates = (0.1, better)
        signup = [sum(rng.random() < rates[v] for _ in range(users[v])) for v in (0, 1)]
        buy = (rng.randrange(2), rng.randrange(2))
        return AbCounts(
            users=users,
            converted=((signup[0], signup[1]), buy),
            values=((0.0, 0.0), (10.0 * buy[0], 10.0 * buy[1])),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.book, name)


def _checks(checks: Any) -> str:
    return repr([tuple(c) for c in checks])


async def run(args: argparse.Namespace) -> dict[str, str]:
    """Drive the ticks; each route's fingerprint (sha256 of what it decided and showed).

    ``--paced``: each tick is the background loop's pass in slices (`Controller.paced_tick`),
    ``--slice-budget`` seconds each (0: one route per slice, a turn of the loop between every
    two routes), on a real event loop."""
    now = T0
    config = bench_routing(args.routes) if args.bench else routing(args.routes)
    text = yaml.safe_dump(config, sort_keys=False)
    state = RuntimeState()
    state.load(parse_routing(text), content_hash(text), now)
    recorder = Recorder(state, clock=lambda: now)
    rng = random.Random(args.seed)
    if not args.bench:
        recorder.ab = AbShim(recorder.ab, random.Random(args.seed + 1))  # type: ignore[assignment]
    options = ControlOptions(slice_budget=args.slice_budget)
    control = Controller(
        state, recorder, hooks=NoHooks(), reader=no_reader, clock=lambda: now, options=options
    )
    for follower in (recorder.on_swap, control.on_swap):
        state.subscribe(follower)
    feed = Traffic(rng, replay=args.replay) if args.bench else Mix(rng, args.rps)
    control.tick(now)
    digests: dict[str, Any] = {}
    for name in control.analyzers():
        digests[name] = hashlib.sha256()
    for _ in range(args.seconds):
        if isinstance(feed, Traffic):
            feed.second(recorder, state, now, args.rps)
        else:
            feed.second(recorder, state, now)
        now += 1.0
        if args.paced:
            assert await control.paced_tick(now)
        else:
            control.tick(now)
        if args.every_tick:
            for name, a in control.analyzers().items():
                line = f"{a.phase} {a.weight!r} {a.step_index} {_checks(a.checks)}\n"
                digests[name].update(line.encode())
    out: dict[str, str] = {}
    for name, a in control.analyzers().items():
        final = {"state": encode(a), "ledger": list(control._routes[name].ledger)}
        digests[name].update(json.dumps(final, sort_keys=True, default=repr).encode())
        out[name] = digests[name].hexdigest()[:16]
    phases = Counter(a.phase for a in control.analyzers().values())
    kinds = Counter(
        e.kind for a in control.analyzers().values() for e in a.history if e.kind != "step"
    )
    print(f"phases: {dict(phases)}; events: {dict(kinds)}", file=sys.stderr)
    if args.outcomes is not None:  # what each route decided, readable: two trees compared
        args.outcomes.write_text(
            json.dumps(
                {
                    name: {
                        "phase": a.phase,
                        "weight": a.weight,
                        "events": [
                            [e.at - T0, e.kind, e.message] for e in a.history if e.kind != "step"
                        ],
                    }
                    for name, a in sorted(control.analyzers().items())
                },
                indent=1,
            )
            + "\n"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=400)
    parser.add_argument("--rps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bench", action="store_true", help="the tick benchmark's routes")
    parser.add_argument("--replay", action="store_true", help="with --bench: its earlier feeding")
    parser.add_argument(
        "--final-only",
        dest="every_tick",
        action="store_false",
        help="fingerprint the end state only (not every tick's checks: the lazy paths' view)",
    )
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument(
        "--outcomes", type=Path, help="write each route's phase, weight and events here (JSON)"
    )
    parser.add_argument("--paced", action="store_true", help="tick with the paced pass")
    parser.add_argument("--slice-budget", type=float, default=0.005, help="with --paced")
    args = parser.parse_args()
    if not (1 <= args.routes <= 20_000 and 1 <= args.seconds <= 3600 and args.rps <= 1000):
        parser.error("keep it bounded: routes <= 20,000, seconds <= 3,600, rps <= 1,000")
    fingerprints = asyncio.run(run(args))
    total = hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:16]
    print(f"{len(fingerprints)} routes, {args.seconds} ticks: fingerprint {total}")
    if args.out is not None:
        args.out.write_text(json.dumps(fingerprints, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
