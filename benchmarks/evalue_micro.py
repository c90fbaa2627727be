#!/usr/bin/env python3
"""CPU per update and e-value of the tick's e-processes, alone: a comparison's mixture over
start times (`RecoveringTest`, twelve components) and the guard (`RateGuard`, twelve), each
updated with one batch and asked for its e-value, as a late tick did; and updated and judged
by its ceiling (`frozen`: the verdict without the e-value), as a late tick does now where the
tree has it.

    .venv/bin/python benchmarks/evalue_micro.py
    .venv/bin/python /other/tree/benchmarks/evalue_micro.py   # the code of the tree it lies in

Prints the best of seven rounds (µs per update and e-value, per update and verdict). Fixed
seed: the same tests in every tree.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from splitproxy.rollout.recovery import RecoveringTest
from splitproxy.rollout.sequential import RateGuard


def build(n: int, seed: int) -> tuple[list[RecoveringTest], list[RateGuard]]:
    """``n`` mixtures, each after 14 fresh starts (twelve components kept), and ``n`` guards
    after 200 batches of ten requests (twelve components)."""
    rng = random.Random(seed)
    tests = []
    for _ in range(n):
        test = RecoveringTest()
        for _ in range(14):
            test.update(0.1, rng.randint(0, 3), rng.randint(0, 30))
            test.restart()
        tests.append(test)
    guards = []
    for _ in range(n):
        guard = RateGuard(0.05)
        for _ in range(200):
            guard.update(10, rng.randint(0, 1))
        guards.append(guard)
    return tests, guards


def one_round(tests: list[RecoveringTest], guards: list[RateGuard]) -> tuple[float, float]:
    """µs per update and e-value: the mixtures', the guards'."""
    rounds = 20
    t0 = time.process_time()
    for _ in range(rounds):
        for test in tests:
            test.update(0.25, 1, 9)
            _ = test.log_e
    t1 = time.process_time()
    for _ in range(rounds):
        for guard in guards:
            guard.update(10, 0)
            _ = guard.log_e
    t2 = time.process_time()
    return (t1 - t0) / (rounds * len(tests)) * 1e6, (t2 - t1) / (rounds * len(guards)) * 1e6


def verdict_round(tests: list[RecoveringTest], guards: list[RateGuard]) -> tuple[float, float]:
    """µs per update and verdict (`results`' path in the tick: a ceiling, the e-value only
    when the ceiling does not clear the bar; here the latency comparison's and the guard's
    bars at α = 1 %)."""
    from splitproxy.rollout.results import guard_result, latency_result

    rounds, bar = 20, 1 / 0.0045
    t0 = time.process_time()
    for _ in range(rounds):
        for test in tests:
            test.update(0.25, 1, 9)
            _ = latency_result("latency", (test,), ((0.95, 0.1),), 0.0, bar).verdict
    t1 = time.process_time()
    for _ in range(rounds):
        for guard in guards:
            guard.update(10, 0)
            _ = guard_result(guard, 1000.0).verdict
    t2 = time.process_time()
    return (t1 - t0) / (rounds * len(tests)) * 1e6, (t2 - t1) / (rounds * len(guards)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tests, guards = build(args.tests, args.seed)
    runs = [one_round(tests, guards) for _ in range(7)]
    mixture = min(r[0] for r in runs)
    guard = min(r[1] for r in runs)
    print(f"mixture (12 components): {mixture:.2f} µs per update and e-value")
    print(f"guard (12 components): {guard:.2f} µs per update and e-value")
    try:
        import splitproxy.rollout.frozen  # noqa: F401  (a tree with the ceilings)
    except ImportError:
        return
    tests, guards = build(args.tests, args.seed)
    runs = [verdict_round(tests, guards) for _ in range(7)]
    print(f"mixture (12 components): {min(r[0] for r in runs):.2f} µs per update and verdict")
    print(f"guard (12 components): {min(r[1] for r in runs):.2f} µs per update and verdict")


if __name__ == "__main__":
    main()
