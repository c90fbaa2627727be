"""``splitproxy demo --scenario ab``: an A/B test of a sign-up page, live.

Two versions of a small shop on loopback: stable 1.0, whose ``POST /signup`` succeeds for
10 % of attempts, and candidate 1.1, for 25 %. Simulated users arrive with their own
``X-User`` id; two in three are on the ``pro`` plan (the test's audience), the rest on
``free`` (they stay on stable and are not counted). Each opens ``/`` and tries to sign up.
The proxy counts the sign-ups itself (``POST /signup`` answered 201), declares the candidate
the winner once the anytime-valid test says so and ``min_duration`` has passed, and promotes
it. The exit code is 0 when it was promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from rich.console import Console

from splitproxy.demo.live import (
    IN_FLIGHT,
    Scenario,
    follow,
    make_view,
)
from splitproxy.demo.stage import client_session, keep_running, running, staged
from splitproxy.rollout import ab

if TYPE_CHECKING:
    from splitproxy.settings import Settings

SCENARIO: Final = Scenario(
    "ab",
    "candidate 1.1's sign-up page converts 25% of its users where stable's does 10%",
    "promoted",
)
MIN_DURATION: Final = 5.0
MAX_DURATION: Final = 40.0
DEADLINE: Final = 50.0

ROUTING = """\
# The demo's routing file (embedded): an A/B test of candidate 1.1 against stable 1.0.
revision: demo
routes:
  - name: demo
    stable: {{url: http://127.0.0.1:{stable}, revision: "1.0"}}
    candidate: {{url: http://127.0.0.1:{candidate}, revision: "1.1"}}
    sticky: {{header: X-User}}        # the user's identity: one variant per user
    rollout:
      strategy: ab
      ab:
        split: 50                   # half the audience's users on 1.1
        audience: [{{header: X-Plan, value: pro}}]   # everyone else: stable, not counted
        goals:
          - {{name: signup, method: POST, path_prefix: /signup, status: 201}}
        min_duration: {min:g}s            # no winner before (in production: 24h or more)
        max_duration: {max:g}s           # then "no difference", stable kept
"""


def shop(version: str, signup_rate: float) -> web.Application:
    """The demo shop: every page names the version; a sign-up succeeds (201) at the rate."""
    rng = random.Random(version)

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"version": version})

    async def signup(request: web.Request) -> web.Response:
        status = 201 if rng.random() < signup_rate else 200
        return web.json_response({"version": version, "signed_up": status == 201}, status=status)

    app = web.Application()
    app.router.add_post("/signup", signup)
    app.router.add_get("/{tail:.*}", page)
    return app


async def _users(url: str, rate: float, stop: asyncio.Event, seen: Counter[str]) -> None:
    """``rate`` new users a second, each opening ``/`` then trying ``POST /signup``."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    async with client_session() as session:

        async def visit(n: int) -> None:
            plan = "free" if n % 3 == 0 else "pro"
            headers = {"X-User": f"user-{n}", "X-Plan": plan}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                for method, path in (("GET", "/"), ("POST", "/signup")):
                    async with session.request(method, url + path, headers=headers) as resp:
                        seen[f"{plan} → {(await resp.json())['version']}"] += 1

        start, users = loop.time(), itertools.count()
        sent = 0
        while not stop.is_set():
            while sent < int((loop.time() - start) * rate) + 1:
                sent += 1
                if len(pending) < IN_FLIGHT:
                    task = loop.create_task(visit(next(users)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)
        if pending:
            await asyncio.wait(pending, timeout=5)


async def ab_demo(settings: Settings, rate: float, keep: bool, console: Console) -> int:
    """The A/B test under a steady stream of users, shown as it goes; the exit code."""
    stop = asyncio.Event()
    async with staged(
        settings,
        (shop("stable", 0.10), shop("candidate", 0.25)),
        lambda stable, candidate: ROUTING.format(
            stable=stable, candidate=candidate, min=MIN_DURATION, max=MAX_DURATION
        ),
        console,
        headline=f"[bold]splitproxy demo[/] · scenario [bold]ab[/]: {SCENARIO.story}; expect "
        "it to be [bold]promoted[/] once the proxy's own count of sign-ups shows it.",
        client=f"{rate / 2:g} new users/s (two in three on the pro plan)",
        limit=DEADLINE,
    ) as stage:
        analyzer, origin = stage.analyzer, stage.origin
        seen: Counter[str] = Counter()
        shown = [0.0]

        def on_frame() -> None:  # not a terminal: a line on the test every few seconds
            now = time.time()
            found = ab.verdict(analyzer, now)
            if console.is_terminal or found is None or now - shown[0] < 3:
                return
            shown[0] = now
            c, s = found.candidate, found.stable
            console.print(
                f"  +{now - origin:.1f}s  A/B: stable {s.converted}/{s.users} signed up, "
                f"candidate {c.converted}/{c.users}; {found.reason}",
                soft_wrap=True,
                highlight=False,
            )

        async with running(_users(stage.proxy, rate / 2, stop, seen)) as users:
            with make_view(console, origin, "splitproxy demo · scenario ab", None) as view:
                phase = await follow(
                    stage.server, stage.control, view, origin, stage.deadline, on_frame=on_frame
                )
            stop.set()
            await users
        console.print()
        console.print("answers by plan and version (after the promotion, every user gets 1.1):")
        for key, n in sorted(seen.items()):
            console.print(f"  {key}: {n}", highlight=False)
        code = stage.finish(console, SCENARIO, phase, keep)
        await keep_running(keep)
        return code
