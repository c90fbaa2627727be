"""The A/B benchmark's smoke run: ``benchmarks/ab_bench.py --quick`` runs and reports every cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("aa", "aa_20", "lift_2", "lift_5", "lift_10", "harm_10", "srm_52_48")
METHODS = ("splitproxy", "z_peek", "z_fixed")


def test_the_quick_run_reports_every_scenario_and_method(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ab_bench.py"),
            "--quick",
            "--workers",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
        cwd=ROOT,
    )
    assert "| scenario | runs | splitproxy |" in done.stdout
    assert "quick mode" in done.stdout
    data = json.loads(out.read_text())
    assert data["days"] == 2
    results = data["results"]
    assert set(results) == set(SCENARIOS)
    for name in SCENARIOS:
        assert results[name]["runs"] > 0
        for method in METHODS:
            cell = results[name][method]
            for key in ("winner_rate", "right_rate", "wrong_rate"):
                assert 0.0 <= cell[key] <= 1.0
            assert cell["right_rate"] + cell["wrong_rate"] == pytest.approx(cell["winner_rate"])
    # even a smoke run sees the broken split and the 10 % lift
    assert results["srm_52_48"]["splitproxy"]["srm_rate"] > 0.5
    assert results["lift_10"]["splitproxy"]["right_rate"] > 0.5
