"""``splitproxy demo --scenario bluegreen|bluegreen-bad``: a blue/green rollout, live.

The same two demo versions and steady client as the canary scenarios, on an embedded routing
file with ``strategy: bluegreen``: two test iterations in which the users stay on stable 1.0
while candidate 1.1 gets test traffic only (the proxy's synthetic traffic, and the test job,
``python -m splitproxy.demo.smoke``, run against the preview listener), then the switch (all
traffic at once) and the bake, judged on live traffic. ``bluegreen``: the candidate is healthy
and is promoted when the bake passes. ``bluegreen-bad``: it passes its tests but answers 30 %
of requests with 500 once the users reach it, and the bake reverts it at once.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console

from splitproxy.demo.live import (
    ROUTE,
    Scenario,
)
from splitproxy.demo.service import Faults, create_app
from splitproxy.demo.stage import (
    headline,
    keep_running,
    staged,
    steady_client,
    steady_rollout,
)

if TYPE_CHECKING:
    from splitproxy.settings import Settings

SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario(
            "bluegreen",
            "candidate 1.1 passes its tests and stays healthy under live traffic",
            "promoted",
        ),
        Scenario(
            "bluegreen-bad",
            "candidate 1.1 passes its tests, but once the users reach it, it answers 30% of "
            "their requests with a 500",
            "rolled_back",
            live_error_rate=0.3,
        ),
    )
}
ITERATIONS: Final = 2
INTERVAL: Final = 3.0  # seconds per test iteration, at least
MIN_REQUESTS: Final = 20  # test requests per iteration, at least
BAKE: Final = 8.0  # seconds of live traffic on the candidate before promotion
TEST_RATE: Final = 20  # synthetic test requests per second to the candidate
DEADLINE: Final = 40.0  # seconds: the rollout must have ended by then

ROUTING = """\
# The demo's routing file (embedded): a blue/green rollout of candidate 1.1 over stable 1.0.
revision: demo
routes:
  - name: demo
    stable: {{url: http://127.0.0.1:{stable}, revision: "1.0"}}
    candidate: {{url: http://127.0.0.1:{candidate}, revision: "1.1"}}
    rollout:
      strategy: bluegreen
      iterations: {iterations}                   # test iterations at 0%: users stay on stable
      interval: {interval:g}s                  # each lasts at least this long ...
      min_requests: {min_requests}              # ... and until 1.1 served this many test requests
      bake: {bake:g}s                      # after the switch: all traffic on 1.1, still judged
      failure_limit: 0              # any failure rolls back (in the bake: reverts at once)
      test:                         # must exit 0 before the switch (preview URL in its env)
        command: {command}
        timeout: 20s
      traffic: {{rate: {rate}, judge: true}}   # synthetic test traffic to 1.1 meanwhile
      checks:
        - {{metric: error_rate, max: 2%}}
        - {{metric: latency_p99, max: 500ms}}
        - {{metric: error_rate, compare: stable, traffic: all}}  # in the bake: against
                                                              # stable's pre-switch numbers
"""


def routing(stable: int, candidate: int) -> str:
    """The embedded routing file, for upstreams on these ports."""
    command = json.dumps([sys.executable, "-m", "splitproxy.demo.smoke"])
    return ROUTING.format(
        stable=stable,
        candidate=candidate,
        iterations=ITERATIONS,
        interval=INTERVAL,
        min_requests=MIN_REQUESTS,
        bake=BAKE,
        command=command,
        rate=TEST_RATE,
    )


def _after_switch(console: Console, ledger: list[dict[str, Any]]) -> None:
    """How long the candidate had all the traffic, when the bake reverted it."""
    switched = [e for e in ledger if e.get("kind") == "step" and e.get("weight") == 100]
    ended = [e for e in ledger if e.get("kind") == "rolled_back"]
    if switched and ended and ended[-1]["at"] >= switched[-1]["at"]:
        held = ended[-1]["at"] - switched[-1]["at"]
        console.print(
            f"reverted in the bake: the users were back on stable 1.0 {held:.1f}s after the switch",
            soft_wrap=True,
        )


async def bluegreen_demo(
    settings: Settings, scenario: Scenario, rate: float, keep: bool, console: Console
) -> int:
    """A blue/green rollout of the scenario's candidate under steady traffic, shown as it
    goes; the exit code (0: it ended as the scenario expects)."""
    faults = Faults()  # healthy until the users reach it
    versions = (create_app("stable"), create_app("candidate", faults=faults))
    # the test job reaches the candidate through a preview listener of the demo's own
    settings = settings.model_copy(update={"preview_listen": "127.0.0.1:0"})
    async with staged(
        settings,
        versions,
        routing,
        console,
        headline=headline(scenario),
        client=steady_client(rate),
        limit=DEADLINE,
    ) as stage:
        analyzer = stage.analyzer
        broken = False

        def on_frame() -> None:
            nonlocal broken  # the scenario's turn: the fault shows under live traffic
            if scenario.live_error_rate and not broken and analyzer.weight == 100:
                broken = True
                faults.error_rate = scenario.live_error_rate
                console.print(
                    f"[bold yellow]→ the users reach 1.1 now, and it fails "
                    f"{scenario.live_error_rate:.0%} of their requests[/]",
                    soft_wrap=True,
                )

        phase = await steady_rollout(stage, console, scenario, rate, None, on_frame)
        _after_switch(console, stage.control.events(ROUTE, limit=1000))
        code = stage.finish(console, scenario, phase, keep)
        await keep_running(keep)
        return code
