"""What the demo's rollout scenarios share: the upstreams, the client and the live view.

`Traffic` is the demo's client (steady traffic through the proxy, each answer tallied under
the weight in force when it was sent); `LiveView` (a terminal) and `LogView` (a pipe, CI) show
the decisions as they happen and the rollout's progress; `follow` drives them until the
rollout ends or the deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import aiohttp
from aiohttp import web
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from splitproxy.admin import route_view, version_summary
from splitproxy.console import NO_ROLLOUT, event_lines, progress_line, rollout_panel
from splitproxy.demo.service import Faults, create_app
from splitproxy.views import EventView, RouteView

if TYPE_CHECKING:
    from splitproxy.rollout.controller import Controller
    from splitproxy.server import Server

AFTER: Final = 1.0  # seconds of traffic after the decision, to show where it goes now
TRAFFIC_SPAN: Final = 10.0  # seconds of traffic the live view summarizes
REFRESH: Final = 0.25  # seconds between two frames of the live view
LOG_EVERY: Final = 2.0  # seconds between two progress lines of the log
IN_FLIGHT: Final = 256  # the client's bound on requests in flight
OUTCOME: Final = {"promoted": "promoted", "rolled_back": "rolled back"}
ROUTE: Final = "demo"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A candidate's behaviour and the outcome the rollout should reach with it."""

    name: str
    story: str
    expect: str  # "promoted" or "rolled_back"
    error_rate: float = 0.0
    delay_ms: float = 0.0
    live_error_rate: float = 0.0  # blue/green: its error rate once the users reach it


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` on a free loopback port, without an access log; its runner and port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, next(a[1] for a in runner.addresses if isinstance(a, tuple))


async def start_upstream(version: str, faults: Faults | None = None) -> tuple[web.AppRunner, int]:
    """The demo service as ``version`` on a free loopback port (``faults``: its faults, which
    the caller may change while it runs); its runner and port."""
    return await serve_app(create_app(version, faults=faults))


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


@dataclass
class Tally:
    """What the client saw while one weight was in force."""

    answers: Counter[str] = field(default_factory=Counter)  # version -> answers
    errors: Counter[str] = field(default_factory=Counter)  # version -> 5xx answers


class Traffic:
    """The demo's client: ``rate`` requests per second through the proxy (open loop, a bounded
    number in flight), each answer tallied under the weight in force when it was sent."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        rate: float,
        weight_now: Callable[[], float | None],
    ) -> None:
        self.session = session
        self.url = url
        self.rate = rate
        self.weight_now = weight_now
        self.tallies: dict[float | None, Tally] = {}
        self.failures: Counter[str] = Counter()  # no answer at all, by exception
        self.skipped = 0  # not sent: too many in flight
        self._pending: set[asyncio.Task[None]] = set()

    async def _one(self, tally: Tally) -> None:
        try:
            async with self.session.get(self.url) as resp:
                try:
                    version = str((await resp.json()).get("version", "?"))
                except (aiohttp.ContentTypeError, ValueError):
                    version = f"HTTP {resp.status}"
                tally.answers[version] += 1
                if resp.status >= 500:
                    tally.errors[version] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        try:
            while not stop.is_set():
                due = int((loop.time() - start) * self.rate) + 1
                while sent < due:
                    sent += 1
                    if len(self._pending) >= IN_FLIGHT:
                        self.skipped += 1
                        continue
                    w = self.weight_now()
                    tally = self.tallies.setdefault(w, Tally())
                    task = loop.create_task(self._one(tally))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(0.001, (sent / self.rate) - (loop.time() - start))
                    )
        finally:
            if self._pending:
                await asyncio.wait(self._pending, timeout=5)
            for task in self._pending:
                task.cancel()


def split_table(traffic: Traffic) -> Table:
    """The split the client measured under each weight the rollout set."""
    table = Table(
        title="measured split, per candidate weight the rollout set",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("weight", "requests", "stable", "candidate", "measured", "5xx"):
        table.add_column(column, justify="right")
    table.caption = "measured: the candidate's share; 5xx: stable / candidate"
    for w, tally in traffic.tallies.items():
        total = sum(tally.answers.values())
        cand = tally.answers.get("candidate", 0)
        table.add_row(
            "file" if w is None else f"{w:g}%",
            str(total),
            str(tally.answers.get("stable", 0)),
            str(cand),
            f"{100 * cand / total:.1f}%" if total else "-",
            f"{tally.errors.get('stable', 0)} / {tally.errors.get('candidate', 0)}",
        )
    return table


class LiveView:
    """The terminal view: decisions scroll by above a panel redrawn a few times a second."""

    def __init__(
        self, console: Console, origin: float, title: str, needs: tuple[float, int] | None
    ) -> None:
        self.console = console
        self.origin = origin
        self.title = title
        self.needs = needs  # the steps' interval and min_requests (None: each step's own)
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def event(self, event: EventView) -> None:
        for line in event_lines(event, self.origin):
            self._live.console.print(line, soft_wrap=True)

    def update(self, route: RouteView, now: float) -> None:
        running = (route.get("rollout") or NO_ROLLOUT).get("phase") not in OUTCOME
        stop = " · Ctrl-C stops" if running else ""
        footer = Text(f"+{now - self.origin:.1f}s{stop}", style="dim")
        panel = rollout_panel(route, now, self.needs, title=self.title)
        self._live.update(Group(panel, footer), refresh=True)


class LogView:
    """Not a terminal: the same decisions, and a progress line every couple of seconds."""

    def __init__(self, console: Console, origin: float, needs: tuple[float, int] | None) -> None:
        self.console = console
        self.origin = origin
        self.needs = needs
        self._next = origin + LOG_EVERY

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: EventView) -> None:
        for line in event_lines(event, self.origin):
            self.console.print(line, soft_wrap=True)

    def update(self, route: RouteView, now: float) -> None:
        rollout = route.get("rollout") or NO_ROLLOUT
        start = (rollout.get("window") or {}).get("start") or 0.0
        if now < self._next or now - start < 0.5:  # a step that just began says nothing yet
            return
        self._next = now + LOG_EVERY
        if rollout.get("phase") in ("progressing", "waiting", "paused"):
            line = progress_line(route, now, self.origin, self.needs)
            self.console.print(line, soft_wrap=True)


def route_snapshot(server: Server, name: str, now: float, span: float) -> RouteView:
    """The route as ``GET /api/v1/routes/{name}`` shows it, with traffic over ``span``."""
    snapshot = server.state.snapshot
    assert snapshot is not None
    route = snapshot.route(name)
    assert route is not None
    view = route_view(snapshot, route, server.recorder, now, server.control)
    summary = server.recorder.summary(name, now, span)
    view["traffic"] = {
        "window_seconds": round(span, 1),
        "stable": version_summary(summary["stable"].as_dict()),
        "candidate": version_summary(summary["candidate"].as_dict()),
    }
    return view


View = LiveView | LogView


def make_view(console: Console, origin: float, title: str, needs: tuple[float, int] | None) -> View:
    """The live view in a terminal, the log elsewhere."""
    if console.is_terminal:
        return LiveView(console, origin, title, needs)
    return LogView(console, origin, needs)


async def follow(
    server: Server,
    control: Controller,
    view: View,
    origin: float,
    deadline: float,
    on_frame: Callable[[], None] | None = None,
) -> str:
    """Show the route's decisions and progress every `REFRESH` seconds until its rollout ends
    (then `AFTER` more seconds of traffic, to show where it goes) or ``deadline`` (loop time)
    passes; ``on_frame`` runs once a frame (a scenario's own turn of events). The phase."""
    loop = asyncio.get_running_loop()
    analyzer = control.analyzers()[ROUTE]
    seen = 0
    phase = analyzer.phase
    while True:
        now = time.time()
        events = control.events(ROUTE, limit=1000)
        for event in events[seen:]:
            view.event(cast(EventView, event))
        seen = len(events)
        if on_frame is not None:
            on_frame()
        span = max(1.0, min(TRAFFIC_SPAN, now - origin))
        view.update(route_snapshot(server, ROUTE, now, span), now)
        phase = analyzer.phase
        if phase in OUTCOME or loop.time() > deadline:
            break
        await asyncio.sleep(REFRESH)
    if phase in OUTCOME:  # a moment of traffic where the decision sends it
        await asyncio.sleep(AFTER)
        now = time.time()
        view.update(route_snapshot(server, ROUTE, now, min(TRAFFIC_SPAN, now - origin)), now)
    return phase


def verdict(
    console: Console,
    scenario: Scenario,
    phase: str,
    elapsed: float,
    events: list[dict[str, Any]],
    deadline: float,
) -> int:
    """The outcome against the scenario's expectation; the exit code."""
    decision = next((e for e in reversed(events) if e.get("kind") == phase), None)
    why = f" ({decision['message']})" if decision and decision.get("message") else ""
    expect = OUTCOME[scenario.expect]
    if phase not in OUTCOME:
        console.print(
            f"[bold red]✗ the rollout did not end within {deadline:g}s[/] (still {phase}); "
            f"this candidate should have been {expect}.",
            soft_wrap=True,
        )
        return 1
    got = OUTCOME[phase]
    if phase != scenario.expect:
        console.print(
            f"[bold red]✗ {got} after {elapsed:.1f}s{why}, but this candidate should have been "
            f"{expect}.[/]",
            soft_wrap=True,
        )
        return 1
    console.print(
        f"[bold green]✓ {got} after {elapsed:.1f}s{why}, as expected for this candidate.[/]",
        soft_wrap=True,
    )
    return 0


def hints(console: Console, proxy: str, admin: str, keep: bool) -> None:
    hint = "it keeps running; Ctrl-C stops it" if keep else "run it with [bold]--keep[/]"
    console.print(f"\nLook closer ({hint}):", soft_wrap=True)
    for line in (
        f"splitproxy status --watch --admin-url {admin}",
        f"curl -s '{admin}/api/v1/events?route=demo'   # every decision with its evidence",
        f"curl -s {admin}/metrics | grep splitproxy_check",
        f"curl -s {proxy}/",
    ):
        console.print("  " + line, soft_wrap=True, highlight=False)
    console.print(
        "Other scenarios: splitproxy demo --scenario "
        "good|bad|slow|split|bluegreen|bluegreen-bad|ab",
        soft_wrap=True,
    )
