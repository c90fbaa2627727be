"""An A/B test in the terminal: the verdict on the primary goal and every goal's counts.

The reader takes the route status's ``rollout`` and its ``ab`` part (`views.AbView`) and
returns rich renderables; `splitproxy.console` puts them in the ``--watch`` panel. Every key
is read with ``.get()``: a proxy of another version may lack some.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from splitproxy.views import RolloutView

_OUTCOME = {
    "running": ("running", "bold cyan"),
    "candidate_wins": ("candidate wins", "bold green"),
    "stable_wins": ("stable wins", "bold red"),
    "no_difference": ("no difference", "bold yellow"),
    "srm": ("broken split (sample ratio mismatch)", "bold red"),
}


_FAR = 1000.0  # a lift above +100 000 %


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):+.1f}%"


def _rate(arm: dict[str, Any]) -> str:
    rate = arm.get("rate")
    share = "-" if rate is None else f"{100 * float(rate):.1f}%"
    return f"{arm.get('converted', 0)}/{arm.get('users', 0)} {share}"


def _lift(goal: dict[str, Any]) -> str:
    interval = goal.get("lift_interval")
    if goal.get("lift") is None:
        return "-"
    if not interval:
        return _pct(goal.get("lift"))
    low, high = interval
    # the interval's ends are searched within a ratio of e^±12: that far is "unbounded"
    top = "∞" if high is None or high > _FAR else _pct(high)
    return f"{_pct(goal.get('lift'))} [{_pct(low)}, {top}]"


def ab_lines(rollout: RolloutView) -> list[RenderableType]:
    """The test's lines for the ``--watch`` panel (none for another strategy)."""
    ab: dict[str, Any] | None = rollout.get("ab")  # type: ignore[assignment]
    if rollout.get("strategy") != "ab" or not ab:
        return []
    words, style = _OUTCOME.get(str(ab.get("outcome")), (str(ab.get("outcome")), "bold"))
    head = Text("A/B test: ", style="bold")
    head.append(f"{words} on {ab.get('goal', '?')}", style=style)
    elapsed = float(ab.get("elapsed") or 0.0)
    head.append(
        f", {elapsed:.0f}s in (a winner from {float(ab.get('min_duration') or 0):g}s, "
        f"ends by {float(ab.get('max_duration') or 0):g}s)",
        style="dim",
    )
    users = ab.get("users") or {}
    srm = ab.get("srm_e_value")
    counted = Text(
        f"users: stable {users.get('stable', 0)}, candidate {users.get('candidate', 0)} "
        f"(split {float(ab.get('split') or 0):g}%), SRM e={float(srm or 0):.3g}",
        style="dim",
    )
    if ab.get("untracked"):
        counted.append(f", {ab['untracked']} beyond the table's cap, not counted")
    table = Table(box=None, pad_edge=False)
    for column in ("goal", "stable", "candidate", "lift [interval]", "e-value", "value (s/c)"):
        table.add_column(column)
    for goal in ab.get("goals") or []:
        stable, candidate = goal.get("stable") or {}, goal.get("candidate") or {}
        e = goal.get("e_value")
        table.add_row(
            str(goal.get("name")) + (" *" if goal.get("primary") else ""),
            _rate(stable),
            _rate(candidate),
            _lift(goal),
            "inf" if e is None else f"{float(e):.3g}",
            f"{float(stable.get('value') or 0):g}/{float(candidate.get('value') or 0):g}",
        )
    return [head, Text(str(ab.get("reason", "")), style="dim"), counted, table]


__all__ = ["ab_lines"]
