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
weight, the measured split, an override header); ``bluegreen`` and ``bluegreen-bad`` are
blue/green rollouts (`splitproxy.demo.bluegreen`). The exit code is 0 when the rollout ends as
the scenario expects, 1 otherwise. ``--keep`` leaves everything running for curl by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Final

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from splitproxy.demo import ab as abdemo
from splitproxy.demo import bluegreen
from splitproxy.demo.live import (
    Scenario,
    start_upstream,
    wait_for_signal,
)
from splitproxy.demo.service import Faults, create_app
from splitproxy.demo.stage import (
    headline,
    keep_running,
    staged,
    steady_client,
    steady_rollout,
)
from splitproxy.server import Server, new_event_loop

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
    stable_runner, stable_port = await start_upstream("stable")
    candidate_runner, candidate_port = await start_upstream("candidate")
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
            await wait_for_signal()
        return 1 if failed else 0
    finally:
        await server.shutdown()
        await stable_runner.cleanup()
        await candidate_runner.cleanup()


# --- the rollout scenarios -------------------------------------------------------------------


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
        - {{metric: latency, compare: stable, tolerance: 25%}}   # judged every tick
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


async def _rollout_demo(
    settings: Settings, scenario: Scenario, rate: float, keep: bool, console: Console
) -> int:
    """A canary rollout of the scenario's candidate under steady traffic, shown as it goes."""
    faults = Faults(scenario.error_rate, scenario.delay_ms)
    versions = (create_app("stable"), create_app("candidate", faults=faults))
    async with staged(
        settings,
        versions,
        rollout_routing,
        console,
        headline=headline(scenario),
        client=steady_client(rate),
        limit=DEADLINE,
    ) as stage:
        phase = await steady_rollout(stage, console, scenario, rate, (INTERVAL, MIN_REQUESTS))
        code = stage.finish(console, scenario, phase, keep)
        await keep_running(keep)
        return code


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
            if scenario == "ab":
                return runner.run(abdemo.ab_demo(settings, rate, keep, console))
            if scenario == "split":
                return runner.run(_split_demo(settings, requests, rate, weight, keep, console))
            if scenario in bluegreen.SCENARIOS:
                chosen = bluegreen.SCENARIOS[scenario]
                return runner.run(bluegreen.bluegreen_demo(settings, chosen, rate, keep, console))
            return runner.run(_rollout_demo(settings, SCENARIOS[scenario], rate, keep, console))
        except KeyboardInterrupt:
            return 130
