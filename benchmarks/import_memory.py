#!/usr/bin/env python3
"""What ``splitproxy serve`` pays in RSS for its imports, import by import.

Two tables, each import in a fresh interpreter (``-S`` is not used: site-packages are needed):

* alone: RSS after ``import X`` minus the bare interpreter's, for each top-level import on
  its own (shared parts, asyncio for instance, count in each row that pulls them in);
* cumulative: the imports in the order serving needs them, in one process, and what each
  adds over those before it (the rows sum to the total);

plus, from ``python -X importtime``, the cumulative import time of each. The last rows are
splitproxy's own modules on top of their dependencies.

    .venv/bin/python benchmarks/import_memory.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# In the order serving imports them: the dependencies, then splitproxy's own layers.
IMPORTS = [
    "asyncio",
    "uvloop",
    "httptools",
    "pydantic",
    "watchfiles",  # the reloader's directory watch (its awatch pulls anyio)
    "yaml",
    "re2",  # only once a routing file has a regex (config/patterns.py)
    "prometheus_client",
    "aiohttp.web",
    "splitproxy.config",
    "splitproxy.settings",
    "splitproxy.dataplane.client",
    "splitproxy.metrics",
    "splitproxy.rollout.controller",
    "splitproxy.admin",
    "splitproxy.server",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    a = ap.parse_args()
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
