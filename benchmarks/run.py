#!/usr/bin/env python3
"""splitproxy side-by-side benchmark driver (stdlib only). See README.md.

For every round, every scenario and every config (interleaved: A B C D A B C D ...): start
the proxy fresh (pinned with taskset, own session), check it, warm it up, measure, read its CPU
time and peak RSS, stop it (SIGTERM, then SIGKILL). One upstream nginx serves the whole run.
Everything listens on and targets 127.0.0.1 only; every run is bounded in time.
Writes results/<stamp>/runs.jsonl (one JSON object per run), meta.json, logs/, summary.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, NoReturn

from configs import BENCH, CONFIGS, COOKIE_HEADER, REPO, Config, Ctx
from summarize import summarize

HZ = os.sysconf("SC_CLK_TCK")
SCENARIOS = "closed:/1k,closed:/64k,open:/1k:500,open:/1k:2000"
SIZES = {"/ok": 2, "/1k": 1024, "/64k": 65536}


# ---------------------------------------------------------------- processes
class Proc:
    """A server started in its own session (setsid): its pid is also its session and process
    group id, so all its workers are found (and, as a last resort, killed) through that pid."""

    running: list[Proc] = []  # noqa: RUF012 (class-wide registry, stopped on exit)

    def __init__(
        self,
        name: str,
        argv: list[str],
        cpus: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        full = (["taskset", "-c", cpus] if cpus != "-" else []) + argv
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        self.log.write(f"+ {envs + ' ' if envs else ''}{shlex.join(full)}\n".encode())
        self.log.flush()
        self.p = subprocess.Popen(
            full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.pid = self.p.pid
        Proc.running.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def pids(self) -> list[int]:
        """pids whose session id is ours (leader + workers)."""
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _stat(int(d))
                if st and int(st[3]) == self.pid:
                    out.append(int(d))
        return out

    def cpu_seconds(self) -> float:
        """utime + stime over the session's processes."""
        ticks = 0
        for pid in self.pids():
            st = _stat(pid)
            if st:
                ticks += int(st[11]) + int(st[12])
        return ticks / HZ

    def peak_rss_kib(self) -> tuple[int, int]:
        """(sum of VmHWM, number of processes) over the session."""
        hwm = n = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                n += 1
            except (OSError, ValueError):
                pass
        return hwm, n

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(timeout)
        deadline = time.time() + 3
        while self.pids() and time.time() < deadline:
            time.sleep(0.05)
        if self.pids():  # leftovers of this session only: its process group is our pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self.alive():
            self.p.kill()
        self.p.wait()
        self.log.close()
        if self in Proc.running:
            Proc.running.remove(self)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return st[st.rfind(")") + 2 :].split()


def stop_all() -> None:
    for p in reversed(list(Proc.running)):
        try:
            p.stop(timeout=3)
        except Exception as e:  # keep stopping the others
            print(f"warning: stopping {p.name}: {e}", file=sys.stderr)


def on_signal(signum: int, _frame: object) -> NoReturn:
    stop_all()
    sys.exit(128 + signum)


# ---------------------------------------------------------------- checks
def http_get(port: int, path: str, header: str | None, timeout: float = 2.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        if header:
            k, _, v = header.partition(":")
            headers[k.strip()] = v.strip()
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(
    port: int, header: str | None, proc: Proc | None = None, timeout: float = 20.0
) -> None:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode} (see its log)")
        try:
            st, _ = http_get(port, "/ok", header, timeout=1.0)
            if st == 200:
                return
            last = f"status {st}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {timeout}s: {last}")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def sanity(port: int, header: str | None) -> None:
    """Every path must come back whole through the target."""
    for path, n in SIZES.items():
        st, body = http_get(port, path, header, timeout=5.0)
        if st != 200 or len(body) != n:
            raise RuntimeError(f"sanity: GET {path} -> {st}, {len(body)} bytes (want 200, {n})")


# ---------------------------------------------------------------- machine load
CpuTimes = dict[str, tuple[int, int, int]]  # cpuN -> (busy, steal, total) jiffies


def proc_stat() -> CpuTimes:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *rest = line.split()
        v = [int(x) for x in rest[:8]] + [0] * max(0, 8 - len(rest))
        user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
        busy = user + nice + system + irq + softirq
        out[name] = (busy, steal, busy + idle + iowait + steal)
    return out


def busy_cores(a: CpuTimes, b: CpuTimes) -> float:
    """Cores' worth of busy time between two samples."""
    tot = 0.0
    for k in b:
        if k != "cpu" and k in a and b[k][2] > a[k][2]:
            tot += (b[k][0] - a[k][0]) / (b[k][2] - a[k][2])
    return tot


def cpu_usage(a: CpuTimes, b: CpuTimes) -> dict[str, dict[str, float]]:
    res = {}
    for k in b:
        if k != "cpu" and k in a and b[k][2] > a[k][2]:
            d = b[k][2] - a[k][2]
            res[k] = {
                "busy_pct": round(100 * (b[k][0] - a[k][0]) / d, 1),
                "steal_pct": round(100 * (b[k][1] - a[k][1]) / d, 1),
            }
    return res


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Nothing of ours is busy between runs: wait (bounded) until other load is gone.
    Returns (seconds waited, busy cores in the last 0.5 s sample)."""
    t0 = time.time()
    while True:
        s0 = proc_stat()
        time.sleep(0.5)
        b = busy_cores(s0, proc_stat())
        if b <= threshold or time.time() - t0 >= max_wait:
            return round(time.time() - t0, 1), round(b, 2)


# ---------------------------------------------------------------- load
def run_wrk(
    a: argparse.Namespace, port: int, path: str, duration: int, log: Path
) -> dict[str, Any]:
    cmd = ["taskset", "-c", a.load_cpus, "wrk", "-t1", f"-c{a.connections}", f"-d{duration}s"]
    cmd += ["--timeout", "5s", "--latency", "-s", str(BENCH / "wrk_report.lua")]
    cmd += ["-H", a.header] if a.header else []
    cmd += [f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False)
    with open(log, "a") as f:
        f.write("+ " + shlex.join(cmd) + "\n" + r.stdout + r.stderr + "\n")
    m = re.search(r"^WRKJSON (.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (rc={r.returncode}): {r.stderr.strip()[:300]}")
    d: dict[str, Any] = json.loads(m.group(1))
    d["rps"] = round(d["requests"] / (d["duration_us"] / 1e6), 1)
    errs = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    d["errors"] = sum(d[k] for k in errs)
    d["n"] = d["requests"]
    d["command"] = shlex.join(cmd)
    return d


def run_open(
    a: argparse.Namespace, port: int, path: str, rate: float, duration: int, log: Path
) -> dict[str, Any]:
    cmd = ["taskset", "-c", a.load_cpus, a.py, str(BENCH / "loadgen_open.py"), "--port", str(port)]
    cmd += ["--path", path, "--rate", str(rate), "--duration", str(duration)]
    cmd += ["--header", a.header] if a.header else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    with open(log, "a") as f:
        f.write("+ " + shlex.join(cmd) + "\n" + r.stdout + r.stderr + "\n")
    m = re.search(r"^OPENJSON (.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"loadgen_open failed (rc={r.returncode}): {r.stderr.strip()[-300:]}")
    d: dict[str, Any] = json.loads(m.group(1))
    d["rps"] = d["achieved_rps"]
    d["errors"] = d["non_2xx"] + d["unfinished"] + sum(d["errors"].values())
    d["n"] = d["completed"]
    d["command"] = shlex.join(cmd)
    return d


def load(
    a: argparse.Namespace, sc: dict[str, Any], port: int, secs: int, log: Path
) -> dict[str, Any]:
    if sc["kind"] == "closed":
        return run_wrk(a, port, sc["path"], secs, log)
    return run_open(a, port, sc["path"], sc["rate"], secs, log)


def parse_scenario(s: str) -> dict[str, Any]:
    """closed:PATH  |  open:PATH:RATE"""
    kind, _, rest = s.partition(":")
    bits = rest.split(":")
    if kind == "closed" and len(bits) == 1 and bits[0] in SIZES:
        return {"id": s, "kind": "closed", "path": bits[0]}
    if kind == "open" and len(bits) == 2 and bits[0] in SIZES:
        return {"id": s, "kind": "open", "path": bits[0], "rate": float(bits[1])}
    raise SystemExit(
        f"bad scenario {s!r} (want closed:PATH or open:PATH:RATE, PATH in {list(SIZES)})"
    )


# ---------------------------------------------------------------- one run
def one_run(
    a: argparse.Namespace, cfg: Config, sc: dict[str, Any], rnd: int, ctx: Ctx, up: Proc, out: Path
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "round": rnd,
        "scenario": sc["id"],
        "kind": sc["kind"],
        "path": sc["path"],
        "config": cfg.name,
        "t_utc": time.time(),
    }
    port = ctx.upstream_port if cfg.command is None else ctx.port
    log = out / "logs" / f"r{rnd}-{re.sub('[^A-Za-z0-9]+', '_', sc['id'])}-{cfg.name}"
    proxy = None
    try:
        rec["quiet_wait_s"], rec["pre_busy_cores"] = wait_quiet(a.quiet_threshold, a.quiet_wait)
        if cfg.command is not None:
            deadline = time.time() + 10
            while (
                not (port_free(ctx.port) and port_free(ctx.admin_port)) and time.time() < deadline
            ):
                time.sleep(0.1)
            argv = cfg.command(ctx)
            rec["command"] = shlex.join(argv)
            env = {k: v.replace("{run_dir}", str(ctx.run_dir)) for k, v in cfg.env.items()}
            env = {"PYTHONPATH": str(REPO), **env}  # the project, even when not pip-installed
            proxy_log = Path(f"{log}.proxy.log")
            proxy = Proc(cfg.name, argv, a.proxy_cpus, proxy_log, env, cwd=ctx.run_dir)
            wait_ready(port, a.header, proxy, timeout=a.start_timeout)
        sanity(port, a.header)
        if a.warmup:  # same load shape, discarded
            load(a, sc, port, a.warmup, Path(f"{log}.load.log"))
        c0 = proxy.cpu_seconds() if proxy else 0.0
        u0 = up.cpu_seconds()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        s0, t0 = proc_stat(), time.time()
        m = load(a, sc, port, a.duration, Path(f"{log}.load.log"))
        s1, wall = proc_stat(), time.time() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        u1 = up.cpu_seconds()
        c1 = proxy.cpu_seconds() if proxy else 0.0
        n = max(1, m["n"])
        load_s = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        # cores' worth of CPU used by processes outside this benchmark (noise)
        ours = (c1 - c0) + (u1 - u0) + load_s
        rec["foreign_cores"] = round(busy_cores(s0, s1) - ours / wall, 2)
        rec["metrics"] = m
        rec["cpu"] = cpu_usage(s0, s1)
        rec["load_cpu_us_per_req"] = round(load_s * 1e6 / n, 1)
        rec["upstream_cpu_us_per_req"] = round((u1 - u0) * 1e6 / n, 1)
        if proxy:
            rec["proxy_cpu_s"] = round(c1 - c0, 3)
            rec["proxy_cpu_us_per_req"] = round((c1 - c0) * 1e6 / n, 1)
            rec["proxy_hwm_kib"], rec["proxy_nproc"] = proxy.peak_rss_kib()
            if not proxy.alive():
                raise RuntimeError(f"proxy exited during the run (rc={proxy.p.returncode})")
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        if proxy:
            proxy.stop()
    return rec


# ---------------------------------------------------------------- main
def versions(py: str) -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            r = subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? {e}"
        lines = (r.stdout + r.stderr).strip().splitlines()
        return lines[0] if lines else ""

    q = shlex.quote
    return {
        "kernel": " ".join(os.uname()[i] for i in (0, 2, 4)),
        "cpu_model": sh("lscpu | sed -n 's/^Model name: *//p'"),
        "nproc": os.cpu_count(),
        "nginx": sh("nginx -v 2>&1"),
        "wrk": sh("wrk -v 2>&1"),
        "python": sh(f"{q(py)} -V"),
        "aiohttp_uvloop": sh(
            f"{q(py)} -c 'import aiohttp,uvloop;print(aiohttp.__version__,uvloop.__version__)'"
        ),
        "repo_rev": sh(f"git -C {q(str(REPO))} rev-parse --short HEAD 2>/dev/null || echo none"),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [c.name for c in CONFIGS]
    ap.add_argument(
        "--only", help=f"comma-separated configs, in this order (known: {','.join(names)})"
    )
    ap.add_argument(
        "--scenarios", default=SCENARIOS, help="closed:PATH / open:PATH:RATE, comma-separated"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="discarded warm-up seconds per run")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 3 s, 1 s warm-up")
    ap.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    ap.add_argument(
        "--header", default=COOKIE_HEADER, help="request header sent by every load ('' = none)"
    )
    ap.add_argument("--proxy-cpus", default="0", help="taskset cpus of the proxy ('-' = unpinned)")
    ap.add_argument(
        "--load-cpus", default="1", help="taskset cpus of wrk / loadgen and the upstream"
    )
    ap.add_argument("--upstream-port", type=int, default=28080)
    ap.add_argument("--proxy-port", type=int, default=28081, help="the admin port is this + 1")
    ap.add_argument("--ref", default="nginx", help="config that req/s ratios are taken against")
    ap.add_argument("--limit", default="direct", help="the no-proxy config")
    ap.add_argument(
        "--start-timeout", type=float, default=20.0, help="max seconds for a proxy to answer"
    )
    ap.add_argument(
        "--quiet-threshold", type=float, default=0.15, help="other load (cores) to wait out"
    )
    ap.add_argument(
        "--quiet-wait", type=float, default=10.0, help="max seconds to wait for quiet per run"
    )
    ap.add_argument(
        "--py", default=sys.executable, help="python with the project, aiohttp and uvloop"
    )
    ap.add_argument("--out", type=Path, help="results dir (default: benchmarks/results/UTC-STAMP)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.duration, a.warmup = 1, 3, 1
    a.py = os.path.abspath(a.py)  # proxies run in the scratch dir; keep venv symlinks as they are
    if not (1 <= a.rounds <= 20 and 1 <= a.duration <= 120 and 0 <= a.warmup <= 30):
        raise SystemExit("bounds: 1 <= rounds <= 20, 1 <= duration <= 120 s, warmup <= 30 s")
    return a


def main() -> None:
    a = parse_args()
    if a.only:
        by_name = {c.name: c for c in CONFIGS}
        unknown = [n for n in a.only.split(",") if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown config(s) {unknown}; known: {list(by_name)}")
        configs = [by_name[n] for n in a.only.split(",")]
    else:
        configs = [c for c in CONFIGS if c.default]
    scenarios = [parse_scenario(s) for s in a.scenarios.split(",") if s]

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (a.out or BENCH / "results" / stamp).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    run_dir = BENCH / ".work" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    n_runs = a.rounds * len(scenarios) * len(configs)
    print(
        f"{len(configs)} configs x {len(scenarios)} scenarios x {a.rounds} rounds = {n_runs} runs, "
        f"~{n_runs * (a.duration + a.warmup + 3) / 60:.0f}-"
        f"{n_runs * (a.duration + a.warmup + 3 + a.quiet_wait) / 60:.0f} min -> {out}",
        flush=True,
    )
    meta = {
        "started_utc": stamp,
        "argv": sys.argv,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "configs": [{"name": c.name, "env": c.env} for c in configs],
        "scenarios": scenarios,
        "versions": versions(a.py),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = Ctx(a.proxy_port, a.proxy_port + 1, a.upstream_port, a.py, run_dir)
    try:
        for p in (ctx.upstream_port, ctx.port, ctx.admin_port):
            if not port_free(p):
                raise SystemExit(
                    f"port {p} on 127.0.0.1 is busy (see --upstream-port/--proxy-port)"
                )
        upstream_sh = str(BENCH / "upstream_nginx.sh")
        up_argv = ["bash", upstream_sh, str(ctx.upstream_port), str(run_dir)]
        up = Proc("upstream", up_argv, a.load_cpus, out / "logs" / "upstream.log")
        wait_ready(ctx.upstream_port, a.header, up)
        sanity(ctx.upstream_port, a.header)
        k = 0
        with open(out / "runs.jsonl", "a") as results:
            for rnd in range(1, a.rounds + 1):
                for sc in scenarios:
                    for cfg in configs:
                        k += 1
                        rec = one_run(a, cfg, sc, rnd, ctx, up, out)
                        results.write(json.dumps(rec) + "\n")
                        results.flush()
                        m = rec.get("metrics")
                        p50, p99 = (
                            ("svc_p50_us", "svc_p99_us")
                            if sc["kind"] == "open"
                            else ("p50_us", "p99_us")
                        )
                        print(
                            f"[{k}/{n_runs}] r{rnd} {sc['id']:<16} {cfg.name:<16} "
                            + (
                                f"rps={m['rps']:>9} p50={m[p50]}us p99={m[p99]}us "
                                f"cpu={rec.get('proxy_cpu_us_per_req')}us/req "
                                f"hwm={rec.get('proxy_hwm_kib')}KiB other={rec['foreign_cores']}"
                                if m
                                else f"ERROR {rec.get('error')}"
                            ),
                            flush=True,
                        )
    finally:
        stop_all()
    text = summarize(out, a.ref, a.limit)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
