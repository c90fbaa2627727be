"""What each field fix buys: decision-benchmark cells with one fix undone (issue 14).

Runs cells of ``decision_bench.py`` in this process with one of the analyzer's fixes taken
out, beside the same cells with it in:

* ``per_request``: a sticky route counted per request (no users named, slow requests at the
  weight), on ``sticky_aa``;
* ``raw_thresholds``: a threshold fails on the window's raw ratio, on ``aa_thresholds``;
* ``no_restarts``: the comparisons never start afresh, on ``stable_incident_err_0.5_2``
  and ``late_err_0.5_2``.

    .venv/bin/python benchmarks/decision_ablations.py            # ~2 min on one core
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import decision_bench as bench

from splitproxy.rollout import evidence
from splitproxy.rollout.messages import Sample


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _per_request(original: Callable[..., tuple[list[Sample], int]]) -> Callable[..., Any]:
    def traffic(*args: Any) -> tuple[list[Sample], int]:
        samples, n = original(*args)
        p = args[2]
        out = [Sample(s.version, s.requests, s.errors, p, s.path_class, s.latency) for s in samples]
        return out, n

    return traffic


def _raw(x: int, n: int, rate: float, alpha: float) -> tuple[bool, float]:
    over = x > rate * n
    return over, math.inf if over else 1.0


ABLATIONS: dict[str, tuple[tuple[str, ...], Callable[[], Any]]] = {
    "per_request": (
        ("sticky_aa",),
        lambda: patched(bench, "sticky_traffic", _per_request(bench.sticky_traffic)),
    ),
    "raw_thresholds": (("aa_thresholds",), lambda: patched(evidence, "shown_above", _raw)),
    "no_restarts": (
        ("stable_incident_err_0.5_2", "late_err_0.5_2"),
        lambda: patched(evidence, "RESTART_EVERY", math.inf),
    ),
}


def cells(rps: float, scenario: str, runs: int) -> dict[str, Any]:
    sc = bench.SCENARIO[scenario]
    out = [
        bench.run_once(rps, sc, "splitproxy", bench.seed_for(rps, scenario, "splitproxy", i))
        for i in range(runs)
    ]
    return bench.summarize(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rps", default="1,20,1000")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--only", help="one ablation by name")
    args = ap.parse_args(argv)
    print("| ablation | rps | scenario | with the fix | without it |\n|---|---|---|---|---|")
    for name, (scenarios, undo) in ABLATIONS.items():
        if args.only and name != args.only:
            continue
        for rps in (float(r) for r in args.rps.split(",")):
            runs = args.runs // 4 if rps < 10 else args.runs
            for scenario in scenarios:
                if name == "no_restarts" and rps < 1000:
                    continue  # the bar's cell: a 1,000 rps regression
                with_fix = cells(rps, scenario, runs)
                with undo():
                    without = cells(rps, scenario, runs)
                print(
                    f"| {name} | {rps:g} | {scenario} | {bench.cell(with_fix)} "
                    f"| {bench.cell(without)} |  ({runs} runs)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
