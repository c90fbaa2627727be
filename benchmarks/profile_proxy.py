#!/usr/bin/env python3
"""Where splitproxy's CPU goes per request, under the benchmark's load (see README.md).

Starts the benchmark's upstream (nginx) and one ``splitproxy serve`` with the benchmark's
routing file (a sticky route whose canary rollout is held at 50 %) and the chosen settings
(by default what ``splitproxy serve`` users get: the access log on, text, here to a file;
metrics on), waits until the rollout has reached its step (before that the candidate gets
nothing and the proxy would be profiled at weight 0), puts wrk's closed-loop load on it, and
profiles the proxy while it serves:

* ``--tool py-spy`` (default): samples the running proxy (``py-spy record --format raw``,
  native frames included) for ``--duration`` s and prints the share of samples per function
  (self and inclusive). Low overhead; the shares are of the proxy's busy time.
* ``--tool cprofile``: runs the proxy under ``cProfile`` and prints its top functions by own
  time (deterministic, but it inflates the cost of small Python calls).
* ``--tool callgrind``: runs the proxy under ``valgrind --tool=callgrind`` with collection
  off, turns it on for exactly ``--requests`` requests (sent by a small closed-loop client),
  and prints instructions per request, total and per function. Instruction counts do not
  depend on the machine's noise, so two builds compare to the percent.

Everything listens on 127.0.0.1 only; every process it starts is stopped by its pid.

    .venv/bin/python benchmarks/profile_proxy.py --tool py-spy      # the defaults (log text)
    .venv/bin/python benchmarks/profile_proxy.py --log off --tool callgrind --requests 3000
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import itertools
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from configs import BROWSER_HEADERS, COOKIE_HEADER, REPO, ROUTES_YAML, STICKY_COOKIE
from run import Proc, http_get, stop_all, wait_ready

BENCH = Path(__file__).resolve().parent


def proxy_env(log: str, run_dir: Path, repo: Path = REPO) -> dict[str, str]:
    env = {
        "PYTHONPATH": str(repo),
        "SPLITPROXY_STATE_DIR": str(run_dir / "state"),
        "SPLITPROXY_DRAIN_TIMEOUT": "2",
        "SPLITPROXY_ACCESS_LOG": "false" if log == "off" else "true",
    }
    if log != "off":
        env["SPLITPROXY_LOG_FORMAT"] = log
    return env


def serve_argv(py: str, routes: Path, port: int) -> list[str]:
    return [py, "-m", "splitproxy", "serve", "-c", str(routes), "--listen",
            f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port + 1}"]  # fmt: skip


def proxy_argv(a: argparse.Namespace, routes: Path) -> list[str]:
    """The measured proxy's command: ``splitproxy serve``, or with ``--proxy ceiling`` the
    benchmark's Python ceiling (``proxies/ceiling.py``: the least a Python proxy on uvloop and
    httptools does per request) in front of the same upstream, for its floor in the same
    units."""
    if a.proxy == "ceiling":
        upstream = f"127.0.0.1:{a.upstream_port}"
        return [a.py, str(BENCH / "proxies" / "ceiling.py"), "--port", str(a.port),
                "--upstream", upstream]  # fmt: skip
    return serve_argv(a.py, routes, a.port)


def wait_rollout(admin_port: int, proc: Proc, timeout: float = 300.0) -> None:
    """Wait until the route's rollout has stepped to its weight (50 %): it starts at 0 % and
    steps once the candidate passes its health checks, a second or two after start (more under
    valgrind). Profiling before that would measure a proxy that sends nobody to the candidate."""
    deadline = time.time() + timeout
    view: object = None
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode} (see its log)")
        try:
            status, body = http_get(admin_port, "/api/v1/routes/bench", None, timeout=5.0)
        except OSError:
            status, body = 0, b""
        if status == 200:
            view = json.loads(body)
            assert isinstance(view, dict)
            rollout = view.get("rollout")
            if rollout is None:
                raise SystemExit("the benchmark's route has no rollout: the profile needs one")
            if view["weight"]["effective"] > 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the rollout did not step within {timeout}s: {view}")


def settle(proc: Proc, window: float = 2.0, busy: float = 0.5, timeout: float = 900.0) -> None:
    """Wait until the proxy's start-up work is done: under valgrind, the reloader reads the
    serving file once more in a thread after start (`reloadseed`: a minute with 10,000 routes)
    and would be counted against the measured requests. Done: less than ``busy`` of a core
    used over ``window`` seconds."""
    hz = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz

    deadline = time.time() + timeout
    while time.time() < deadline:
        before = cpu_seconds()
        time.sleep(window)
        if cpu_seconds() - before < busy * window:
            return
    raise RuntimeError(f"the proxy was still busy after {timeout:g}s")


def wrk(port: int, path: str, seconds: int, connections: int) -> str:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "-H", COOKIE_HEADER, f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout


def closed_loop(
    port: int,
    path: str,
    n: int,
    connections: int = 1,
    browser: bool = False,
    vary: bool = False,
) -> None:
    """``n`` requests over ``connections`` keep-alive connections, each one request at a time
    (several connections: the proxy finishes several requests per loop pass, as under load).
    Each request carries Host, the cookie and ``Accept-Encoding: identity``; ``browser``: a
    browser's head instead (`configs.BROWSER_HEADERS`, 15 headers). ``vary``: each request's
    target is one of its own (``path?n=K``, the same file), so nothing the proxy keeps per
    connection for a repeated target (the route it found) serves it."""
    name, _, value = COOKIE_HEADER.partition(": ")
    headers = {name: value, **dict(BROWSER_HEADERS)} if browser else {name: value}
    sent = itertools.count()

    def one(count: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(count):
            c.request("GET", f"{path}?n={next(sent)}" if vary else path, headers=headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"GET {path}: {r.status}")
        c.close()

    share = [n // connections + (i < n % connections) for i in range(connections)]
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for done in [pool.submit(one, k) for k in share]:
            done.result()


def py_spy(a: argparse.Namespace, proxy: Proc, out: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(a.py).parent / "py-spy")
    raw = out / "pyspy.txt"
    rec = subprocess.Popen(
        ["taskset", "-c", "1", spy, "record", "--pid", str(proxy.pid), "--duration",
         str(a.duration), "--rate", "200", "--format", "raw", "--gil", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    print(wrk(a.port, a.path, a.duration + 1, a.connections).strip().splitlines()[-2])
    rec.wait(timeout=60)
    self_n: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        total += n
        if frames:
            name, _, where = frames[-1].partition(" (")
            self_n[name] += n
            path = where.rsplit(":", 1)[0]
            by_file[path.split("site-packages/")[-1].split("/work/")[-1]] += n
        for f in {f.partition(" (")[0] for f in frames}:
            incl[f] += n
    print(f"\n{total} samples (only while holding the GIL); self % by file")
    for f, n in by_file.most_common(a.top):
        print(f"{100 * n / total:6.1f}  {f}")
    print(f"\nself % (top {a.top})")
    for f, n in self_n.most_common(a.top):
        print(f"{100 * n / total:6.1f}  {f}")
    print(f"\ninclusive % (top {a.top})")
    for f, n in incl.most_common(a.top):
        print(f"{100 * n / total:6.1f}  {f}")


def cpu(a: argparse.Namespace, proxy: Proc) -> None:
    """The proxy's user and system CPU time per request, from /proc (no profiler)."""

    def times() -> tuple[int, int, int]:
        st = Path(f"/proc/{proxy.pid}/stat").read_text()
        fields = st[st.rfind(")") + 2 :].split()
        return int(fields[11]), int(fields[12]), int(fields[7])  # utime, stime, minflt

    u0, s0, f0 = times()
    threads0 = thread_counts(proxy.pid)
    report = wrk(a.port, a.path, a.duration, a.connections)
    threads1 = thread_counts(proxy.pid)
    u1, s1, f1 = times()
    m = re.search(r"^\s*(\d+) requests in", report, re.M)
    n = int(m.group(1)) if m else 1
    hz = os.sysconf("SC_CLK_TCK")
    user, system = (u1 - u0) * 1e6 / hz / n, (s1 - s0) * 1e6 / hz / n
    print(
        f"{n / a.duration:,.0f} req/s; CPU µs/request: user {user:.1f}, system {system:.1f}, "
        f"total {user + system:.1f}; page faults per request {(f1 - f0) / n:.3f}"
    )
    # Per thread: context switches per 1,000 requests (voluntary: it waited, a futex or a
    # read; involuntary: preempted) and CPU µs per request. Counts, not times: the machine's
    # load moves them far less than the µs.
    print("thread                      vol/1k req  invol/1k req  CPU µs/req")
    for tid, (name, vol, invol, ticks) in sorted(threads1.items()):
        vol0, invol0, ticks0 = threads0.get(tid, (name, 0, 0, 0))[1:]
        print(
            f"{name[:26]:26}  {1000 * (vol - vol0) / n:10.2f}  {1000 * (invol - invol0) / n:12.2f}"
            f"  {(ticks - ticks0) * 1e6 / hz / n:10.2f}"
        )


def thread_counts(pid: int) -> dict[int, tuple[str, int, int, int]]:
    """Each thread of ``pid``: its name, voluntary and involuntary context switches and CPU
    ticks (user + system), from ``/proc/PID/task``."""
    counts: dict[int, tuple[str, int, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        ticks = stat[stat.rfind(")") + 2 :].split()
        counts[int(task.name)] = (
            fields["Name"].strip(),
            int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
            int(ticks[11]) + int(ticks[12]),
        )
    return counts


def callgrind(a: argparse.Namespace, routes: Path, env: dict[str, str], out: Path) -> None:
    cg = out / "callgrind.out"
    # one dump per thread: the access log's writer thread is reported apart
    # --cache-sim: callgrind also simulates the first-level and last-level caches, so the
    # misses per request show whether a cost grows with cold caches (the 64 KB bodies streamed
    # through them) rather than with instructions
    sim = ["--cache-sim=yes"] if a.cache_sim else []
    argv = ["valgrind", "--tool=callgrind", "--separate-threads=yes", *sim,
            f"--callgrind-out-file={cg}", *proxy_argv(a, routes)]  # fmt: skip
    proxy = Proc("splitproxy", argv, "0", out / "proxy.log", env, cwd=out)
    try:
        wait_ready(a.port, COOKIE_HEADER, proxy, timeout=300)
        if a.proxy == "splitproxy":
            wait_rollout(a.port + 1, proxy)
            settle(proxy)
        closed_loop(a.port, a.path, 200, browser=a.browser_head, vary=a.vary_target)  # warm-up
        # zero the counters, serve exactly the measured requests, dump (callgrind.out.1)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        closed_loop(
            a.port, a.path, a.requests, a.callgrind_connections, a.browser_head, a.vary_target
        )
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
    finally:
        proxy.stop(timeout=120)
    # the dump of the measured requests: callgrind.out.1-NN, one file per thread
    dumps = sorted(out.glob("callgrind.out.1*"))
    if not dumps:
        raise SystemExit(f"no callgrind dump in {out}")
    per_thread: list[tuple[str, list[int]]] = []
    events: list[str] = ["Ir"]
    for dump in dumps:
        text = dump.read_text()
        e = re.search(r"^events:\s+(.+)$", text, re.M)
        if e:
            events = e.group(1).split()
        m = re.search(r"^(?:summary|totals):\s+([\d ]+)$", text, re.M)
        per_thread.append((dump.name, [int(v) for v in m.group(1).split()] if m else []))
    total = sum(counts[0] for _, counts in per_thread if counts)
    print(f"instructions per request: {total / a.requests:,.0f} ({a.requests} requests)")
    for name, counts in per_thread:
        if counts and counts[0]:
            print(f"  {name}: {counts[0] / a.requests:,.0f}")
    if len(events) > 1:
        print("per request, all threads (callgrind's simulated caches):")
        for i, event in enumerate(events):
            n = sum(counts[i] for _, counts in per_thread if len(counts) > i)
            print(f"  {event}: {n / a.requests:,.1f}")


def parser() -> argparse.ArgumentParser:
    """The command line, with every option `callgrind` and the other tools read (other
    benchmarks that drive `callgrind` start from its defaults: ``parser().parse_args([])``)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--log", choices=["off", "text", "json"], default="text", help="the access log")
    ap.add_argument("--tool", choices=["py-spy", "cprofile", "callgrind", "cpu"], default="py-spy")
    ap.add_argument(
        "--proxy",
        choices=["splitproxy", "ceiling"],
        default="splitproxy",
        help="what is measured: splitproxy, or the benchmark's Python ceiling (its floor)",
    )
    ap.add_argument("--path", default="/1k")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3000, help="callgrind: requests measured")
    ap.add_argument(
        "--callgrind-connections", type=int, default=16, help="callgrind: concurrent clients"
    )
    ap.add_argument(
        "--browser-head",
        action="store_true",
        help="callgrind: requests with a browser's 15 headers (wrk's carry two)",
    )
    ap.add_argument(
        "--vary-target",
        action="store_true",
        help="callgrind: each request a target of its own (path?n=K): the route is looked up "
        "every time, not kept by the connection for a repeated target",
    )
    ap.add_argument(
        "--cache-sim",
        action="store_true",
        help="callgrind: also count simulated cache misses (first level, last level) per request",
    )
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout to profile")
    ap.add_argument("--port", type=int, default=29181, help="proxy port (admin: +1)")
    ap.add_argument("--upstream-port", type=int, default=29180)
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    return ap


def main() -> None:
    a = parser().parse_args()
    out = Path(tempfile.mkdtemp(prefix="splitproxy-profile-"))
    print(out, file=sys.stderr)
    # the routing file in a folder of its own: the reloader watches its folder, and the
    # proxy's log (its stderr, in ``out``) would wake the watch on every write
    (out / "config").mkdir()
    routes = out / "config" / "routes.yaml"
    upstream = f"127.0.0.1:{a.upstream_port}"
    routes.write_text(ROUTES_YAML.format(upstream=upstream, cookie=STICKY_COOKIE))
    env = proxy_env(a.log, out, a.repo.resolve())
    up_argv = ["bash", str(BENCH / "upstream_nginx.sh"), str(a.upstream_port), str(out)]
    try:
        up = Proc("upstream", up_argv, "1", out / "upstream.log")
        wait_ready(a.upstream_port, None, up)
        if a.tool == "callgrind":
            callgrind(a, routes, env, out)
            return
        argv = proxy_argv(a, routes)
        if a.tool == "cprofile":
            argv = [a.py, "-m", "cProfile", "-o", str(out / "prof"), *argv[1:]]
        proxy = Proc("splitproxy", argv, "0", out / "proxy.log", env, cwd=out)
        wait_ready(a.port, COOKIE_HEADER, proxy)
        if a.proxy == "splitproxy":
            wait_rollout(a.port + 1, proxy)
        wrk(a.port, a.path, 2, a.connections)  # warm-up
        if a.tool == "py-spy":
            py_spy(a, proxy, out)
        elif a.tool == "cpu":
            cpu(a, proxy)
        else:
            print(wrk(a.port, a.path, a.duration, a.connections).strip().splitlines()[-2])
            proxy.stop()
            stats = pstats.Stats(str(out / "prof"))
            stats.sort_stats("tottime").print_stats(a.top)
    finally:
        stop_all()
        print(f"(files in {out})", file=sys.stderr)


if __name__ == "__main__":
    os.chdir(BENCH)
    main()
