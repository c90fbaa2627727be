"""The controller tick decides as it did before its shortcuts: every route's fingerprint.

``benchmarks/tick_decisions.py`` drives the real `Controller` over a mix of rollouts (A/A,
sticky, failing, slow, a short canary that promotes, blue/green, A/B, failed windows) and
fingerprints, per route, each tick's phase, weight, step and check results and the final
saved state and ledger. ``data/tick_decisions.json`` holds the fingerprints recorded before
the tick's shortcuts (issue 17); a shortcut that changes any number, decision or text of any
route on any tick changes its route's fingerprint. (Regenerate with ``--routes 32 --seconds
300 --out`` only for a deliberate change of behaviour.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(__file__).parent / "data" / "tick_decisions.json"


def fingerprints(tmp_path: Path, *extra: str) -> dict[str, str]:
    out = tmp_path / "fingerprints.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "tick_decisions.py"),
            *("--routes", "32", "--seconds", "300", "--out", str(out), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return cast(dict[str, str], json.loads(out.read_text()))


def test_every_route_decides_and_shows_what_it_did_before_the_shortcuts(tmp_path: Path) -> None:
    got = fingerprints(tmp_path)
    want = json.loads(DATA.read_text())
    assert [name for name in want if got.get(name) != want[name]] == []
    assert got == want


def test_the_paced_pass_decides_as_the_synchronous_tick(tmp_path: Path) -> None:
    """The background loop's pass, one route per slice (a turn of the event loop between
    every two routes): the same fingerprints, tick by tick."""
    got = fingerprints(tmp_path, "--paced", "--slice-budget", "0")
    want = json.loads(DATA.read_text())
    assert [name for name in want if got.get(name) != want[name]] == []
    assert got == want
