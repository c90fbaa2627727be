"""The stage every rollout scenario of the demo plays on (canary, blue/green, A/B).

Each scenario brings its own two versions of the service, its routing file, its client and
what it prints at the end; around that, all of them do the same: start both versions on free
loopback ports, start the proxy on the routing file (its controller ticking fast enough for a
live view), say what runs where and show the file, and afterwards print the verdict and the
hints, wait for a signal with ``--keep``, and stop everything, whatever happened. `staged`
does that part; `running` keeps a scenario's client task from outliving the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.text import Text

from splitproxy.demo.live import (
    IN_FLIGHT,
    OUTCOME,
    REFRESH,
    ROUTE,
    Scenario,
    Traffic,
    follow,
    hints,
    make_view,
    serve_app,
    split_table,
    verdict,
    wait_for_signal,
)
from splitproxy.rollout.controller import ControlOptions
from splitproxy.server import Server

if TYPE_CHECKING:
    from splitproxy.rollout.analyzer import Analyzer
    from splitproxy.rollout.controller import Controller
    from splitproxy.settings import Settings


def headline(scenario: Scenario) -> str:
    """What a scenario shows and how it should end, before anything starts."""
    return (
        f"[bold]splitproxy demo[/] · scenario [bold]{scenario.name}[/]: {scenario.story}; "
        f"expect it to be [bold]{OUTCOME[scenario.expect]}[/]."
    )


def steady_client(rate: float) -> str:
    """What the steady client of the canary and blue/green scenarios sends."""
    return f"the demo's client sends {rate:g} requests/s through the proxy"


def client_session() -> aiohttp.ClientSession:
    """The demo client's session: no cookies kept (each request is a fresh visitor unless it
    says otherwise), bounded in flight and in time."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=IN_FLIGHT),
    )


@dataclass(frozen=True, slots=True)
class Stage:
    """The running proxy in front of both versions."""

    server: Server
    control: Controller
    analyzer: Analyzer  # the demo route's
    proxy: str  # the proxy's URL
    admin: str  # the admin API's URL
    origin: float  # Unix time at which the rollout started (with the server)
    limit: float  # seconds from the start by which the rollout must have ended
    deadline: float  # the same, as the loop's time

    def finish(self, console: Console, scenario: Scenario, phase: str, keep: bool) -> int:
        """The verdict with its evidence (the exit code: 0 when the rollout ended as the
        scenario expects) and where to look closer."""
        elapsed = time.time() - self.origin
        ledger = self.control.events(ROUTE, limit=1000)
        code = verdict(console, scenario, phase, elapsed, ledger, self.limit)
        hints(console, self.proxy, self.admin, keep)
        return code


@contextlib.asynccontextmanager
async def staged(
    settings: Settings,
    versions: tuple[web.Application, web.Application],
    routing: Callable[[int, int], str],
    console: Console,
    *,
    headline: str,
    client: str,
    limit: float,
) -> AsyncIterator[Stage]:
    """Stable and candidate (``versions``) on loopback, the proxy in front of them on the
    routing file ``routing(stable_port, candidate_port)``, announced with ``headline`` (before
    anything starts) and ``client`` (what the demo's client sends); everything is stopped when
    the block ends, however it ends."""
    stable_runner, stable_port = await serve_app(versions[0])
    candidate_runner, candidate_port = await serve_app(versions[1])
    text = routing(stable_port, candidate_port)
    server = Server(settings, routing_text=text, control_options=ControlOptions(tick=REFRESH))
    try:
        console.print(headline, soft_wrap=True)
        loop = asyncio.get_running_loop()
        origin, began = time.time(), loop.time()  # the rollout starts with the server
        await server.start()
        assert server.control is not None
        control = server.control
        preview = (
            f"preview listener (always 1.1) on :{server.preview_port}, "
            if server.preview_port
            else ""
        )
        console.print(
            f"stable 1.0 on :{stable_port}, candidate 1.1 on :{candidate_port}, proxy on "
            f":{server.listen_port}, {preview}admin API on :{server.admin_port}; {client}. "
            "The routing file:",
            soft_wrap=True,
        )
        console.print(Text(text.split("\n", 1)[1].rstrip(), style="dim"), soft_wrap=True)
        console.print()
        yield Stage(
            server,
            control,
            control.analyzers()[ROUTE],
            f"http://127.0.0.1:{server.listen_port}",
            f"http://127.0.0.1:{server.admin_port}",
            origin,
            limit,
            began + limit,
        )
    finally:
        await server.shutdown()
        await stable_runner.cleanup()
        await candidate_runner.cleanup()


async def steady_rollout(
    stage: Stage,
    console: Console,
    scenario: Scenario,
    rate: float,
    needs: tuple[float, int] | None,
    on_frame: Callable[[], None] | None = None,
) -> str:
    """The canary and blue/green scenarios' part: the steady client sends ``rate`` requests a
    second through the proxy while the rollout runs, shown live (``needs``: a step's interval
    and requests, for the view); then the split the client measured and what went unanswered.
    The phase the rollout ended in."""
    stop = asyncio.Event()
    analyzer = stage.analyzer
    async with client_session() as session:
        traffic = Traffic(session, stage.proxy + "/", rate, lambda: analyzer.weight)
        async with running(traffic.run(stop)) as task:
            title = f"splitproxy demo · scenario {scenario.name}"
            with make_view(console, stage.origin, title, needs) as view:
                phase = await follow(
                    stage.server,
                    stage.control,
                    view,
                    stage.origin,
                    stage.deadline,
                    on_frame=on_frame,
                )
            stop.set()
            await task
    console.print()
    console.print(split_table(traffic))
    if traffic.failures or traffic.skipped:
        lost = ", ".join(f"{n} {kind}" for kind, n in traffic.failures.items())
        console.print(
            f"the client got no answer for: {lost or 'none'}; "
            f"not sent (too many in flight): {traffic.skipped}",
            soft_wrap=True,
        )
    return phase


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """``work`` as a task for the block; cancelled if the block leaves it running (an error,
    Ctrl-C). A block that ends normally stops it and awaits it itself."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def keep_running(keep: bool) -> None:
    """With ``--keep``, leave everything running until a signal."""
    if keep:
        await wait_for_signal()
