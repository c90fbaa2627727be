"""``splitproxy demo``: the whole product on loopback, in one command, with nothing to set up.

Starts two demo versions of a service (each names itself in its answers), the proxy in front
of them on an embedded routing file, sends a bounded burst of traffic with a progress bar,
and prints the split it measured per version next to the configured weight, then shows that
an override header reaches the candidate. ``--keep`` leaves it running for curl by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from splitproxy.demo_service import create_app
from splitproxy.server import Server, new_event_loop
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


async def _start_upstream(version: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(create_app(version), access_log=None)
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


async def _demo(requests: int, rate: float, weight: float, keep: bool, console: Console) -> int:
    stable_runner, stable_port = await _start_upstream("stable")
    candidate_runner, candidate_port = await _start_upstream("candidate")
    routing = ROUTING.format(stable=stable_port, candidate=candidate_port, weight=weight)
    settings = Settings(listen="127.0.0.1:0", admin="127.0.0.1:0", access_log=False)
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
            "it keeps running; Ctrl-C stops it" if keep else "run [bold]splitproxy demo --keep[/]"
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


def run_demo(
    requests: int = 400,
    rate: float = 200.0,
    weight: float = 20.0,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the exit code (0 when every request was answered)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_demo(requests, rate, weight, keep, console or Console()))
