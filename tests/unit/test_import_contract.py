"""The layers hold: the pure core does no IO and reads no clock, and imports point down.

Read from the source with `ast` (imports inside functions count; imports under
``if TYPE_CHECKING:`` do not, they never run), then followed through splitproxy's own modules,
so a pure module cannot reach asyncio by importing a module that does. One subprocess check
confirms it at run time for the heavy ones (asyncio, aiohttp, the event loop, the parser).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "splitproxy"

# Modules that take values and return values: no IO, no clock, no randomness.
PURE_PACKAGES = ("splitproxy.config",)
PURE_MODULES = (
    "splitproxy.errors",
    "splitproxy.dataplane.routing",
    "splitproxy.dataplane.abgoals",
    "splitproxy.dataplane.mirror_compare",
    "splitproxy.dataplane.state",
    "splitproxy.dataplane.swapdiff",
    "splitproxy.dataplane.health",
    "splitproxy.rollout.analyzer",
    "splitproxy.rollout.phases",
    "splitproxy.rollout.readiness",
    "splitproxy.dataplane.health",
    "splitproxy.rollout.messages",
    "splitproxy.rollout.evidence",
    "splitproxy.rollout.codec",
    "splitproxy.rollout.validation",
    "splitproxy.rollout.status",
    "splitproxy.rollout.histograms",
    "splitproxy.rollout.sketch",
    "splitproxy.rollout.sequential",
    "splitproxy.rollout.ratios",
    "splitproxy.rollout.abtest",
    "splitproxy.rollout.shadow",
    "splitproxy.rollout.mirrored",
    "splitproxy.rollout.ab",
    "splitproxy.rollout.windows",
    "splitproxy.rollout.samples",
    "splitproxy.workers.pooling",
    "splitproxy.replicas.wire",
)
# IO, event loops, clocks and randomness: what a pure module must not import.
IMPURE = frozenset(
    {
        "asyncio",
        "aiohttp",
        "uvloop",
        "httptools",
        "socket",
        "ssl",
        "selectors",
        "subprocess",
        "threading",
        "time",
        "datetime",
        "random",
        "secrets",
        "urllib.request",
        "watchfiles",
        "prometheus_client",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not _type_checking_block(child):
                stack.append(child)


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module ``name`` imports at run time, as absolute dotted names."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from splitproxy.x import y` may name a submodule y
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return frozenset(found)


def reachable(name: str) -> dict[str, str]:
    """Modules reachable from ``name`` through splitproxy's own imports -> who imported them."""
    seen: dict[str, str] = {name: ""}
    todo = [name]
    while todo:
        current = todo.pop()
        for imported in imports_of(current):
            if imported in MODULES and imported not in seen:
                seen[imported] = current
                todo.append(imported)
            # a parent package's __init__ runs too
            parent = imported.rpartition(".")[0]
            while parent.startswith("splitproxy") and parent in MODULES and parent not in seen:
                seen[parent] = current
                todo.append(parent)
                parent = parent.rpartition(".")[0]
    return seen


def chain(seen: dict[str, str], name: str) -> str:
    links = [name]
    while seen.get(links[-1]):
        links.append(seen[links[-1]])
    return " <- ".join(links)


def _is_impure(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in IMPURE)


PURE = sorted(
    name
    for name in MODULES
    if name in PURE_MODULES or any(name == p or name.startswith(p + ".") for p in PURE_PACKAGES)
)


def test_the_pure_modules_exist() -> None:
    missing = [m for m in PURE_MODULES if m not in MODULES]
    assert not missing, f"renamed or removed; update the contract: {missing}"
    assert any(name.startswith("splitproxy.config.") for name in PURE)


@pytest.mark.parametrize("name", PURE)
def test_pure_core_does_no_io_and_reads_no_clock(name: str) -> None:
    seen = reachable(name)
    offences = [
        f"{chain(seen, module)} imports {imported}"
        for module in seen
        for imported in sorted(imports_of(module))
        if _is_impure(imported)
    ]
    assert not offences, "\n".join(offences)


def test_pure_core_imports_no_event_loop_at_run_time() -> None:
    heavy = ("asyncio", "aiohttp", "uvloop", "httptools", "prometheus_client", "watchfiles")
    code = (
        "import importlib, sys\n"
        f"for name in {PURE!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_the_data_path_never_imports_the_rollout_controller() -> None:
    for name in MODULES:
        if not name.startswith("splitproxy.dataplane"):
            continue
        seen = reachable(name)
        for module in seen:
            assert not module.startswith("splitproxy.rollout.controller"), chain(seen, module)


def test_only_the_composition_root_and_the_cli_read_settings() -> None:
    readers = sorted(name for name in MODULES if "splitproxy.settings" in imports_of(name))
    assert set(readers) <= {"splitproxy.server", "splitproxy.cli"}, readers


def test_imports_point_down_from_the_core() -> None:
    """config imports nothing of splitproxy but itself and errors; the core never imports ops."""
    ops = {
        f"splitproxy.{m}"
        for m in ("admin", "reload", "server", "settings", "cli", "console", "metrics", "logs")
    }
    for name in PURE:
        seen = reachable(name)
        assert not (set(seen) & ops), [chain(seen, m) for m in set(seen) & ops]
        if name.startswith("splitproxy.config"):
            outside = {
                m
                for m in seen
                if m.startswith("splitproxy.")
                and not m.startswith("splitproxy.config")
                and m not in {"splitproxy.errors", "splitproxy"}
            }
            assert not outside, [chain(seen, m) for m in outside]


MAX_MODULE_LINES = 600


def test_no_module_grows_past_600_lines() -> None:
    """Small modules with one job each: a module past the limit is split along its seams."""
    too_long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}
