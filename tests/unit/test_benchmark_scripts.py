"""The benchmarks still start: every script's command line, and the in-process ones on a tiny run.

The benchmarks are how issue-level speed and decision claims are checked, and nothing else
runs them: a renamed option or a helper's new field broke `routes_scale.py` twice unseen. The
ones that need nginx, wrk or valgrind cannot run here, so for them only their command line
(``--help``: every import and option parser) and the options they hand to `profile_proxy` are
checked; the pure ones run end to end on a tiny size."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
# scripts run from a command line (the rest are modules the scripts import)
SCRIPTS = sorted(
    p.name
    for p in BENCH.glob("*.py")
    if "argparse" in (text := p.read_text()) and 'if __name__ == "__main__":' in text
)


def run(*argv: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH,
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done.stdout


def test_the_scripts_are_found() -> None:
    # (a glob that matched nothing would make the next test pass without running)
    assert {"profile_proxy.py", "routes_scale.py", "run.py", "controller_tick.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_parses_its_command_line(script: str) -> None:
    assert "usage:" in run(str(BENCH / script), "--help")


@pytest.fixture
def bench_modules() -> Iterator[None]:
    """The benchmarks' own modules importable as the scripts import them (by bare name)."""
    sys.path.insert(0, str(BENCH))
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path.remove(str(BENCH))
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _module(name: str) -> ModuleType:
    return __import__(name)


@pytest.mark.usefixtures("bench_modules")
def test_routes_scale_hands_profile_proxy_every_option_it_reads() -> None:
    profile_proxy = _module("profile_proxy")
    routes_scale = _module("routes_scale")
    wanted = vars(profile_proxy.parser().parse_args([]))
    got = vars(routes_scale.options(["--sizes", "1,2", "--port", "19999"]))
    assert set(wanted) <= set(got), set(wanted) - set(got)
    # its own defaults and values win over profile_proxy's, and it measures what it says
    assert (got["port"], got["upstream_port"], got["sizes"]) == (19999, 29280, "1,2")
    assert (got["tool"], got["proxy"], got["vary_target"]) == ("callgrind", "splitproxy", True)


def test_controller_tick_runs_a_tiny_rollout() -> None:
    out = run(str(BENCH / "controller_tick.py"), "--routes", "5", "--seconds", "3", "--warmup", "2")
    assert "phases at the end: {'progressing': 5}" in out


def test_evalue_micro_runs() -> None:
    out = run(str(BENCH / "evalue_micro.py"), "--tests", "5")
    assert "per update and verdict" in out


def test_cyclic_garbage_runs_a_few_requests() -> None:
    out = run(str(BENCH / "cyclic_garbage.py"), "--requests", "20")
    assert "through the proxy:" in out, out
