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


def paired(runs: Runs, cfg: str, ref: str, key: str, op: str, *, top: bool = False) -> list[float]:
    """Per round: cfg's metric divided by ("div") or minus ("sub") ref's, same round
    (``top``: a field of the run's record, not of wrk's metrics)."""
    out = []
    for rnd, rec in runs.get(cfg, {}).items():
        other = runs.get(ref, {}).get(rnd)
        if other is None:
            continue
        a, b = (
            (rec.get(key), other.get(key))
            if top
            else (rec["metrics"].get(key), other["metrics"].get(key))
        )
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


# A closed-loop run whose load cores (wrk and the upstream) were this busy while the proxy's
# core was not is bound by the load side: its req/s says what the load side could drive, not
# what the proxy could serve (seen with nginx on 1 KB on a machine where wrk and the upstream
# need more CPU per request than nginx). Its CPU per request still compares.
LOAD_BOUND_PCT = 97.0
PROXY_SPARE_PCT = 95.0


def load_bound(rec: Rec) -> bool:
    """The run was limited by the load generator's and upstream's core, not the proxy's (a
    run without a proxy, the direct upstream, always is: it is not flagged)."""
    if rec.get("proxy_cpu_us_per_req") is None:
        return False
    cpu = rec.get("cpu") or {}
    proxy = cpu.get("cpu0", {}).get("busy_pct")
    load = cpu.get("cpu1", {}).get("busy_pct")
    return (
        proxy is not None
        and load is not None
        and load >= LOAD_BOUND_PCT
        and proxy < PROXY_SPARE_PCT
    )


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
    flagged = bound_seen = False
    for sc in scen_order:
        runs = by.get(sc, {})
        closed = sc.startswith("closed")
        out += [f"### `{sc}`", ""]
        if closed:
            out.append(
                f"| config | req/s | req/s min–max (spread) | p50 ms | p99 ms "
                f"| × {ref} | × {limit} | proxy CPU µs/req | × {ref} by CPU/req | peak RSS MiB "
                "| cpu0 / cpu1 busy % | errors |"
            )
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        else:
            out.append(
                f"| config | req/s | p50 µs | p99 µs | +p50 µs vs {limit} | +p99 µs vs {limit} "
                "| p99 from intended µs | proxy CPU µs/req (≈) | peak RSS MiB | errors |"
            )
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cfg in cfg_order:
            rr = list(runs.get(cfg, {}).values())
            if not rr:
                out.append(f"| {cfg} | (no successful run) |" + " |" * (10 if closed else 8))
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
            nb = sum(1 for r in rr if load_bound(r)) if closed else 0
            if nb:
                name += f" ‡{nb}"
                bound_seen = True
            if closed:
                rps = m("rps")
                x_ref = ratio_cell(paired(runs, cfg, ref, "rps", "div"))
                x_lim = ratio_cell(paired(runs, cfg, limit, "rps", "div"))
                # the reference's CPU per request over this row's, paired per round: how much
                # of the work per request this row does relative to the reference's, whichever
                # core limited the rate
                x_cpu = ratio_cell(paired(runs, ref, cfg, "proxy_cpu_us_per_req", "div", top=True))
                sp = spread(rps)
                busy = " / ".join(
                    f0(med(r["cpu"].get(c, {}).get("busy_pct") for r in rr))
                    for c in ("cpu0", "cpu1")
                )
                out.append(
                    f"| {name} | {f0(med(rps))} | {rng(rps, f0)} "
                    f"({'–' if sp is None else f'{sp:.0f}%'}) | {ms(med(m('p50_us')))} "
                    f"| {ms(med(m('p99_us')))} | {x_ref} | {x_lim} | {cpu} | {x_cpu} | {rss} "
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
    if bound_seen:
        out += [
            f"‡ n: in n of the row's runs the load side's core (wrk and the upstream) was "
            f"≥ {LOAD_BOUND_PCT:.0f} % busy while the proxy's was under {PROXY_SPARE_PCT:.0f} %: "
            "the rate is what the load side could drive, so ratios of req/s against that row "
            f"understate the others; × {ref} by CPU/req compares the work per request instead.",
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
