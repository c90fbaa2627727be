"""Terminal rendering of a proxy's status and of a rollout as it happens.

Everything here takes the admin API's JSON (``GET /api/v1/status``, a route view of
``GET /api/v1/routes/{name}``, a ledger event of ``GET /api/v1/events``) and returns rich
renderables or plain lines, so ``splitproxy status``, ``splitproxy status --watch`` and the
demo's live view show the same numbers the API gives. `watch_status` is the only part that
does IO: it refreshes the status in a terminal until Ctrl-C. The text of checks and ledger
events is in `console.evidence`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, cast

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from splitproxy.console.abtest import ab_lines
from splitproxy.console.bluegreen import (
    bluegreen_of,
    job_text,
    plan_line,
    stage_headline,
    stage_text,
    window_name,
)
from splitproxy.console.evidence import (
    check_bound,
    check_detail,
    check_line,
    check_sample,
    check_value,
    checks_table,
    clock,
    e_value,
    event_lines,
    lower_bound,
    ms,
    pct,
    weight,
)
from splitproxy.views import (
    BackendView,
    CheckView,
    RolloutView,
    RouteView,
    ShadowView,
    StatusView,
    VersionSummary,
)

# The readers below take the admin API's views and still read every key with .get(): a proxy
# of another version may lack some. A route without a rollout reads as this empty one.
NO_ROLLOUT: Final = cast(RolloutView, {})

# --- a route's rollout ------------------------------------------------------------------------


def steps_line(rollout: RolloutView) -> Text:
    """The plan with the position in it: ``10% ✓ → 25% ● → 50% → promote``."""
    weights: list[float | None] = list(rollout.get("weights") or [])
    current = int(rollout.get("step") or 0)  # 1-based; 0 before the first step
    phase = rollout.get("phase")
    text = Text()
    for i, w in enumerate(weights, start=1):
        label = "pause" if w is None else f"{w:g}%"
        if phase == "promoted" or i < current:
            text.append(f"{label} ✓", style="green")
        elif i == current and phase == "rolled_back":
            text.append(f"{label} ✗", style="bold red")
        elif i == current:
            text.append(f"{label} ●", style="bold cyan")
        else:
            text.append(label, style="dim")
        text.append(" → ", style="dim")
    if phase == "promoted":
        text.append("promoted ✓", style="bold green")
    elif phase == "rolled_back":
        text.append("rolled back", style="bold red")
    else:
        text.append("promote", style="dim")
    return text


def step_needs(
    rollout: RolloutView, needs: tuple[float, int] | None = None
) -> tuple[float, int] | None:
    """``needs`` if given, else the current step's ``interval`` and ``min_requests`` from the
    rollout status (None when it has none: not in a weight step, or an older proxy)."""
    if needs is not None:
        return needs
    interval, wanted = rollout.get("interval"), rollout.get("min_requests")
    if isinstance(interval, int | float) and isinstance(wanted, int | float):
        return float(interval), int(wanted)
    return None


def step_progress(
    rollout: RolloutView,
    now: float,
    needs: tuple[float, int] | None = None,
    width: int = 30,
) -> RenderableType:
    """How far the current step's window is: its time and its candidate requests, and a bar
    that is full when both the step's ``interval`` and ``min_requests`` are met (the step is
    then judged). Those come from ``needs`` or, without it, from the rollout status."""
    window = rollout.get("window") or {}
    start = window.get("start")
    elapsed = max(0.0, now - float(start)) if start else 0.0
    requests = int(window.get("requests") or 0)
    needs = step_needs(rollout, needs)
    line = Table.grid(padding=(0, 1))
    if needs is None:
        line.add_row(Text(f"window {elapsed:.1f}s, {requests} candidate requests"))
        return line
    interval, min_requests = needs
    time_done = min(1.0, elapsed / interval) if interval > 0 else 1.0
    req_done = min(1.0, requests / min_requests) if min_requests > 0 else 1.0
    done = min(time_done, req_done)
    bar = ProgressBar(total=1.0, completed=done, width=width)
    name = f"step {rollout.get('step', '?')}"
    label = _window_label(rollout, elapsed, requests, needs)
    named = window_name(rollout)
    if named is not None:
        name = named[0]
    line.add_row(Text(name), bar, Text(label))
    return line


def _window_label(
    rollout: RolloutView, elapsed: float, requests: int, needs: tuple[float, int]
) -> str:
    """``2.0/4s, 30/40 candidate requests``; blue/green: test requests before the switch,
    the bake's time only after it."""
    interval, min_requests = needs
    named = window_name(rollout)
    what = "candidate requests" if named is None else named[1]
    label = f"{min(elapsed, interval):.1f}/{interval:g}s"
    if what:
        label += f", {min(requests, min_requests)}/{min_requests} {what}"
    return label


def _per_version(
    route: RouteView,
) -> list[tuple[str, BackendView | None, VersionSummary | None]]:
    """Each version with its backend and its traffic in the route view (None: not there)."""
    traffic = route.get("traffic")
    return [
        ("stable", route.get("stable"), traffic.get("stable") if traffic else None),
        ("candidate", route.get("candidate"), traffic.get("candidate") if traffic else None),
    ]


def traffic_table(route: RouteView) -> Table:
    """Per version: its share (the weight), rate, error rate, p50 and p99 of the recent
    window the route view summarizes."""
    traffic = route.get("traffic")
    span = traffic.get("window_seconds") if traffic else None
    title = f"traffic, last {span:.3g}s" if isinstance(span, int | float) else "traffic"
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in ("version", "weight", "req/s", "requests", "errors", "p50", "p99"):
        table.add_column(column, justify="left" if column == "version" else "right")
    weights = route.get("weight")
    effective = float(weights.get("effective") or 0.0) if weights else 0.0
    shares = {"stable": 100.0 - effective, "candidate": effective}
    for version, backend, t in _per_version(route):
        if backend is None:
            continue
        latency = t.get("latency_ms") if t else None
        label = version + (f" {backend['revision']}" if backend.get("revision") else "")
        error_rate = t.get("error_rate") if t else None
        table.add_row(
            label,
            f"{shares[version]:g}%" if route.get("candidate") else "100%",
            f"{t.get('rate', 0.0) if t else 0.0:.1f}",
            str(t.get("requests", 0) if t else 0),
            Text(pct(error_rate, 2), style="red" if error_rate else ""),
            ms(latency.get("p50") if latency else None),
            ms(latency.get("p99") if latency else None),
        )
    return table


def progress_line(
    route: RouteView,
    now: float,
    origin: float | None = None,
    needs: tuple[float, int] | None = None,
) -> Text:
    """The rollout's progress on one line, for a log: the step and its window (against
    ``needs``, or the step's own from the status), then each version's error rate and p99
    over the route view's recent window."""
    rollout = route.get("rollout") or NO_ROLLOUT
    needs = step_needs(rollout, needs)
    when = clock(now, origin)
    line = Text()
    line.append(f"{when}  ", style="dim")
    line.append(f"{'progress':<12}")
    window = rollout.get("window") or {}
    start = window.get("start")
    elapsed = max(0.0, now - float(start)) if start else 0.0
    requests = int(window.get("requests") or 0)
    named = window_name(rollout)
    where = (
        f"step {rollout.get('step', '?')}/{rollout.get('steps', '?')}"
        if named is None
        else named[0]
    )
    line.append(f" {where} at {weight(rollout.get('weight'))}: ")
    if named is not None and rollout.get("phase") == "waiting":
        line.append(stage_text(rollout, now))
    elif needs is not None:
        line.append(_window_label(rollout, elapsed, requests, needs))
    else:
        line.append(f"window {elapsed:.1f}s, {requests} candidate requests")
    for version, _, t in _per_version(route):
        if not t:
            continue
        latency = t.get("latency_ms")
        p99 = latency.get("p99") if latency else None
        line.append(f" · {version} {pct(t.get('error_rate'), 1)} errors, p99 {ms(p99)}")
    return line


PHASE_STYLE = {
    "idle": "dim",
    "progressing": "bold cyan",
    "waiting": "bold yellow",
    "paused": "bold yellow",
    "promoted": "bold green",
    "rolled_back": "bold red",
}


def shadow_progress(shadow: ShadowView | None) -> str:
    """``: 230 of 500 copies, 45s of 300s, 0.4% diverged`` while the shadow mirrors."""
    if not shadow or shadow.get("stage") != "mirroring":
        return ""
    elapsed = float(shadow.get("elapsed") or 0.0)
    parts = [
        f"{shadow.get('mirrored', 0)} of {shadow.get('min_requests', 0)} copies",
        f"{elapsed:.0f}s of {float(shadow.get('duration') or 0):g}s",
    ]
    divergence = shadow.get("divergence")
    if divergence is not None:
        parts.append(f"{divergence * 100:.1f}% diverged")
    return ": " + ", ".join(parts)


def rollout_headline(route: RouteView, now: float | None = None) -> Text:
    """``demo 1.1: progressing, step 2 of 3, candidate at 25% (1 of 0 failures)``; blue/green:
    ``demo 1.1: progressing, blue/green: baking, 12s of 30s left (...)`` as of ``now``."""
    rollout = route.get("rollout") or NO_ROLLOUT
    phase = str(rollout.get("phase", "?"))
    text = Text()
    text.append(f"{route.get('name', '?')} {rollout.get('revision') or ''}".rstrip() + ": ")
    text.append(phase.replace("_", " "), style=PHASE_STYLE.get(phase, "bold"))
    bluegreen = bluegreen_of(rollout) is not None
    if bluegreen and phase != "idle":
        text.append(", blue/green: ")
        text.append(stage_headline(rollout, time.time() if now is None else now))
    elif phase != "idle":
        text.append(
            f", step {rollout.get('step', '?')} of {rollout.get('steps', '?')}, "
            f"candidate at {weight(rollout.get('weight'))}"
        )
    why = rollout.get("waiting_for") or rollout.get("paused_reason")
    if bluegreen and phase == "waiting":
        why = None  # the stage says what the switch waits for
    if why and phase in ("waiting", "paused"):
        gate = rollout.get("gate") if phase == "waiting" else None
        attempts = int(gate.get("attempts") or 0) if isinstance(gate, dict) else 0
        asked = f", closed {attempts}×" if attempts else ""
        if why == "shadow" and phase == "waiting":
            asked = shadow_progress(rollout.get("shadow"))
        text.append(f" ({'waiting for' if phase == 'waiting' else 'paused:'} {why}{asked})")
    deadline = rollout.get("progress_deadline")
    if isinstance(deadline, dict) and phase != "idle" and deadline.get("ready_at") is None:
        spent, limit = float(deadline.get("spent") or 0), float(deadline.get("limit") or 0)
        text.append(f", not ready for {spent:.0f}s of {limit:g}s allowed", style="yellow")
    failures = rollout.get("failures")
    if failures:
        text.append(
            f", {failures} failed window(s), {rollout.get('failure_limit', 0)} tolerated",
            style="yellow",
        )
    return text


def decision_checks(rollout: RolloutView) -> list[CheckView]:
    """The evidence of a finished rollout's decision (its checks stop once it has ended):
    the checks of the newest ``promoted``/``rolled_back`` event in the route's history."""
    phase = rollout.get("phase")
    for event in reversed(rollout.get("history") or []):
        if event.get("kind") == phase:
            return list(event.get("checks") or [])
    return []


def rollout_panel(
    route: RouteView,
    now: float,
    needs: tuple[float, int] | None = None,
    title: str | None = None,
    width: int | None = 100,
) -> Panel:
    """A route's rollout at a glance: phase and plan, the step's progress, traffic per
    version, and the checks of the latest tick (for a finished rollout, those its decision
    was made on). ``route`` is a route view of the admin API; ``needs`` the current step's
    ``interval`` and ``min_requests`` (default: those the status gives); ``width`` at most
    (the terminal's, if narrower)."""
    rollout = route.get("rollout") or NO_ROLLOUT
    bluegreen = bluegreen_of(rollout) is not None
    plan = plan_line(rollout) if bluegreen else steps_line(rollout)
    parts: list[RenderableType] = [rollout_headline(route, now), plan]
    if rollout.get("phase") in ("progressing", "waiting", "paused"):
        parts.append(step_progress(rollout, now, needs))
    job = job_text(rollout)
    if job:
        parts.append(Text(job, style="dim"))
    parts.extend(ab_lines(rollout))  # an A/B test's verdict and counts (console/abtest.py)
    parts.append(Text())
    parts.append(traffic_table(route))
    checks = rollout.get("checks") or []
    caption = "checks, latest tick"
    if not checks and rollout.get("phase") in ("promoted", "rolled_back"):
        checks = decision_checks(rollout)
        caption = "checks at the decision"
    if checks:
        parts.append(Text())
        parts.append(Text(caption, style="italic"))
        parts.append(checks_table(checks))
    return Panel(Group(*parts), title=title or f"rollout of {route.get('name', '?')}", width=width)


# --- the status table -------------------------------------------------------------------------


def status_table(status: StatusView) -> Table:
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
        w = route["weight"]
        table.add_row(
            route["name"],
            _backend(stable),
            _backend(cand) if cand else "-",
            f"{w['effective']:g}%" if cand else "-",
            w["source"],
            rollout_cell(route.get("rollout")),
        )
    rollouts = status.get("rollouts")
    if rollouts and not rollouts.get("persistent"):
        table.caption = "rollout state is in memory only (no --state-dir)"
    return table


def rollout_cell(rollout: RolloutView | None) -> str:
    """The phase, then ``step 2/4`` with the plan's weights, then what it waits for or why
    it is paused."""
    if not rollout:
        return "-"
    phase = rollout["phase"]
    if phase == "idle":
        return "idle"
    if bluegreen_of(rollout) is not None:
        lines = [f"{phase} (blue/green)", stage_text(rollout, time.time())]
        if phase == "paused" and rollout.get("paused_reason"):
            lines.append(str(rollout.get("paused_reason")))
        return "\n".join(line for line in [*lines, job_text(rollout)] if line)
    lines = [phase, f"step {rollout['step']}/{rollout['steps']}"]
    weights = rollout.get("weights")
    if weights:
        current = int(rollout.get("step") or 0)
        marked = [
            ("pause" if w is None else f"{w:g}%") + ("*" if i == current else "")
            for i, w in enumerate(weights, start=1)
        ]
        lines[-1] += f" ({' '.join(marked)})"
    why = rollout.get("waiting_for") or rollout.get("paused_reason")
    if why:
        lines.append(str(why))
    return "\n".join(lines)


def _backend(b: BackendView) -> str:
    urls = ", ".join(b["urls"])
    return f"{urls} ({b['revision']})" if b.get("revision") else urls


def print_status(status: StatusView, console: Console | None = None, *, wide: bool = False) -> None:
    """The status table in a terminal; piped (or ``wide``), plain lines that no column width
    cuts: one block per route, ``key: value``, for grep and for logs."""
    console = console or Console()
    more = more_routes(status)
    if console.is_terminal and not wide:
        console.print(status_table(status))
        if more:
            console.print(more)
        return
    for line in status_lines(status):
        print(line)
    if more:
        print(more)


def more_routes(status: StatusView) -> str | None:
    """A line saying the answer holds one page of the routes (a config over 1,000 routes),
    and how to see the others; None when it holds them all."""
    total = status.get("route_count")
    shown = len(status.get("routes", []))
    if total is None or total <= shown:
        return None
    page = status.get("page")
    first = page["offset"] + 1 if page else 1
    return (
        f"routes {first}-{first + shown - 1} of {total} shown: GET /api/v1/status?offset=N"
        "&limit=N (or ?route=NAME-PART) for the others, /api/v1/routes/NAME for one"
    )


def status_lines(status: StatusView) -> list[str]:
    """The status as plain lines, nothing folded or cut."""
    config = status.get("config", {})
    out = [f"splitproxy {status.get('version', '')} config {config.get('revision', '?')}"]
    for route in status.get("routes", []):
        cand = route.get("candidate")
        w = route["weight"]
        weight = f"{w['effective']:g}% (set by {w['source']})" if cand else "-"
        rollout = rollout_cell(route.get("rollout")).replace("\n", "; ")
        out += [
            f"route {route['name']}",
            f"  stable: {_backend(route['stable'])}",
            f"  candidate: {_backend(cand) if cand else '-'}",
            f"  weight: {weight}",
            f"  rollout: {rollout}",
        ]
    rollouts = status.get("rollouts")
    if rollouts and not rollouts.get("persistent"):
        out.append("rollout state is in memory only (no --state-dir)")
    return out


def watch_view(status: StatusView, now: float) -> Group:
    """What ``status --watch`` shows: the table, then a panel per route whose rollout is not
    idle (its plan, step window, traffic per version and checks)."""
    parts: list[RenderableType] = [status_table(status)]
    for route in status.get("routes", []):
        rollout = route.get("rollout")
        if rollout and rollout.get("phase") != "idle":
            parts.append(rollout_panel(route, now))
    return Group(*parts)


# --- status --watch ---------------------------------------------------------------------------

# Fetches the status: the decoded JSON, or a message saying why it could not.
StatusFetch = Callable[[], tuple[StatusView | None, str | None]]


def watch_status(
    fetch: StatusFetch,
    interval: float = 1.0,
    console: Console | None = None,
    *,
    refreshes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh the status in place until Ctrl-C (0); a terminal is needed for that, so
    elsewhere print one snapshot (0, or 1 when the proxy cannot be reached).
    ``refreshes`` bounds the loop (tests)."""
    console = console or Console()
    if not console.is_terminal:
        status, error = fetch()
        if status is None:
            console.print(error or "no status", style="red", soft_wrap=True)
            return 1
        console.print(watch_view(status, time.time()))
        return 0
    last: StatusView | None = None
    done = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while refreshes is None or done < refreshes:
                status, error = fetch()
                last = status if status is not None else last
                # the line first: a view taller than the terminal is cut at the bottom
                stamp = time.strftime("%H:%M:%S")
                parts: list[RenderableType] = [
                    Text(f"{stamp} {error} (retrying)", style="bold red")
                    if error
                    else Text(f"{stamp} · every {interval:g}s · Ctrl-C stops", style="dim")
                ]
                if last is not None:
                    parts.append(watch_view(last, time.time()))
                live.update(Group(*parts), refresh=True)
                done += 1
                if refreshes is None or done < refreshes:
                    sleep(interval)
    except KeyboardInterrupt:
        pass
    return 0


__all__ = [
    "NO_ROLLOUT",
    "StatusFetch",
    "check_bound",
    "check_detail",
    "check_line",
    "check_sample",
    "check_value",
    "checks_table",
    "clock",
    "decision_checks",
    "e_value",
    "event_lines",
    "lower_bound",
    "ms",
    "pct",
    "print_status",
    "progress_line",
    "rollout_cell",
    "rollout_headline",
    "rollout_panel",
    "status_table",
    "step_needs",
    "step_progress",
    "steps_line",
    "traffic_table",
    "watch_status",
    "watch_view",
    "weight",
]
