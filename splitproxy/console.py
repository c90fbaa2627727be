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
    for column in ("route", "stable", "candidate", "weight", "set by", "rollout"):
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
            rollout_cell(route.get("rollout")),
        )
    rollouts = status.get("rollouts")
    if rollouts and not rollouts.get("persistent"):
        table.caption = "rollout state is in memory only (no --state-dir)"
    return table


def rollout_cell(rollout: dict[str, Any] | None) -> str:
    """The phase, then ``step 2/4``, then what it waits for or why it is paused."""
    if not rollout:
        return "-"
    phase = rollout["phase"]
    if phase == "idle":
        return "idle"
    lines = [phase, f"step {rollout['step']}/{rollout['steps']}"]
    why = rollout.get("waiting_for") or rollout.get("paused_reason")
    if why:
        lines.append(str(why))
    return "\n".join(lines)


def _backend(b: dict[str, Any]) -> str:
    urls = ", ".join(b["urls"])
    return f"{urls} ({b['revision']})" if b.get("revision") else urls


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(status_table(status))
