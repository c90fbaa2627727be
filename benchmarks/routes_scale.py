#!/usr/bin/env python3
"""Does a request cost more when the routing file has more routes? Instructions per request,
end to end, with 1, 100 and 10,000 routes.

For each size, a real ``splitproxy serve`` runs under ``valgrind --tool=callgrind`` (the
benchmark's upstream nginx behind it, the defaults users get: access log on, metrics on) with
a routing file of that many routes: the benchmark's route (sticky, weight 50, a canary rollout
running) comes **last**, after ``N - 1`` routes that each match a host and a path prefix of
their own (as a file of many sites would), so a lookup that scanned the routes in order would
pay for all of them on every request. Each request has a target of its own (``/1k?n=K``):
a connection keeps the route it found for a repeated target, which would hide the look-up.
Collection is on only while exactly ``--requests``
requests are served (see ``profile_proxy.py --tool callgrind``); the count does not move with
the machine's load, so the sizes compare to the percent. The table gives each size's
instructions per request and its ratio to one route (the goal: within 10 %).

    .venv/bin/python benchmarks/routes_scale.py                    # 1, 100, 10,000 routes
    .venv/bin/python benchmarks/routes_scale.py --sizes 1,1000 --requests 2000

Starting the proxy with 10,000 routes under valgrind takes a minute or two (the file is parsed
and validated ~50x slower than natively); the whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

from configs import REPO, ROUTES_YAML, STICKY_COOKIE
from profile_proxy import BENCH, callgrind, proxy_env
from profile_proxy import parser as profile_parser
from run import Proc, stop_all, wait_ready


def routing_file(upstream: str, size: int) -> str:
    """``size - 1`` routes of their own hosts and prefixes, then the benchmark's route."""
    lines = ["routes:"]
    for i in range(size - 1):
        lines += [
            f"  - name: site-{i}",
            f"    match: {{host: site-{i}.example, path_prefix: /p{i % 7}}}",
            f"    stable: http://{upstream}",
        ]
    bench = ROUTES_YAML.format(upstream=upstream, cookie=STICKY_COOKIE)
    return "\n".join(lines) + "\n" + bench.split("\n", 1)[1]


def measure(a: argparse.Namespace, size: int, out: Path, upstream: str) -> int:
    """Instructions per request with ``size`` routes."""
    run_dir = out / f"routes-{size}"
    run_dir.mkdir()
    routes = run_dir / "routes.yaml"
    routes.write_text(routing_file(upstream, size))
    env = proxy_env(a.log, run_dir, a.repo.resolve())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        callgrind(a, routes, env, run_dir)
    m = re.search(r"instructions per request: ([\d,]+)", printed.getvalue())
    if m is None:
        raise SystemExit(f"no count for {size} routes:\n{printed.getvalue()}")
    return int(m.group(1).replace(",", ""))


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """This benchmark's options on top of `profile_proxy`'s defaults, so that every option its
    `callgrind` reads is there (an option added there is never missing here)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1,100,10000", help="route counts, comma-separated")
    ap.add_argument("--log", choices=["off", "text", "json"], default="text")
    ap.add_argument("--path", default="/1k")
    ap.add_argument("--requests", type=int, default=3000, help="requests measured per size")
    ap.add_argument(
        "--callgrind-connections", type=int, default=16, help="concurrent closed-loop clients"
    )
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure")
    ap.add_argument("--port", type=int, default=29281, help="proxy port (admin: +1)")
    ap.add_argument("--upstream-port", type=int, default=29280)
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    a = profile_parser().parse_args([])
    vars(a).update(vars(ap.parse_args(argv)))  # this benchmark's values over those defaults
    # what this benchmark measures: splitproxy (not the ceiling), wrk's two-header requests,
    # instructions only, and each request a target of its own: a connection keeps the route
    # it found for a repeated target, and this benchmark is about finding it
    a.tool, a.proxy, a.browser_head, a.cache_sim, a.vary_target = (
        "callgrind", "splitproxy", False, False, True,
    )  # fmt: skip
    return a


def main() -> None:
    a = options()
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(s < 1 for s in sizes):
        raise SystemExit("--sizes: every size is at least 1")
    out = Path(tempfile.mkdtemp(prefix="splitproxy-routes-scale-"))
    print(out, file=sys.stderr)
    upstream = f"127.0.0.1:{a.upstream_port}"
    up_argv = ["bash", str(BENCH / "upstream_nginx.sh"), str(a.upstream_port), str(out)]
    counts: dict[int, int] = {}
    try:
        up = Proc("upstream", up_argv, "1", out / "upstream.log")
        wait_ready(a.upstream_port, None, up)
        for size in sizes:
            counts[size] = measure(a, size, out, upstream)
            print(f"{size:>6} routes: {counts[size]:,} instructions per request", flush=True)
    finally:
        stop_all()
        print(f"(files in {out})", file=sys.stderr)
    base = counts[sizes[0]]
    print(f"\n| routes | instructions per request | × {sizes[0]} route(s) |")
    print("|---:|---:|---:|")
    for size in sizes:
        print(f"| {size:,} | {counts[size]:,} | {counts[size] / base:.3f} |")


if __name__ == "__main__":
    os.chdir(BENCH)
    main()
