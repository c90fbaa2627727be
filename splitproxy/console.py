"""Terminal rendering of a proxy's status (pure: data in, rich renderables out)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def status_table(status: dict[str, Any]) -> Table:
    """A table of routes: backends, revisions and the weight with who set it."""
    config = status.get("config", {})
    table = Table(
        title=f"splitproxy {status.get('version', '')} · config {config.get('revision', '?')}"
    )
    for column in ("route", "stable", "candidate", "weight", "set by"):
        table.add_column(column)
    for route in status.get("routes", []):
        stable = route["stable"]
        cand = route.get("candidate")
        weight = route["weight"]
        table.add_row(
            route["name"],
            _backend(stable),
            _backend(cand) if cand else "-",
            f"{weight['effective']:g}%" if cand else "-",
            weight["source"],
        )
    return table


def _backend(b: dict[str, Any]) -> str:
    urls = ", ".join(b["urls"])
    return f"{urls} ({b['revision']})" if b.get("revision") else urls


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(status_table(status))
