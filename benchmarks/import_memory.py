#!/usr/bin/env python3
"""What ``splitproxy serve`` pays in RSS for its imports, import by import.

Two tables, each import in a fresh interpreter (``-S`` is not used: site-packages are needed):

* alone: RSS after ``import X`` minus the bare interpreter's, for each top-level import on
  its own (shared parts, asyncio for instance, count in each row that pulls them in);
* cumulative: the imports in the order serving needs them, in one process, and what each
  adds over those before it (the rows sum to the total);

plus, from ``python -X importtime``, the cumulative import time of each. The last rows are
splitproxy's own modules on top of their dependencies.

``--by-package`` instead starts a real server (``Server.start``, loopback, ports 0, the
integration test's routing file) in a fresh interpreter whose every module load is timed in
RSS (``exec_module`` wrapped: RSS after minus before, less what its own imports added), and
sums that "self" RSS by the package that asked for it (a standard-library module counts for
the nearest non-standard importer: ``email`` for aiohttp, ``zoneinfo`` for pydantic), with
the server's RssAnon / RssFile split and its threads. A class body that builds a pydantic
model counts for the module defining it (splitproxy's rows include pydantic's schema
machinery run for its models). RSS grows in pages and allocator chunks, so a single module's
figure is rough; the packages' sums are what to read.

    .venv/bin/python benchmarks/import_memory.py
    .venv/bin/python benchmarks/import_memory.py --by-package
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# In the order serving imports them: the dependencies, then splitproxy's own layers. Not
# listed: re2 (imported by the first regex of a routing file: config/patterns.py) and
# pydantic-settings (no longer a dependency).
IMPORTS = [
    "asyncio",
    "uvloop",
    "httptools",
    "pydantic",
    "yaml",
    "prometheus_client",
    "aiohttp.web",
    "splitproxy.config",
    "splitproxy.settings",
    "splitproxy.dataplane.client",
    "splitproxy.metrics",
    "splitproxy.rollout.controller",
    "splitproxy.admin",
    "splitproxy.server",
    "watchfiles.main",  # imported by the reloader at start: the directory watch (with anyio)
    "splitproxy.cli",
]

_PROBE = """
import importlib, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
print(rss())
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(rss())
"""


def probe(py: str, names: list[str]) -> list[int]:
    out = subprocess.run([py, "-c", _PROBE, *names], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO).stdout  # fmt: skip
    return [int(x) for x in out.split()]


def import_time_us(py: str, name: str) -> int:
    err = subprocess.run([py, "-X", "importtime", "-c", f"import {name}"], capture_output=True,
                         text=True, check=True, timeout=120, cwd=REPO).stderr  # fmt: skip
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
        if m and m.group(2) == name:
            return int(m.group(1))
    return 0


_SERVE_TRACED = r"""
import importlib.abc, json, os, sys
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

loads, stack = [], []

class Timed(importlib.abc.MetaPathFinder):
    # finds nothing itself: wraps the loader of whatever the other finders find
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            run = getattr(spec.loader, "exec_module", None)
            if run is not None:
                def exec_module(module, run=run, name=name):
                    parent = stack[-1][0] if stack else ""
                    stack.append([name, 0])
                    before = rss()
                    try:
                        run(module)
                    finally:
                        total = rss() - before
                        children = stack.pop()[1]
                        if stack:
                            stack[-1][1] += total
                        loads.append((name, parent, total - children))
                try:
                    spec.loader.exec_module = exec_module
                except (AttributeError, TypeError):
                    pass
            return spec
        return None

sys.meta_path.insert(0, Timed())
bare = rss()
import asyncio, tempfile
from splitproxy import logs
from splitproxy.cli import main as _cli
from splitproxy.server import Server, new_event_loop
from splitproxy.settings import load_settings
imported = rss()

ROUTES = '''routes:
  - name: app
    stable: http://127.0.0.1:9
    candidate: {url: http://127.0.0.1:9, revision: b}
    weight: 10
    sticky: {cookie: uid}
'''

async def run(tmp):
    path = os.path.join(tmp, "routes.yaml")
    with open(path, "w") as f:
        f.write(ROUTES)
    settings = load_settings(config=path, listen="127.0.0.1:0", admin="127.0.0.1:0",
                             state_dir=os.path.join(tmp, "state"))
    logs.configure(settings.log_format, settings.log_level)
    server = Server(settings)
    await server.start()
    await asyncio.sleep(2)  # the reloader's watch and the first controller tick
    try:
        status = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    status[key] = int(value.split()[0])
        task = f"/proc/{os.getpid()}/task"
        threads = sorted(open(f"{task}/{t}/comm").read().strip() for t in os.listdir(task))
        print(json.dumps({"bare": bare, "imported": imported, "status": status,
                          "threads": threads, "loads": loads, "modules": len(sys.modules)}))
    finally:
        await server.shutdown()

with tempfile.TemporaryDirectory() as tmp, asyncio.Runner(loop_factory=new_event_loop) as r:
    r.run(run(tmp))
"""


def _stdlib(name: str) -> bool:
    top = name.split(".")[0]
    return (
        top in sys.stdlib_module_names
        or top.lstrip("_") in sys.stdlib_module_names
        or (top.startswith("_sysconfigdata"))
    )


def _owner(name: str, parent: dict[str, str]) -> str:
    """The top-level package a module's load counts for: its own; for a standard-library
    module, its nearest importer's that is not standard, unless that is splitproxy (asyncio,
    ssl, logging... imported by splitproxy count as themselves: ``stdlib asyncio``)."""
    below, seen = name, 0
    while name and _stdlib(name) and seen < 100:
        below, name, seen = name, parent.get(name, ""), seen + 1
    if not name or (name.split(".")[0] == "splitproxy" and below != name):
        return f"stdlib {below.split('.')[0]}"
    return name.split(".")[0]


def by_package(py: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITPROXY_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([py, "-c", _SERVE_TRACED], capture_output=True, text=True, check=True,
                         timeout=120, cwd=REPO, env=env).stdout  # fmt: skip
    report = json.loads(out.strip().splitlines()[-1])
    parent = {name: par for name, par, _ in report["loads"]}
    sums: dict[str, int] = {}
    for name, _, self_bytes in report["loads"]:
        owner = _owner(name, parent)
        sums[owner] = sums.get(owner, 0) + self_bytes
    st = report["status"]
    print(f"bare interpreter {report['bare'] / 2**20:.1f} MiB; imports done "
          f"{report['imported'] / 2**20:.1f} MiB; serving {st['VmRSS'] / 1024:.1f} MiB "
          f"(RssAnon {st['RssAnon'] / 1024:.1f}, RssFile {st['RssFile'] / 1024:.1f}); "
          f"{report['modules']} modules; threads: {', '.join(report['threads'])}")  # fmt: skip
    print("\n| package (with the standard library it pulls in) | RSS of its loads (MiB) |")
    print("|---|---:|")
    for owner, total in sorted(sums.items(), key=lambda kv: -kv[1]):
        if abs(total) >= 64 * 1024:
            print(f"| `{owner}` | {total / 2**20:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--by-package", action="store_true", help="a serving process, by package")
    a = ap.parse_args()
    if a.by_package:
        by_package(a.py)
        return
    cumulative = probe(a.py, IMPORTS)
    bare = cumulative[0]
    print(f"bare interpreter: {bare / 1024:.1f} MiB; everything: {cumulative[-1] / 1024:.1f} MiB")
    columns = ["import", "alone, over bare (MiB)", "cumulative, added (MiB)", "import time (ms)"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|")
    for i, name in enumerate(IMPORTS):
        alone = probe(a.py, [name])
        added = cumulative[i + 1] - cumulative[i]
        ms = import_time_us(a.py, name) / 1000
        print(f"| `{name}` | {(alone[1] - alone[0]) / 1024:.1f} | {added / 1024:.1f} | {ms:.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
