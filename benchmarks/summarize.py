#!/usr/bin/env python3
"""Summarize a results dir written by run.py into markdown tables (stdlib only).

usage: summarize.py RESULTS_DIR [--ref nginx] [--limit direct] [-o summary.md]
Medians over rounds; "a–b" is the min–max over rounds. Ratios and latency differences are
paired: computed per round against the reference measured in the same round, then the median
(min–max) is taken.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Rec = dict[str, Any]
Runs = dict[str, dict[int, Rec]]  # config -> round -> record


def med(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def rng(xs: Iterable[float | None], fmt: Callable[[float], str]) -> str:
    v = [x for x in xs if x is not None]
    return f"{fmt(min(v))}–{fmt(max(v))}" if v else "–"


def f0(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def f1(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x / 1000:.2f}"


def spread(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    m = med(v)
    if len(v) < 2 or not m:
        return None
    return 100.0 * (max(v) - min(v)) / m


def paired(runs: Runs, cfg: str, ref: str, key: str, op: str) -> list[float]:
    """Per round: cfg's metric divided by ("div") or minus ("sub") ref's, same round."""
    out = []
    for rnd, rec in runs.get(cfg, {}).items():
        other = runs.get(ref, {}).get(rnd)
        if other is None:
            continue
        a, b = rec["metrics"].get(key), other["metrics"].get(key)
        if a is not None and b is not None and (op != "div" or b):
            out.append(a / b if op == "div" else a - b)
    return out


def ratio_cell(xs: list[float]) -> str:
    m = med(xs)
    if m is None:
        return "–"
    return f"{m:.2f}" + (f" ({rng(xs, f2)})" if len(xs) > 1 else "")


def diff_cell(xs: list[float]) -> str:
    m = med(xs)
    if m is None:
        return "–"
    return f"{m:+,.0f}" + (f" ({rng(xs, lambda x: f'{x:+,.0f}')})" if len(xs) > 1 else "")


def summarize(
    results: Path, ref: str = "nginx", limit: str = "direct", foreign: float = 0.3
) -> str:
    recs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines() if line]
    meta_path = results / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    scen_order: list[str] = []
    cfg_order: list[str] = []
    by: dict[str, Runs] = {}
    errors: list[Rec] = []
    for r in recs:
        if r["scenario"] not in scen_order:
            scen_order.append(r["scenario"])
        if r["config"] not in cfg_order:
            cfg_order.append(r["config"])
        if r.get("error") or not r.get("metrics"):
            errors.append(r)
            continue
        by.setdefault(r["scenario"], {}).setdefault(r["config"], {})[r["round"]] = r

    out: list[str] = []
    a = meta.get("args", {})
    if a:
        out += [
            f"Runs: {a['rounds']} round(s), {a['duration']} s measured + {a['warmup']} s warm-up "
            f"per run; proxy on cpu {a['proxy_cpus']}, wrk / load generator and upstream on cpu "
            f"{a['load_cpus']}; wrk 1 thread, {a['connections']} keep-alive connections. "
            f"Medians over rounds; ratios and latency differences paired per round (min–max).",
            "",
        ]
    flagged = False
    for sc in scen_order:
        runs = by.get(sc, {})
        closed = sc.startswith("closed")
        out += [f"### `{sc}`", ""]
        if closed:
            out.append(
                f"| config | req/s | req/s min–max (spread) | p50 ms | p99 ms "
                f"| × {ref} | × {limit} | proxy CPU µs/req | peak RSS MiB | cpu0 / cpu1 busy % "
                "| errors |"
            )
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        else:
            out.append(
                f"| config | req/s | p50 µs | p99 µs | +p50 µs vs {limit} | +p99 µs vs {limit} "
                "| p99 from intended µs | proxy CPU µs/req (≈) | peak RSS MiB | errors |"
            )
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cfg in cfg_order:
            rr = list(runs.get(cfg, {}).values())
            if not rr:
                out.append(f"| {cfg} | (no successful run) |" + " |" * (9 if closed else 8))
                continue

            def m(key: str, rr: list[Rec] = rr) -> list[float | None]:
                return [r["metrics"].get(key) for r in rr]

            cpu = f1(med(r.get("proxy_cpu_us_per_req") for r in rr))
            hwm = [r["proxy_hwm_kib"] for r in rr if r.get("proxy_hwm_kib")]
            rss = f"{max(hwm) / 1024:.1f}" if hwm else "–"
            errs = sum(r["metrics"].get("errors", 0) for r in rr)
            name = cfg
            nf = sum(1 for r in rr if (r.get("foreign_cores") or 0) > foreign)
            if nf:
                name += f" †{nf}"
                flagged = True
            if closed:
                rps = m("rps")
                x_ref = ratio_cell(paired(runs, cfg, ref, "rps", "div"))
                x_lim = ratio_cell(paired(runs, cfg, limit, "rps", "div"))
                sp = spread(rps)
                busy = " / ".join(
                    f0(med(r["cpu"].get(c, {}).get("busy_pct") for r in rr))
                    for c in ("cpu0", "cpu1")
                )
                out.append(
                    f"| {name} | {f0(med(rps))} | {rng(rps, f0)} "
                    f"({'–' if sp is None else f'{sp:.0f}%'}) | {ms(med(m('p50_us')))} "
                    f"| {ms(med(m('p99_us')))} | {x_ref} | {x_lim} | {cpu} | {rss} "
                    f"| {busy} | {errs} |"
                )
            else:
                d50 = paired(runs, cfg, limit, "svc_p50_us", "sub")
                d99 = paired(runs, cfg, limit, "svc_p99_us", "sub")
                out.append(
                    f"| {name} | {f0(med(m('rps')))} | {f0(med(m('svc_p50_us')))} "
                    f"| {f0(med(m('svc_p99_us')))} | {diff_cell(d50)} | {diff_cell(d99)} "
                    f"| {f0(med(m('p99_us')))} | {cpu} | {rss} | {errs} |"
                )
        out.append("")
    if flagged:
        out += [
            f"† n: in n of the row's runs, processes outside the benchmark used > {foreign} cores "
            "(`foreign_cores` in runs.jsonl): treat those numbers with suspicion.",
            "",
        ]
    if errors:
        out += ["### Failed runs", ""]
        out += [
            f"- round {r['round']} `{r['scenario']}` {r['config']}: {r.get('error')}"
            for r in errors
        ]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("results", type=Path)
    ap.add_argument("--ref", default="nginx")
    ap.add_argument("--limit", default="direct")
    ap.add_argument(
        "--foreign", type=float, default=0.3, help="flag runs with more other load (cores)"
    )
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()
    text = summarize(a.results, a.ref, a.limit, a.foreign)
    if a.output:
        a.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
