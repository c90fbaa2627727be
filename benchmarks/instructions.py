#!/usr/bin/env python3
"""Instructions per call of a Python statement, counted by valgrind (callgrind): noise-free.

On a shared machine, ``timeit`` numbers move by 50 % with the neighbours' load; instruction
counts do not move at all, so two versions of a hot function compare to the percent. The
statement runs ``-n`` times after ``--setup`` in a fresh interpreter under
``valgrind --tool=callgrind``, and once more with ``-n 0``; the difference over ``n`` is the
count per call (interpreter start-up and the set-up cancel out).

    .venv/bin/python benchmarks/instructions.py -n 20000 \\
        --setup 'from benchmarks.micro import access_log_batch as f' --stmt 'f()'

Named cases (``--case``) are the measurements quoted in README.md; ``--case all`` runs each.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (setup, statement, calls per statement)
CASES: dict[str, tuple[str, str, int]] = {
    "log-text": (
        "from benchmarks.micro import access_log; run = access_log('text')",
        "run()",
        16,
    ),
    "log-json": (
        "from benchmarks.micro import access_log; run = access_log('json')",
        "run()",
        16,
    ),
    "recorder": ("from benchmarks.micro import recorder; run = recorder()", "run()", 1),
    "recorder-varied": (
        "from benchmarks.micro import recorder; run = recorder(varied=True)",
        "run()",
        1,
    ),
    "log-pass-text": (
        "from benchmarks.micro import access_log_pass; run = access_log_pass('text')",
        "run()",
        16,
    ),
    "log-pass-json": (
        "from benchmarks.micro import access_log_pass; run = access_log_pass('json')",
        "run()",
        16,
    ),
    "log-sparse-text": (
        "from benchmarks.micro import access_log_sparse; run = access_log_sparse('text')",
        "run()",
        1,
    ),
    "log-sparse-json": (
        "from benchmarks.micro import access_log_sparse; run = access_log_sparse('json')",
        "run()",
        1,
    ),
    "log-sparse-off": (
        "from benchmarks.micro import access_log_sparse; run = access_log_sparse('off')",
        "run()",
        1,
    ),
    "route-1": ("from benchmarks.micro import lookup; run = lookup(1)", "run()", 1),
    "route-100": ("from benchmarks.micro import lookup; run = lookup(100)", "run()", 1),
    "route-10000": ("from benchmarks.micro import lookup; run = lookup(10000)", "run()", 1),
    "sticky": ("from benchmarks.micro import sticky_choice; run = sticky_choice()", "run()", 1),
    "relay-1k": ("from benchmarks.relay_micro import relay; run = relay(1024)", "run()", 1),
    "relay-1k-browser": (
        "from benchmarks.relay_micro import relay; run = relay(1024, browser=True)",
        "run()",
        1,
    ),
    "relay-1k-browser-new": (
        "from benchmarks.relay_micro import relay; run = relay(1024, browser=True, new_heads=True)",
        "run()",
        1,
    ),
    "response-head": (
        "from benchmarks.micro import nginx_response_head; run = nginx_response_head()",
        "run()",
        1,
    ),
}


def count(py: str, setup: str, stmt: str, n: int) -> int:
    """Instructions of a whole interpreter run that executes ``stmt`` ``n`` times."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing (apt-get install -y valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        code = f"{setup}\nfor _ in range({n}):\n    {stmt}\n"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", py, "-c", code],
            cwd=REPO, capture_output=True, check=True, timeout=900,
            # the same hashes in both runs: the set-up's cost cancels out exactly
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
        if m is None:
            raise SystemExit("no summary line in callgrind's output")
        return int(m.group(1))


def per_call(py: str, setup: str, stmt: str, n: int, calls: int) -> float:
    return (count(py, setup, stmt, n) - count(py, setup, stmt, 0)) / (n * calls)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--case", choices=[*CASES, "all"])
    ap.add_argument("--setup", default="pass")
    ap.add_argument("--stmt")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=1, help="units of work per statement")
    ap.add_argument("--py", default=str(REPO / ".venv" / "bin" / "python"))
    a = ap.parse_args()
    if a.case is None:
        if a.stmt is None:
            raise SystemExit("--case or --stmt")
        print(f"{per_call(a.py, a.setup, a.stmt, a.n, a.calls):,.0f} instructions per call")
        return
    for name in CASES if a.case == "all" else [a.case]:
        setup, stmt, calls = CASES[name]
        print(f"{name}: {per_call(a.py, setup, stmt, a.n, calls):,.0f} instructions per unit")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
