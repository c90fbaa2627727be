"""A blue/green rollout in the terminal: where it stands relative to the switch, and its test job.

The readers take the route status's ``rollout`` (``GET /api/v1/routes/{name}``) and its
``bluegreen`` part, and return plain strings or rich `Text`; `splitproxy.console` puts them in
the status table, the ``--watch`` panel and the demo's log. Every key is read with ``.get()``:
a proxy of another version may lack some.
"""

from __future__ import annotations

from typing import Any, cast

from rich.text import Text

from splitproxy.views import BlueGreenView, RolloutView

STAGE_STYLE = {
    "idle": "dim",
    "testing": "bold cyan",
    "baking": "bold magenta",
    "promoted": "bold green",
    "rolled_back": "bold red",
    "reverted": "bold red",
}

# what a hold before the switch means, in words
_HOLDS = {
    "readiness": "waiting for the candidate to become ready",
    "test": "waiting for the test job to pass",
    "confirm-promotion": "waiting for the confirm-promotion gate to switch",
    "switch": "waiting for `splitproxy promote` to switch",
    "pause": "at a pause",
}


def bluegreen_of(rollout: RolloutView | None) -> BlueGreenView | None:
    """The rollout's blue/green part (None: a canary, no rollout, or an older proxy)."""
    if not rollout or rollout.get("strategy") != "bluegreen":
        return None
    return rollout.get("bluegreen")


def bake_left(rollout: RolloutView, now: float) -> float | None:
    """Seconds of the bake still to go (None: not baking, or no window start)."""
    bg = bluegreen_of(rollout)
    start = (rollout.get("window") or {}).get("start")
    if bg is None or bg.get("stage") != "baking" or not start or bg.get("bake") is None:
        return None
    return max(0.0, float(bg.get("bake") or 0.0) - max(0.0, now - float(start)))


def stage_text(rollout: RolloutView, now: float) -> str:
    """Where a blue/green rollout stands: ``testing, iteration 1 of 2 (users on stable)``,
    ``waiting for the test job to pass``, ``baking, 12s of 30s left``, ``reverted in the
    bake``, ... (empty for a canary)."""
    bg = bluegreen_of(rollout)
    if bg is None:
        return ""
    stage = str(bg.get("stage") or "?")
    phase = rollout.get("phase")
    iterations = bg.get("iterations") or "?"
    if stage == "testing":
        if phase == "waiting":
            hold = str(rollout.get("waiting_for") or "?")
            return _HOLDS.get(hold, f"waiting for {hold}") + " (users on stable)"
        where = f"iteration {bg.get('iteration') or '?'} of {iterations}"
        if phase == "paused":
            return f"testing, paused at {where} (users on stable)"
        return f"testing, {where} (users on stable)"
    if stage == "baking":
        left = bake_left(rollout, now)
        bake = bg.get("bake")
        of = f" of {bake:g}s" if isinstance(bake, int | float) else ""
        if phase == "paused":
            return "baking, paused (all traffic on the candidate)"
        if left is None:
            return "baking (all traffic on the candidate)"
        return f"baking, {left:.0f}s{of} left (all traffic on the candidate)"
    if stage == "promoted":
        return "promoted: the bake passed"
    if stage == "reverted":
        return "reverted in the bake: all traffic back on stable"
    if stage == "rolled_back":
        return "rolled back before the switch: users never left stable"
    return stage


def plan_line(rollout: RolloutView) -> Text:
    """The blue/green plan with the position in it:
    ``iteration 1 ✓ → iteration 2 ● → switch → bake 30s → promote``."""
    bg = bluegreen_of(rollout) or cast(BlueGreenView, {})
    stage = bg.get("stage")
    iterations = int(bg.get("iterations") or 0)
    current = int(rollout.get("step") or 0)  # 1-based; the bake is iterations + 1
    bake = bg.get("bake")
    labels = [f"iteration {i}" for i in range(1, iterations + 1)]
    labels.append(f"bake {bake:g}s" if isinstance(bake, int | float) else "bake")
    text = Text()
    for i, label in enumerate(labels, start=1):
        if i == iterations + 1:
            switched = current > iterations or stage == "promoted"
            text.append("switch" + (" ✓" if switched else ""), style="green" if switched else "dim")
            text.append(" → ", style="dim")
        if stage == "promoted" or i < current:
            text.append(f"{label} ✓", style="green")
        elif i == current and stage in ("reverted", "rolled_back"):
            text.append(f"{label} ✗", style="bold red")
        elif i == current and stage in ("testing", "baking"):
            text.append(f"{label} ●", style="bold cyan")
        else:
            text.append(label, style="dim")
        text.append(" → ", style="dim")
    if stage == "promoted":
        text.append("promoted ✓", style="bold green")
    elif stage == "reverted":
        text.append("reverted", style="bold red")
    elif stage == "rolled_back":
        text.append("rolled back", style="bold red")
    else:
        text.append("promote", style="dim")
    return text


def job_text(rollout: RolloutView) -> str:
    """The test job: running, or how its last run ended with the last line of its output
    (empty: no test job, or it never ran here)."""
    bg = bluegreen_of(rollout)
    test = bg.get("test") if bg is not None else None
    if bg is None or test is None:
        return ""
    job: dict[str, Any] = dict(bg.get("job") or {})
    parts: list[str] = []
    if job.get("running"):
        parts.append(f"attempt {job.get('attempt', '?')} running")
    last = job.get("last")
    if isinstance(last, dict):
        parts.append(f"last (attempt {last.get('attempt', '?')}): {_outcome(last)}")
    if not parts:
        parts.append("passed" if test.get("passed") else "not run yet")
    return "test job: " + "; ".join(parts)


def _outcome(last: dict[str, Any]) -> str:
    if last.get("timed_out"):
        how = f"timed out after {float(last.get('duration') or 0):.0f}s"
    elif last.get("exit_code") is None:
        how = "could not start"
    else:
        how = f"exit {last.get('exit_code')}"
    verdict = "passed" if last.get("passed") else "failed"
    lines = [line.strip() for line in str(last.get("tail") or "").splitlines() if line.strip()]
    tail = f": {_clip(lines[-1])}" if lines else ""
    return f"{verdict}, {how}{tail}"


def _clip(line: str, width: int = 80) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def window_name(rollout: RolloutView) -> tuple[str, str] | None:
    """What the current step's window is called and what its requests are, for a progress
    line: ``("iteration 1", "test requests")`` or ``("bake", "")`` (None: a canary)."""
    bg = bluegreen_of(rollout)
    if bg is None:
        return None
    iterations = int(bg.get("iterations") or 0)
    step = int(rollout.get("step") or 0)
    if step > iterations:
        return "bake", ""
    return f"iteration {step} of {iterations}", "test requests"


def stage_headline(rollout: RolloutView, now: float) -> Text:
    """The stage styled for a headline (empty for a canary)."""
    bg = bluegreen_of(rollout)
    if bg is None:
        return Text()
    return Text(stage_text(rollout, now), style=STAGE_STYLE.get(str(bg.get("stage")), "bold"))


__all__ = [
    "STAGE_STYLE",
    "bake_left",
    "bluegreen_of",
    "job_text",
    "plan_line",
    "stage_headline",
    "stage_text",
    "window_name",
]
