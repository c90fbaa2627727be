"""A/B benchmark: does splitproxy's A/B test stay honest under hourly peeking, and how fast
does it find a real lift?

An offline simulation (no network, stdlib only, seeded) of an A/B test on a conversion rate,
driving the real `splitproxy.rollout.abtest.judge` once per simulated hour, as the rollout
engine would:

* users: 10,000 new users an hour on average, with a daily cycle (×0.5 at night to ×1.5 in
  the evening); each is assigned once and for all (sticky) to the candidate with the
  configured ``split``, so each hour adds ``Binomial(users, share)`` candidate users;
* conversions: a user converts (at most once counted) with probability 5 % on stable,
  ``5 % × (1 + lift)`` on the candidate, 15 % more on weekends for both; a converting user
  does so after a geometric delay (30 % a hour, mean ≈ 2.3 h), so the counts at each look
  miss the recent users' conversions, as real ones do;
* scenarios: ``aa`` and ``aa_20`` (no difference, 50 % and 20 % splits), ``lift_2``,
  ``lift_5``, ``lift_10`` (+2/5/10 % relative), ``harm_10`` (−10 %), ``srm_52_48`` (no
  difference, but the assignment sends 52 % of users to the candidate at a 50 % target);
* methods, both fed the same counts each hour: ``splitproxy`` (`judge` with α = 1 %,
  ``min_duration`` 24 h, ``max_duration`` 14 days); ``z_peek``, a two-sided pooled
  two-proportion z-test at 1 % on the cumulative counts, looked at every hour from 24 h on
  (the dashboard habit), the first significant look declaring the winner; ``z_fixed``, the
  same z-test looked at once, at 14 days (its designed use: valid, but no early stop).

A run ends after 14 days. Per cell: the share of runs that declared the candidate the winner
(for A/A and SRM: any winner, a false one), the share that declared the wrong winner, and the
median hours to the decision.

    .venv/bin/python benchmarks/ab_bench.py            # full run, ~4 min on 2 cores
    .venv/bin/python benchmarks/ab_bench.py --quick    # smoke run, a few seconds
    .venv/bin/python benchmarks/ab_bench.py --scenarios aa --aa-runs 4000

Every run has its own seed (derived from the scenario and run number), so the numbers are
reproducible whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splitproxy.rollout.abtest import ArmCounts, ConversionTest, SampleRatioTest, judge

# --- the world -----------------------------------------------------------------------------

USERS_PER_HOUR = 10_000
BASELINE = 0.05
WEEKEND_FACTOR = 1.15
CONVERT_PER_HOUR = 0.3  # a pending converter converts in a given hour with this chance
ALPHA = 0.01
MIN_HOURS = 24
DAYS = 14
Z_CRIT = statistics.NormalDist().inv_cdf(1 - ALPHA / 2)  # 2.576
METHODS = ("splitproxy", "z_peek", "z_fixed")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    lift: float = 0.0
    split: float = 0.5  # the configured candidate share
    actual_share: float | None = None  # the assignment's real share, when it is broken

    @property
    def expected(self) -> str | None:
        """The right winner (``None``: any winner is a false one)."""
        if self.actual_share is not None or self.lift == 0:
            return None
        return "candidate" if self.lift > 0 else "stable"


SCENARIOS = (
    Scenario("aa"),
    Scenario("aa_20", split=0.2),
    Scenario("lift_2", lift=0.02),
    Scenario("lift_5", lift=0.05),
    Scenario("lift_10", lift=0.10),
    Scenario("harm_10", lift=-0.10),
    Scenario("srm_52_48", actual_share=0.52),
)
SCENARIO = {s.name: s for s in SCENARIOS}


def users_in_hour(hour: int) -> int:
    """A daily cycle around the mean: ×0.5 at 06:00 before dawn, ×1.5 at 18:00."""
    return round(USERS_PER_HOUR * (1 - 0.5 * math.cos(2 * math.pi * ((hour - 6) % 24) / 24)))


def rate_in_hour(hour: int) -> float:
    return BASELINE * (WEEKEND_FACTOR if (hour // 24) % 7 >= 5 else 1.0)


# --- an exact binomial sampler (random.binomialvariate is 3.12+) ----------------------------


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Exact: inversion by geometric skips when ``n·p`` is small, otherwise BTRS (Hörmann
    1993, transformed rejection with squeeze), O(1) whatever ``n``."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    if n * p < 10:
        log_q = math.log1p(-p)
        count, pos = 0, 0
        while True:
            pos += int(math.log(1.0 - rng.random()) / log_q) + 1
            if pos > n:
                return count
            count += 1
    spq = math.sqrt(n * p * (1.0 - p))
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    vr = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / (1.0 - p))
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        if us >= 0.07 and v <= vr:
            return k
        v = math.log(v * alpha / (a / (us * us) + b))
        if v <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - m) * lpq:
            return k


# --- one run ----------------------------------------------------------------------------------


def z_winner(cand: ArmCounts, stable: ArmCounts) -> str | None:
    """The pooled two-proportion z-test at ``ALPHA``, two-sided."""
    n1, n2 = cand.users, stable.users
    if not n1 or not n2:
        return None
    pooled = (cand.converted + stable.converted) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return None
    z = (cand.converted / n1 - stable.converted / n2) / math.sqrt(var)
    if abs(z) < Z_CRIT:
        return None
    return "candidate" if z > 0 else "stable"


def run_once(scenario: Scenario, seed: int, days: int) -> dict[str, Any]:
    rng = random.Random(seed)
    share = scenario.actual_share if scenario.actual_share is not None else scenario.split
    conversion = ConversionTest(scenario.split)
    srm = SampleRatioTest(scenario.split)
    pending = [0, 0]  # users who will convert but have not yet: candidate, stable
    totals = [[0, 0], [0, 0]]  # [users, converted] per variant
    out: dict[str, Any] = {m: {"winner": None, "hours": None} for m in METHODS}
    out["splitproxy"]["outcome"] = "running"
    hours = days * 24
    for hour in range(hours):
        n = users_in_hour(hour)
        n_cand = binomial(rng, n, share)
        base = rate_in_hour(hour)
        new_users = (n_cand, n - n_cand)
        converted_now = [0, 0]
        for arm, rate in enumerate((base * (1 + scenario.lift), base)):
            pending[arm] += binomial(rng, new_users[arm], rate)
            converted_now[arm] = binomial(rng, pending[arm], CONVERT_PER_HOUR)
            pending[arm] -= converted_now[arm]
            totals[arm][0] += new_users[arm]
            totals[arm][1] += converted_now[arm]
        now = (hour + 1) * 3600.0
        cand, stable = ArmCounts(*totals[0]), ArmCounts(*totals[1])
        sp = out["splitproxy"]
        if sp["outcome"] == "running":
            conversion.update(
                ArmCounts(new_users[0], converted_now[0]), ArmCounts(new_users[1], converted_now[1])
            )
            srm.update(new_users[0], new_users[1])
            verdict = judge(
                conversion, srm, started=0.0, now=now, max_duration=hours * 3600.0, alpha=ALPHA
            )
            if verdict.final:
                sp.update(outcome=verdict.outcome, winner=verdict.winner, hours=hour + 1)
        zp = out["z_peek"]
        if zp["hours"] is None and hour + 1 >= MIN_HOURS:
            winner = z_winner(cand, stable)
            if winner is not None or hour + 1 == hours:
                zp.update(winner=winner, hours=hour + 1)
        if hour + 1 == hours:
            out["z_fixed"].update(winner=z_winner(cand, stable), hours=hours)
    return out


# --- the grid of runs ---------------------------------------------------------------------------


def seed_for(scenario: str, i: int) -> int:
    digest = hashlib.blake2b(f"ab/{scenario}/{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def run_chunk(job: tuple[str, int, int, int]) -> list[dict[str, Any]]:
    scenario, start, stop, days = job
    return [run_once(SCENARIO[scenario], seed_for(scenario, i), days) for i in range(start, stop)]


def summarize(scenario: Scenario, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for method in METHODS:
        results = [r[method] for r in runs]
        decided = [r for r in results if r["winner"] is not None]
        right = [r for r in decided if r["winner"] == scenario.expected]
        wrong = [r for r in decided if r["winner"] != scenario.expected]
        hits = right if scenario.expected else decided
        cell: dict[str, Any] = {
            "winner_rate": len(decided) / len(runs),
            "right_rate": len(right) / len(runs),
            "wrong_rate": len(wrong) / len(runs),
            "median_hours": statistics.median(r["hours"] for r in hits) if hits else None,
        }
        if method == "splitproxy":
            flagged = [r for r in results if r["outcome"] == "srm"]
            cell["srm_rate"] = len(flagged) / len(runs)
            cell["srm_hours"] = statistics.median(r["hours"] for r in flagged) if flagged else None
            cell["srm_max_hours"] = max((r["hours"] for r in flagged), default=None)
        out[method] = cell
    return out


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def hours(h: float | None) -> str:
    return "-" if h is None else f"{h:.0f} h"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| scenario | runs | splitproxy | z-test peeked hourly | z-test once at the horizon |",
        "|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        s = results.get(sc.name)
        if s is None:
            continue
        cells = []
        for method in METHODS:
            c = s[method]
            if sc.expected is None:  # any winner is a false one
                text = f"{pct(c['winner_rate'])} false winners"
                if c["winner_rate"] and method != "z_fixed":
                    text += f" / {hours(c['median_hours'])}"
            else:
                text = f"{pct(c['right_rate'])} / {hours(c['median_hours'])}"
                if c["wrong_rate"]:
                    text += f" ({pct(c['wrong_rate'])} wrong way)"
            if method == "splitproxy" and c["srm_rate"]:
                text += f"; SRM {pct(c['srm_rate'])} / {hours(c['srm_hours'])}"
            cells.append(text)
        lines.append(f"| {sc.name} | {s['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_bar(results: dict[str, dict[str, Any]], judge_bar: bool = True) -> list[str]:
    """The issue's bar, line by line (``judge_bar=False``: the numbers without a verdict)."""
    out = []

    def line(ok: bool, text: str) -> None:
        verdict = ("PASS" if ok else "FAIL") if judge_bar else "----"
        out.append(f"[{verdict}] {text}")

    for name in ("aa", "aa_20"):
        s = results.get(name)
        if s:
            ours, peek = s["splitproxy"]["winner_rate"], s["z_peek"]["winner_rate"]
            line(ours <= ALPHA, f"{name}: splitproxy false winners {pct(ours)} <= {pct(ALPHA)}")
            line(peek > ALPHA, f"{name}: peeked z-test false winners {pct(peek)} > {pct(ALPHA)}")
    s = results.get("lift_10")
    if s:
        power = s["splitproxy"]["right_rate"]
        line(power >= 0.9, f"lift_10: splitproxy finds the candidate in {pct(power)} >= 90%")
    s = results.get("srm_52_48")
    if s:
        sp = s["splitproxy"]
        line(
            sp["srm_rate"] >= 0.9,
            f"srm_52_48: flagged in {pct(sp['srm_rate'])} of runs, median "
            f"{hours(sp['srm_hours'])}, latest {hours(sp['srm_max_hours'])}",
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few, short runs (a few seconds)")
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    ap.add_argument("--runs", type=int, help="runs per lift / SRM scenario")
    ap.add_argument("--aa-runs", type=int, help="runs per A/A scenario")
    ap.add_argument("--days", type=int, help=f"the test's max_duration (default {DAYS})")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the summaries here")
    args = ap.parse_args(argv)

    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIO]
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(unknown)}")
    runs = args.runs or (8 if args.quick else 500)
    aa_runs = args.aa_runs or (16 if args.quick else 2000)
    days = args.days or (2 if args.quick else DAYS)
    jobs: list[tuple[str, int, int, int]] = []
    for name in names:
        n = aa_runs if SCENARIO[name].expected is None and name.startswith("aa") else runs
        chunk = max(1, n // 8)
        jobs.extend((name, start, min(n, start + chunk), days) for start in range(0, n, chunk))
    t0 = time.monotonic()
    collected: dict[str, list[dict[str, Any]]] = {}
    if args.workers <= 1:
        outs = [run_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            outs = list(pool.map(run_chunk, jobs))
    for job, out in zip(jobs, outs, strict=True):
        collected.setdefault(job[0], []).extend(out)
    results = {k: summarize(SCENARIO[k], v) for k, v in collected.items()}
    elapsed = time.monotonic() - t0
    print(
        f"A/B benchmark: {sum(len(v) for v in collected.values())} runs of {days} days, "
        f"{elapsed:.0f}s with {max(1, args.workers)} worker(s)\n"
    )
    print(
        "Cells: share of runs that declared the right winner / median hours to it; for A/A "
        "and SRM rows, the share that declared any winner (a false one).\n"
    )
    print(table(results))
    if args.quick:
        print("(quick mode: too few, too short runs to judge the bar; run without --quick)")
    for text in check_bar(results, judge_bar=not args.quick):
        print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"elapsed": elapsed, "days": days, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
