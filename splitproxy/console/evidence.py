"""The analyzer's evidence as text: numbers in the unit they read best, checks one to a line
or a table, and ledger events with the checks they rest on."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from splitproxy.views import CheckView, EventView

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


def _unit(check: CheckView) -> str:
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


def check_value(check: CheckView) -> str:
    """The check's value as it reads best: a rate, a latency, an e-value."""
    if check.get("verdict") == "no_data" and check.get("value") is None:
        return "no data"
    return _fmt(check.get("value"), _unit(check))


def check_bound(check: CheckView) -> str:
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


def check_sample(check: CheckView) -> str:
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


def check_detail(check: CheckView) -> str:
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


def check_line(check: CheckView) -> Text:
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


def checks_table(checks: Sequence[CheckView]) -> Table:
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


def event_lines(event: EventView, origin: float | None = None) -> list[Text]:
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
