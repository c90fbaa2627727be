"""The controller's pass over its routes, in slices, so that serving never waits for a tick.

Theory of operation
-------------------
A tick steps every route under rollout, synchronously (`Controller.tick`): with 1,000 routes
that is 80-170 ms of CPU, and the event loop, which also serves every request, does nothing
else meanwhile. The background loop (`Ticker`, `Controller.paced_tick`) makes the pass *in
slices* instead: it steps routes until a slice has used ``budget`` seconds of a monotonic clock
(`run_slice`: checked after each route, so a slice overruns its budget by at most one route,
and steps at least one), then yields one turn of the event loop (`asyncio.sleep(0)`: every
ready callback runs and the sockets are polled), and goes on (`run_paced`). The longest stall
a pass causes is a slice, not the pass. The clock is injected (the tests drive it) and is a
monotonic one: the budget measures time spent, not the time of day; wall time rather than
CPU time, since a request waits in wall time.

A reload that adds many rollouts is sliced too: before the pass's reconcile, their analyzers
are made in slices (`make_paced`: each reads the route's saved state; 1,000 made at once held
the loop 56 ms without state files to read), then the reconcile finds them made. What is not
sliced: the rest of the reconcile (dropping and reconfiguring, cheap) and a garbage
collection. So that no full
collection walks the routes' million objects, the loop settles the heap after each pass
(`heap.Settler`: a young collection, then `gc.freeze`, and one full collection every 600
passes; `benchmarks/README.md`, "Pacing").

The rules, and why:

- *One time per pass.* The reconcile with the routing file happens at the start of a pass,
  and every route of the pass is stepped with the pass's ``now`` (read once, at the start),
  not its slice's: a route's decisions then do not depend on where the slices fell (on the
  machine's speed and load), and a paced pass decides exactly what `Controller.tick` would
  have decided at that ``now`` (the tick-decision fingerprints are the same both ways). The
  pass lasts a fraction of a second; a bucket still open at ``now`` is taken by the next pass.
- *The pass's config, or nothing.* Between two slices the routing file may be reloaded (or a
  manual command may reconcile a new one). A route is never stepped on a config that is gone:
  before each slice the pass checks that the config it reconciled is still the one in force,
  and ends otherwise. The reload woke the loop (`Controller.on_swap`), so the next pass, with
  its reconcile, starts at once and steps every route again (a route stepped in both passes
  is stepped at two close times, as a wake between two ticks always did).
- *Leadership.* A replica that loses the leader's lease mid-pass (`Controller.lead(False)`)
  steps no further route: the pass ends at the next slice.
- *Manual commands.* A command steps its route at once, at the clock's time, between two slices
  (`Controller.command`, `Controller.revert`). A route so stepped during a pass is left out of
  the rest of the pass (`Pass.stepped`): it is up to date, and stepping it again at the pass's
  earlier ``now`` would run its time backwards.
- *Wakes.* A wake (a reload, a gate's answer, a test job's outcome, leadership won) that comes
  during a pass is kept: the loop clears the wake before a pass, so the next pass starts as
  soon as this one ends. Several wakes make one pass.
- *No piling up.* One task makes the passes, one after the other, so two never overlap; after
  each the loop waits ``tick`` (or a wake) before the next. A pass that lasts longer than the
  interval delays the next one; no pass is made up (the analyzer works from time stamps: a
  later tick sees every bucket since the route's previous one).
- *Stopping.* `Controller.stop` cancels the loop: the cancellation arrives where the pass
  yields, between two routes (never inside one), and stop then saves every rollout as before.

`Controller.tick(now)` stays the synchronous pass (start-up, tests, benchmarks): the same
reconcile and the same steps, all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

T = TypeVar("T")
C = TypeVar("C")

logger = logging.getLogger("splitproxy.rollout.controller")  # the controller's voice

# Time a slice may use before the pass yields to the loop: a few ms keeps the stall a request
# can see well under a proxied request's own time while the yields (one loop turn each, tens
# of microseconds) stay a small part of the pass.
SLICE_BUDGET: Final = 0.005


def run_slice(
    items: Sequence[T],
    at: int,
    budget: float,
    clock: Callable[[], float],
    step: Callable[[T], None],
) -> int:
    """Step ``items[at:]`` in order until ``budget`` seconds of ``clock`` are used; the index
    of the first item not stepped (``len(items)`` when all were).

    The clock is read after each item, so the slice ends with the item that used the budget up:
    it overruns by at most one item, and steps at least one (a pass always progresses)."""
    started = clock()
    end = len(items)
    while at < end:
        step(items[at])
        at += 1
        if clock() - started >= budget:
            break
    return at


async def run_paced(
    items: Sequence[T],
    step: Callable[[T], None],
    *,
    budget: float,
    clock: Callable[[], float],
    proceed: Callable[[], bool],
) -> bool:
    """Step every item, in slices of ``budget`` (`run_slice`), one loop turn between two
    slices; before each slice after the first, ``proceed()`` must still hold. True when every
    item was stepped, False when ``proceed`` ended the pass early."""
    at = 0
    while at < len(items):
        at = run_slice(items, at, budget, clock, step)
        if at < len(items):
            await asyncio.sleep(0)  # one turn of the loop: requests in flight move on
            if not proceed():
                return False
    return True


async def make_paced(
    wanted: Callable[[], C | None],
    made: Callable[[], C | None],
    missing: Callable[[C], Sequence[T]],
    make: Callable[[T], None],
    *,
    budget: float,
    clock: Callable[[], float],
) -> None:
    """Before a pass: make what the config in force (``wanted()``) needs and the one last
    followed (``made()``) did not (``missing``), in slices (`run_paced`), then one turn of the
    loop so that the pass's first slice does not follow the last one at once. A new config
    mid-way starts it over from there (``make`` is given each item once per round, and skips
    what is made meanwhile)."""
    made_any = False
    while (config := wanted()) is not None and config is not made():
        items = missing(config)
        made_any = made_any or bool(items)
        if await run_paced(
            items, make, budget=budget, clock=clock, proceed=lambda: wanted() is config
        ):
            break
    if made_any:
        await asyncio.sleep(0)


@dataclass(slots=True, eq=False)
class Pass:
    """A pass in progress: the config it reconciled and the routes stepped out of turn since
    it began (by a manual command)."""

    config: object
    stepped: set[str] = field(default_factory=set)

    def holds(self, config: object, leading: bool) -> bool:
        """Whether the pass may step more routes: its config still in force, still leading."""
        return leading and config is self.config


class Ticker:
    """The background loop: ``run`` (a pass) ``interval`` seconds after the previous one ended,
    or as soon as it ended after a `wake`; one task, so passes never overlap; ``after`` each
    pass (the controller's: `heap.Settler`)."""

    def __init__(
        self,
        run: Callable[[], Awaitable[object]],
        interval: float,
        after: Callable[[], None] = lambda: None,
    ) -> None:
        self.run, self.interval, self.after = run, interval, after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Make the next pass now (or as soon as the one in progress ends)."""
        self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="splitproxy-control")

    async def stop(self) -> None:
        """Cancel the loop, a pass in progress where it yields (between two routes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            # On 3.11 `wait_for` returns a wait that ended in the same turn as a cancel of
            # this task and drops the cancel: `stop` then waited for a loop that went on, and
            # a shutdown with it. The cancel is still counted: honour it here.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            self._wake.clear()  # before the pass: a wake during it starts the next one at once
            try:
                await self.run()
                await asyncio.sleep(0)  # a turn first: the settling is a stall of its own
                self.after()
            except Exception:  # a bug must not stop rollouts for good
                logger.exception("rollout tick failed")


__all__ = ["SLICE_BUDGET", "Pass", "Ticker", "make_paced", "run_paced", "run_slice"]
