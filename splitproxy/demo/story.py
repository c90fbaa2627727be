"""``splitproxy demo``: the whole product on loopback, in one command, with nothing to set up.

The default scenario starts two demo versions of a service (stable 1.0 and candidate 1.1, each
naming itself in its answers) and the proxy in front of them on an embedded routing file with a
canary rollout: steps of 10, 25 and 50 %, a few seconds and a few dozen candidate requests
each, absolute checks and comparisons with stable. The demo's own client sends steady traffic
through the proxy while the rollout runs by itself; a terminal shows it live (the step's
progress, the weights, error rate and p99 per version, the checks), and every decision is
printed with its evidence as it happens. Elsewhere (a pipe, CI) it prints the same as a log.

Scenarios: ``good`` (default) promotes a healthy candidate; ``bad`` (a candidate answering 25 %
of requests with 500) and ``slow`` (200 ms slower, under the 500 ms threshold: the comparison
with stable catches it) are rolled back; ``split`` is the first demo (a bounded burst at a fixed
weight, the measured split, an override header). The exit code is 0 when the rollout ends as
the scenario expects, 1 otherwise. ``--keep`` leaves everything running for curl by hand.
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from splitproxy.admin import route_view, version_summary
from splitproxy.console import NO_ROLLOUT, event_lines, progress_line, rollout_panel
from splitproxy.demo.service import create_app
from splitproxy.rollout.controller import ControlOptions
from splitproxy.server import Server, new_event_loop
from splitproxy.views import EventView, RouteView

if TYPE_CHECKING:  # the CLI reads the settings; the demo only passes them on
    from splitproxy.settings import Settings

ROUTING = """\
# The demo's routing file (embedded): one route, two versions, a weighted split.
revision: demo
routes:
  - name: demo
    stable: {{url: http://127.0.0.1:{stable}, revision: "1.0"}}
    candidate: {{url: http://127.0.0.1:{candidate}, revision: "1.1"}}
    weight: {weight}
    overrides:
      - {{header: X-Canary}}            # "always" -> candidate, "never" -> stable
    sticky: {{cookie: splitproxy_id}}   # browsers keep their version; curl gets a fresh draw
"""


async def _start_upstream(
    version: str, error_rate: float = 0.0, delay_ms: float = 0.0
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(create_app(version, error_rate, delay_ms), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    return runner, port


async def _burst(
    session: aiohttp.ClientSession, url: str, requests: int, rate: float, console: Console
) -> Counter[str]:
    """Send ``requests`` requests at ``rate`` per second (open loop, bounded concurrency)."""
    seen: Counter[str] = Counter()
    gate = asyncio.Semaphore(32)

    async def one() -> None:
        async with gate:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        seen[(await resp.json()).get("version", "?")] += 1
                    else:
                        seen[f"HTTP {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                seen[f"error: {type(exc).__name__}"] += 1

    columns = (
        TextColumn("[bold]sending traffic"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("burst", total=requests)
        pending: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for i in range(requests):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one())
            pending.add(t)
            t.add_done_callback(pending.discard)
            t.add_done_callback(lambda _: progress.advance(task))
        if pending:
            await asyncio.wait(pending)
    return seen


def _split_table(seen: Counter[str], weight: float) -> Table:
    total = sum(seen.values()) or 1
    table = Table(title="measured split")
    table.add_column("version")
    table.add_column("requests", justify="right")
    table.add_column("share", justify="right")
    table.add_column("configured", justify="right")
    expected = {"stable": 100 - weight, "candidate": weight}
    for version in ("stable", "candidate", *sorted(k for k in seen if k not in expected)):
        n = seen.get(version, 0)
        conf = f"{expected[version]:g}%" if version in expected else "-"
        table.add_row(version, str(n), f"{100 * n / total:.1f}%", conf)
    return table


async def _split_demo(
    settings: Settings, requests: int, rate: float, weight: float, keep: bool, console: Console
) -> int:
    """The first demo: a bounded burst at a fixed weight, the split measured per version."""
    stable_runner, stable_port = await _start_upstream("stable")
    candidate_runner, candidate_port = await _start_upstream("candidate")
    routing = ROUTING.format(stable=stable_port, candidate=candidate_port, weight=weight)
    server = Server(settings, routing_text=routing)
    try:
        await server.start()
        proxy = f"http://127.0.0.1:{server.listen_port}"
        admin = f"http://127.0.0.1:{server.admin_port}"
        console.print(
            f"[bold]splitproxy demo[/]: stable :{stable_port}, candidate :{candidate_port}, "
            f"proxy :{server.listen_port}, admin :{server.admin_port}; weight {weight:g}%",
            soft_wrap=True,
        )
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            seen = await _burst(session, proxy + "/", requests, rate, console)
            console.print(_split_table(seen, weight))
            async with session.get(proxy + "/", headers={"X-Canary": "always"}) as resp:
                forced = (await resp.json()).get("version")
            console.print(f"with [bold]X-Canary: always[/] the request went to: [bold]{forced}[/]")
        failed = sum(n for k, n in seen.items() if k not in ("stable", "candidate"))
        hint = (
            "it keeps running; Ctrl-C stops it"
            if keep
            else "run [bold]splitproxy demo --scenario split --keep[/]"
        )
        console.print(f"\nTry it by hand ({hint}):", soft_wrap=True)
        for line in (
            f"curl -s {proxy}/                        # {weight:g}% candidate",
            f"curl -s -H 'X-Canary: always' {proxy}/  # the candidate",
            f"curl -s -H 'X-Canary: never' {proxy}/   # stable",
            f"curl -s {admin}/api/v1/status",
            f"curl -s {admin}/metrics | grep splitproxy_requests_total",
        ):
            console.print("  " + line, soft_wrap=True, highlight=False)
        if keep:
            await _wait_for_signal()
        return 1 if failed else 0
    finally:
        await server.shutdown()
        await stable_runner.cleanup()
        await candidate_runner.cleanup()


async def _wait_for_signal() -> None:
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


# --- the rollout scenarios -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """A candidate's behaviour and the outcome the rollout should reach with it."""

    name: str
    story: str
    expect: str  # "promoted" or "rolled_back"
    error_rate: float = 0.0
    delay_ms: float = 0.0


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario("good", "candidate 1.1 is as healthy as stable 1.0", "promoted"),
        Scenario("bad", "candidate 1.1 answers 25% of requests with a 500", "rolled_back", 0.25),
        Scenario(
            "slow",
            "candidate 1.1 answers 200 ms slower than stable, under the 500 ms p99 threshold",
            "rolled_back",
            delay_ms=200.0,
        ),
    )
}
STEPS: Final = (10, 25, 50)
INTERVAL: Final = 4.0  # seconds per step, at least
MIN_REQUESTS: Final = 40  # candidate requests per step, at least
MIN_RATE: Final = 100.0  # below this the rollout would not end within the deadline
DEADLINE: Final = 50.0  # seconds: the rollout must have ended by then
AFTER: Final = 1.0  # seconds of traffic after the decision, to show where it goes now
TRAFFIC_SPAN: Final = 10.0  # seconds of traffic the live view summarizes
REFRESH: Final = 0.25  # seconds between two frames of the live view
LOG_EVERY: Final = 2.0  # seconds between two progress lines of the log
IN_FLIGHT: Final = 256  # the client's bound on requests in flight
OUTCOME: Final = {"promoted": "promoted", "rolled_back": "rolled back"}

ROLLOUT_ROUTING = """\
# The demo's routing file (embedded): a canary rollout of candidate 1.1 over stable 1.0.
revision: demo
routes:
  - name: demo
    stable: {{url: http://127.0.0.1:{stable}, revision: "1.0"}}
    candidate: {{url: http://127.0.0.1:{candidate}, revision: "1.1"}}
    overrides:
      - {{header: X-Canary}}            # "always" -> candidate, "never" -> stable
    sticky: {{cookie: splitproxy_id}}   # browsers keep their version; the demo's client doesn't
    rollout:
      steps: [{steps}]             # candidate weight per step, then promotion
      interval: {interval:g}s                    # each step lasts at least this long ...
      min_requests: {min_requests}                # ... and until the candidate served this many
      failure_limit: 0                # the first failed step window rolls back
      checks:
        - {{metric: error_rate, max: 2%}}
        - {{metric: latency_p99, max: 500ms}}
        - {{metric: error_rate, compare: stable}}   # sequential tests against stable,
        - {{metric: latency, compare: stable}}      # judged every tick
"""


def rollout_routing(stable: int, candidate: int) -> str:
    """The embedded routing file of the rollout scenarios, for upstreams on these ports."""
    return ROLLOUT_ROUTING.format(
        stable=stable,
        candidate=candidate,
        steps=", ".join(str(w) for w in STEPS),
        interval=INTERVAL,
        min_requests=MIN_REQUESTS,
    )


@dataclass
class _Tally:
    """What the client saw while one weight was in force."""

    answers: Counter[str] = field(default_factory=Counter)  # version -> answers
    errors: Counter[str] = field(default_factory=Counter)  # version -> 5xx answers


class _Traffic:
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
        self.tallies: dict[float | None, _Tally] = {}
        self.failures: Counter[str] = Counter()  # no answer at all, by exception
        self.skipped = 0  # not sent: too many in flight
        self._pending: set[asyncio.Task[None]] = set()

    async def _one(self, tally: _Tally) -> None:
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
                    tally = self.tallies.setdefault(w, _Tally())
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


def split_table(traffic: _Traffic) -> Table:
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


class _LiveView:
    """The terminal view: decisions scroll by above a panel redrawn a few times a second."""

    def __init__(self, console: Console, origin: float, title: str) -> None:
        self.console = console
        self.origin = origin
        self.title = title
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> _LiveView:
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
        panel = rollout_panel(route, now, (INTERVAL, MIN_REQUESTS), title=self.title)
        self._live.update(Group(panel, footer), refresh=True)


class _LogView:
    """Not a terminal: the same decisions, and a progress line every couple of seconds."""

    def __init__(self, console: Console, origin: float) -> None:
        self.console = console
        self.origin = origin
        self._next = origin + LOG_EVERY

    def __enter__(self) -> _LogView:
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
            line = progress_line(route, now, self.origin, (INTERVAL, MIN_REQUESTS))
            self.console.print(line, soft_wrap=True)


def _route_view(server: Server, name: str, now: float, span: float) -> RouteView:
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


async def _rollout_demo(
    settings: Settings, scenario: Scenario, rate: float, keep: bool, console: Console
) -> int:
    """A canary rollout of the scenario's candidate under steady traffic, shown as it goes."""
    stable_runner, stable_port = await _start_upstream("stable")
    candidate_runner, candidate_port = await _start_upstream(
        "candidate", scenario.error_rate, scenario.delay_ms
    )
    routing = rollout_routing(stable_port, candidate_port)
    options = ControlOptions(tick=REFRESH)  # decisions show up within a frame
    server = Server(settings, routing_text=routing, control_options=options)
    stop = asyncio.Event()
    traffic_task: asyncio.Task[None] | None = None
    try:
        expect = OUTCOME[scenario.expect]
        console.print(
            f"[bold]splitproxy demo[/] · scenario [bold]{scenario.name}[/]: {scenario.story}; "
            f"expect it to be [bold]{expect}[/].",
            soft_wrap=True,
        )
        loop = asyncio.get_running_loop()
        origin, began = time.time(), loop.time()  # the rollout starts with the server
        await server.start()
        assert server.control is not None
        control = server.control
        proxy = f"http://127.0.0.1:{server.listen_port}"
        admin = f"http://127.0.0.1:{server.admin_port}"
        console.print(
            f"stable 1.0 on :{stable_port}, candidate 1.1 on :{candidate_port}, proxy on "
            f":{server.listen_port}, admin API on :{server.admin_port}; the demo's client sends "
            f"{rate:g} requests/s through the proxy. The routing file:",
            soft_wrap=True,
        )
        body = routing.split("\n", 1)[1].rstrip()
        console.print(Text(body, style="dim"), soft_wrap=True)
        console.print()

        analyzer = control.analyzers()["demo"]
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), connector=connector
        ) as session:
            traffic = _Traffic(session, proxy + "/", rate, lambda: analyzer.weight)
            traffic_task = loop.create_task(traffic.run(stop))
            seen = 0
            phase = analyzer.phase
            view: _LiveView | _LogView = (
                _LiveView(console, origin, f"splitproxy demo · scenario {scenario.name}")
                if console.is_terminal
                else _LogView(console, origin)
            )
            with view:
                while True:
                    now = time.time()
                    events = control.events("demo", limit=1000)
                    for event in events[seen:]:
                        view.event(cast(EventView, event))
                    seen = len(events)
                    span = max(1.0, min(TRAFFIC_SPAN, now - origin))
                    view.update(_route_view(server, "demo", now, span), now)
                    phase = analyzer.phase
                    if phase in OUTCOME or loop.time() - began > DEADLINE:
                        break
                    await asyncio.sleep(REFRESH)
                if phase in OUTCOME:  # a moment of traffic where the decision sends it
                    await asyncio.sleep(AFTER)
                    now = time.time()
                    view.update(
                        _route_view(server, "demo", now, min(TRAFFIC_SPAN, now - origin)), now
                    )
            stop.set()
            await traffic_task
            traffic_task = None
            elapsed = time.time() - origin

            console.print()
            console.print(split_table(traffic))
            if traffic.failures or traffic.skipped:
                lost = ", ".join(f"{n} {kind}" for kind, n in traffic.failures.items())
                console.print(
                    f"the client got no answer for: {lost or 'none'}; "
                    f"not sent (too many in flight): {traffic.skipped}",
                    soft_wrap=True,
                )
        code = _verdict(console, scenario, phase, elapsed, control.events("demo", limit=1000))
        _hints(console, proxy, admin, keep)
        if keep:
            await _wait_for_signal()
        return code
    finally:
        stop.set()
        if traffic_task is not None:
            traffic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic_task
        await server.shutdown()
        await stable_runner.cleanup()
        await candidate_runner.cleanup()


def _verdict(
    console: Console, scenario: Scenario, phase: str, elapsed: float, events: list[dict[str, Any]]
) -> int:
    """The outcome against the scenario's expectation; the exit code."""
    decision = next((e for e in reversed(events) if e.get("kind") == phase), None)
    why = f" ({decision['message']})" if decision and decision.get("message") else ""
    expect = OUTCOME[scenario.expect]
    if phase not in OUTCOME:
        console.print(
            f"[bold red]✗ the rollout did not end within {DEADLINE:g}s[/] (still {phase}); "
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


def _hints(console: Console, proxy: str, admin: str, keep: bool) -> None:
    hint = "it keeps running; Ctrl-C stops it" if keep else "run it with [bold]--keep[/]"
    console.print(f"\nLook closer ({hint}):", soft_wrap=True)
    for line in (
        f"splitproxy status --watch --admin-url {admin}",
        f"curl -s '{admin}/api/v1/events?route=demo'   # every decision with its evidence",
        f"curl -s {admin}/metrics | grep splitproxy_check",
        f"curl -s {proxy}/",
    ):
        console.print("  " + line, soft_wrap=True, highlight=False)
    console.print("Other scenarios: splitproxy demo --scenario good|bad|slow|split", soft_wrap=True)


def run_demo(
    scenario: str,
    settings: Settings,
    *,
    requests: int = 400,
    rate: float = 200.0,
    weight: float = 20.0,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    """Run the demo with the proxy ``settings`` the CLI read; returns the exit code: for a
    rollout scenario, 0 when the rollout ended as the scenario expects; for ``split``, 0 when
    every request was answered."""
    console = console or Console()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            if scenario == "split":
                return runner.run(_split_demo(settings, requests, rate, weight, keep, console))
            return runner.run(_rollout_demo(settings, SCENARIOS[scenario], rate, keep, console))
        except KeyboardInterrupt:
            return 130
