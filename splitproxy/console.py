"""Terminal rendering of a proxy's status and of a rollout as it happens.

Everything here takes the admin API's JSON (``GET /api/v1/status``, a route view of
``GET /api/v1/routes/{name}``, a ledger event of ``GET /api/v1/events``) and returns rich
renderables or plain lines, so ``splitproxy status``, ``splitproxy status --watch`` and the
demo's live view show the same numbers the API gives. `watch_status` is the only part that
does IO: it refreshes the status in a terminal until Ctrl-C.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

# --- numbers ----------------------------------------------------------------------------------


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.0123`` -> ``1.2%``; None -> ``-``."""
    if value is None:
        return "-"
    return f"{value * 100:.{digits}f}%"


def ms(value: float | None) -> str:
    """Milliseconds, with a precision that suits the size: ``1.23ms``, ``204ms``."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}ms"
    if value >= 10:
        return f"{value:.1f}ms"
    return f"{value:.2f}ms"


def e_value(value: float | None) -> str:
    """An e-value: ``e=0.84``, ``e=1.2e+03``; None (overwhelming) -> ``e=inf``."""
    if value is None or math.isinf(value):
        return "e=inf"
    return f"e={value:.3g}"


def weight(value: float | None) -> str:
    return "file" if value is None else f"{value:g}%"


# --- checks -----------------------------------------------------------------------------------

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "no_data": "dim"}
VERDICT_MARK = {"pass": "✓", "fail": "✗", "no_data": "·"}


# the analyzer's units (`messages.Unit`) as they read here
UNITS = {"fraction": "rate", "seconds": "seconds", "per_second": "rps", "e_value": "e"}


def _metric_unit(metric: str) -> str:
    if metric in ("error_rate", "success_rate"):
        return "rate"
    if metric.startswith("latency_"):
        return "seconds"
    if metric == "request_rate":
        return "rps"
    return "plain"


def _unit(check: Mapping[str, Any]) -> str:
    """How a check's value reads: ``rate``, ``seconds``, ``rps``, ``e`` or plain: by the
    ``unit`` (or ``metric``) the analyzer gives, so a check renamed with ``name:`` still reads
    in its metric's unit; evidence recorded before checks carried them goes by the name."""
    unit = check.get("unit")
    if unit is not None:
        return UNITS.get(str(unit), "plain")
    if check.get("kind") in ("compare", "guard"):
        return "e"
    if check.get("kind") != "threshold":
        return "plain"
    metric = check.get("metric")
    return _metric_unit(str(metric if metric is not None else check.get("name", "")))


def _fmt(value: float | None, unit: str) -> str:
    if unit == "e":
        return e_value(value)
    if value is None:
        return "-"
    if unit == "rate":
        return pct(value, 2)
    if unit == "seconds":
        return ms(value * 1000)
    if unit == "rps":
        return f"{value:.3g}/s"
    return f"{value:.4g}"


def check_value(check: Mapping[str, Any]) -> str:
    """The check's value as it reads best: a rate, a latency, an e-value."""
    if check.get("verdict") == "no_data" and check.get("value") is None:
        return "no data"
    return _fmt(check.get("value"), _unit(check))


def check_bound(check: Mapping[str, Any]) -> str:
    """The threshold: ``max 2.00%``, ``min 1``; for a statistical test, the e-value at which it
    fails (``rolls back at e≥222``)."""
    unit = _unit(check)
    low, high = check.get("min"), check.get("max")
    if unit == "e":
        return "fails at " + ("e=inf" if high is None else f"e≥{high:.4g}")
    parts = []
    if low is not None:
        parts.append(f"min {_fmt(low, unit)}")
    if high is not None:
        parts.append(f"max {_fmt(high, unit)}")
    return ", ".join(parts) or "-"


def check_sample(check: Mapping[str, Any]) -> str:
    """The sample size: requests in the step window, or events seen by a comparison."""
    n = int(check.get("sample") or 0)
    if check.get("kind") == "compare":
        return f"{n} event" + ("" if n == 1 else "s")
    if check.get("kind") == "external":
        return f"{n} reading" + ("" if n == 1 else "s")
    return f"n={n}"


def lower_bound(value: float) -> str:
    """A ratio's lower confidence bound, rounded down (two significant digits, more when it
    takes them to stay above 1, since a bound above 1 is what a rollback rests on)."""
    if value <= 0 or not math.isfinite(value):
        return "0" if value <= 0 else "inf"
    for digits in (2, 3, 4):
        scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
        shown = math.floor(value * scale * (1 + 1e-12)) / scale  # 0.29 stays 0.29
        if shown > 1 or value <= 1:
            return f"{shown:.{digits}g}"
    return ">1"


def check_detail(check: Mapping[str, Any]) -> str:
    """The detail the analyzer gave, and the confidence interval of a comparison's ratio
    (one-sided, ``[lower, inf]``, as the analyzer reports it now)."""
    parts = [str(check["detail"])] if check.get("detail") else []
    ci = check.get("ci")
    if ci:
        low, high = ci
        lo = "0" if low is None else lower_bound(float(low))
        hi = "inf" if high is None else f"{high:.2g}"
        parts.append(f"ratio to stable in [{lo}, {hi}]")
    return "; ".join(parts)


def check_line(check: Mapping[str, Any]) -> Text:
    """One check on one line: mark, name, value, threshold, sample, verdict, detail."""
    verdict = str(check.get("verdict", "no_data"))
    style = VERDICT_STYLE.get(verdict, "")
    line = Text()
    line.append(f"{VERDICT_MARK.get(verdict, '?')} ", style=style)
    line.append(f"{check.get('name', '?'):<22} ")
    line.append(f"{check_value(check):>10}  ")
    line.append(f"{check_bound(check):<22} ", style="dim")
    line.append(f"{check_sample(check):>11}  ")
    line.append(verdict, style=style)
    detail = check_detail(check)
    if detail:
        line.append(f"  ({detail})", style="dim")
    return line


def checks_table(checks: Sequence[Mapping[str, Any]]) -> Table:
    """The checks of the latest tick, one row each."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("check", "value", "threshold", "sample", "verdict"):
        table.add_column(column, justify="right" if column in ("value", "sample") else "left")
    for check in checks:
        verdict = str(check.get("verdict", "no_data"))
        table.add_row(
            str(check.get("name", "?")),
            check_value(check),
            check_bound(check),
            check_sample(check),
            Text(
                f"{VERDICT_MARK.get(verdict, '?')} {verdict}", style=VERDICT_STYLE.get(verdict, "")
            ),
        )
    return table


# --- decisions --------------------------------------------------------------------------------

KIND_STYLE = {
    "started": "bold cyan",
    "restarted": "bold cyan",
    "retried": "bold cyan",
    "step": "cyan",
    "waiting": "yellow",
    "proceeded": "cyan",
    "gate_closed": "yellow",
    "check_failed": "bold yellow",
    "paused": "bold yellow",
    "resumed": "cyan",
    "promoted": "bold green",
    "rolled_back": "bold red",
    "refused": "yellow",
    "abandoned": "yellow",
    "restored": "cyan",
    "state_restored": "cyan",
}


def clock(at: float, origin: float | None = None) -> str:
    """``+12.3s`` after ``origin``, or the local clock time without one."""
    if origin is not None:
        return f"+{at - origin:.1f}s".rjust(7)
    return time.strftime("%H:%M:%S", time.localtime(at))


def event_lines(event: Mapping[str, Any], origin: float | None = None) -> list[Text]:
    """A ledger event with its evidence: a headline (when, what, the step and weight, the
    phase when it changed, why), then one line per check as judged on that tick. ``origin``:
    show the time as ``+12.3s`` after it (otherwise the local clock time)."""
    when = clock(float(event.get("at") or 0.0), origin)
    kind = str(event.get("kind", "?"))
    phase = str(event.get("phase", "?"))
    head = Text()
    head.append(f"{when}  ", style="dim")
    head.append(f"{kind:<12}", style=KIND_STYLE.get(kind, "bold"))
    step = int(event.get("step") or 0)
    where = []
    if step:
        where.append(f"step {step} at {weight(event.get('weight'))}")
    if phase != kind and event.get("previous") != phase:
        where.append(f"now {phase}")
    if where:
        head.append(" " + ", ".join(where))
    message = event.get("message")
    if message:
        head.append(f": {message}" if where else f" {message}")
    source = event.get("source")
    if source and source != "analyzer":
        head.append(f" [{source}]", style="dim")
    lines = [head]
    for check in event.get("checks") or ():
        line = Text(" " * (len(when) + 4))
        line.append_text(check_line(check))
        lines.append(line)
    return lines


# --- a route's rollout ------------------------------------------------------------------------


def steps_line(rollout: Mapping[str, Any]) -> Text:
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
    rollout: Mapping[str, Any], needs: tuple[float, int] | None = None
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
    rollout: Mapping[str, Any],
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
    label = (
        f"{min(elapsed, interval):.1f}/{interval:g}s, "
        f"{min(requests, min_requests)}/{min_requests} candidate requests"
    )
    line.add_row(Text(f"step {rollout.get('step', '?')}"), bar, Text(label))
    return line


def traffic_table(route: Mapping[str, Any]) -> Table:
    """Per version: its share (the weight), rate, error rate, p50 and p99 of the recent
    window the route view summarizes."""
    traffic = route.get("traffic") or {}
    span = traffic.get("window_seconds")
    title = f"traffic, last {span:.3g}s" if isinstance(span, int | float) else "traffic"
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in ("version", "weight", "req/s", "requests", "errors", "p50", "p99"):
        table.add_column(column, justify="left" if column == "version" else "right")
    effective = float((route.get("weight") or {}).get("effective") or 0.0)
    shares = {"stable": 100.0 - effective, "candidate": effective}
    for version in ("stable", "candidate"):
        backend = route.get(version)
        if backend is None:
            continue
        t = traffic.get(version) or {}
        latency = t.get("latency_ms") or {}
        label = version + (f" {backend['revision']}" if backend.get("revision") else "")
        error_rate = t.get("error_rate")
        table.add_row(
            label,
            f"{shares[version]:g}%" if route.get("candidate") else "100%",
            f"{t.get('rate', 0.0):.1f}",
            str(t.get("requests", 0)),
            Text(pct(error_rate, 2), style="red" if error_rate else ""),
            ms(latency.get("p50")),
            ms(latency.get("p99")),
        )
    return table


def progress_line(
    route: Mapping[str, Any],
    now: float,
    origin: float | None = None,
    needs: tuple[float, int] | None = None,
) -> Text:
    """The rollout's progress on one line, for a log: the step and its window (against
    ``needs``, or the step's own from the status), then each version's error rate and p99
    over the route view's recent window."""
    rollout = route.get("rollout") or {}
    needs = step_needs(rollout, needs)
    when = clock(now, origin)
    line = Text()
    line.append(f"{when}  ", style="dim")
    line.append(f"{'progress':<12}")
    window = rollout.get("window") or {}
    start = window.get("start")
    elapsed = max(0.0, now - float(start)) if start else 0.0
    requests = int(window.get("requests") or 0)
    line.append(
        f" step {rollout.get('step', '?')}/{rollout.get('steps', '?')} at "
        f"{weight(rollout.get('weight'))}: "
    )
    if needs is not None:
        interval, min_requests = needs
        line.append(
            f"{min(elapsed, interval):.1f}/{interval:g}s, "
            f"{min(requests, min_requests)}/{min_requests} candidate requests"
        )
    else:
        line.append(f"window {elapsed:.1f}s, {requests} candidate requests")
    traffic = route.get("traffic") or {}
    for version in ("stable", "candidate"):
        t = traffic.get(version)
        if not t:
            continue
        p99 = (t.get("latency_ms") or {}).get("p99")
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


def rollout_headline(route: Mapping[str, Any]) -> Text:
    """``demo 1.1: progressing, step 2 of 3, candidate at 25% (1 of 0 failures)``."""
    rollout = route.get("rollout") or {}
    phase = str(rollout.get("phase", "?"))
    text = Text()
    text.append(f"{route.get('name', '?')} {rollout.get('revision') or ''}".rstrip() + ": ")
    text.append(phase.replace("_", " "), style=PHASE_STYLE.get(phase, "bold"))
    if phase != "idle":
        text.append(
            f", step {rollout.get('step', '?')} of {rollout.get('steps', '?')}, "
            f"candidate at {weight(rollout.get('weight'))}"
        )
    why = rollout.get("waiting_for") or rollout.get("paused_reason")
    if why and phase in ("waiting", "paused"):
        gate = rollout.get("gate") if phase == "waiting" else None
        attempts = int(gate.get("attempts") or 0) if isinstance(gate, Mapping) else 0
        asked = f", closed {attempts}×" if attempts else ""
        text.append(f" ({'waiting for' if phase == 'waiting' else 'paused:'} {why}{asked})")
    failures = rollout.get("failures")
    if failures:
        text.append(
            f", {failures} failed window(s), {rollout.get('failure_limit', 0)} tolerated",
            style="yellow",
        )
    return text


def decision_checks(rollout: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The evidence of a finished rollout's decision (its checks stop once it has ended):
    the checks of the newest ``promoted``/``rolled_back`` event in the route's history."""
    phase = rollout.get("phase")
    for event in reversed(rollout.get("history") or []):
        if event.get("kind") == phase:
            return list(event.get("checks") or [])
    return []


def rollout_panel(
    route: Mapping[str, Any],
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
    rollout = route.get("rollout") or {}
    parts: list[RenderableType] = [rollout_headline(route), steps_line(rollout)]
    if rollout.get("phase") in ("progressing", "waiting", "paused"):
        parts.append(step_progress(rollout, now, needs))
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


def status_table(status: Mapping[str, Any]) -> Table:
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


def rollout_cell(rollout: Mapping[str, Any] | None) -> str:
    """The phase, then ``step 2/4`` with the plan's weights, then what it waits for or why
    it is paused."""
    if not rollout:
        return "-"
    phase = rollout["phase"]
    if phase == "idle":
        return "idle"
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


def _backend(b: Mapping[str, Any]) -> str:
    urls = ", ".join(b["urls"])
    return f"{urls} ({b['revision']})" if b.get("revision") else urls


def print_status(status: Mapping[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(status_table(status))


def watch_view(status: Mapping[str, Any], now: float) -> Group:
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
StatusFetch = Callable[[], tuple[Mapping[str, Any] | None, str | None]]


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
    last: Mapping[str, Any] | None = None
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
