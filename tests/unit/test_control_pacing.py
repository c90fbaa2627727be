"""The background loop's pass in slices (`Controller.paced_tick`, see `rollout.pacing`), on a
real event loop: it lets other tasks run between slices, decides what the synchronous tick
decides, and keeps its rules when a reload, a command, leadership or `stop` comes mid-pass.

The monotonic clock is a stopwatch the routes' steps move, so the slices fall where the test
says, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from pathlib import Path
from typing import Any

from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.errors import Conflict
from splitproxy.rollout.codec import encode
from splitproxy.rollout.controller import ControlOptions, analyzer_spec
from splitproxy.rollout.ledger import RouteRollout
from splitproxy.rollout.store import StateStore
from tests.unit.test_control import T0, Rig

ROUTES = 12


def many(count: int = ROUTES, *, without: int | None = None) -> dict[str, Any]:
    """``count`` routes, each with a canary rollout (``without``: that one has none)."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        route: dict[str, Any] = {
            "name": f"r{i}",
            "match": {"host": f"h{i}.example"},
            "stable": f"http://stable-{i}:80",
            "candidate": {"url": f"http://candidate-{i}:80", "revision": "v2"},
            "weight": 5,
        }
        if i != without:
            route["rollout"] = {
                "steps": [20, 50],
                "interval": "2s",
                "min_requests": 10,
                "checks": [{"metric": "error_rate", "max": 0.05}],
            }
        out.append(route)
    return {"routes": out}


class Paced:
    """A rig whose routes' steps are recorded and each cost ``cost`` seconds of the stopwatch
    (``slow``: routes that cost more); a slice's budget is 3.5 ms."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        cost: float = 0.001,
        slow: dict[str, float] | None = None,
        store: StateStore | None = None,
        tick: float = 1.0,
    ) -> None:
        self.rig = Rig(config, store=store, options=ControlOptions(tick=tick, slice_budget=0.0035))
        self.control = self.rig.control
        self.t = 0.0
        self.control.monotonic = lambda: self.t
        self.log: list[str] = []  # "r3@<now - T0>" per step, "loop" per turn of the probe
        self.cost, self.slow = cost, slow or {}
        step = self.control._step

        def recorded(rt: RouteRollout, now: float, commands: Any = ()) -> None:
            self.t += self.slow.get(rt.name, self.cost)
            self.log.append(f"{rt.name}@{now - T0:g}")
            step(rt, now, commands)

        self.control._step = recorded  # type: ignore[method-assign]

    def steps(self) -> list[str]:
        return [e for e in self.log if e != "loop"]

    def slices(self) -> list[list[str]]:
        """The steps between two turns of the probe."""
        out: list[list[str]] = [[]]
        for e in self.log:
            if e == "loop":
                out.append([])
            else:
                out[-1].append(e)
        return [s for s in out if s]

    async def probing(self) -> asyncio.Task[None]:
        """A task that logs each of its turns of the loop until cancelled."""

        async def probe() -> None:
            while True:
                self.log.append("loop")
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(probe())
        await asyncio.sleep(0)
        self.log.clear()
        return task


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_other_tasks_run_between_the_slices_of_a_pass() -> None:
    p = Paced(many())
    p.control.tick()  # the rollouts start
    probe = await p.probing()
    p.rig.now += 1
    assert await p.control.paced_tick()
    await stopped(probe)
    names = [f"r{i}@1" for i in range(ROUTES)]
    assert p.slices() == [names[0:4], names[4:8], names[8:12]]  # 4 ms each: over 3.5 after 4


async def test_a_slow_route_overruns_its_slice_by_itself_only() -> None:
    p = Paced(many(), slow={"r5": 0.05})
    p.control.tick()
    probe = await p.probing()
    assert await p.control.paced_tick()
    await stopped(probe)
    sizes = [len(s) for s in p.slices()]
    assert sizes == [4, 2, 4, 2]  # r4, r5 (50 ms) end their slice; the rest as before
    assert p.slices()[1] == ["r4@0", "r5@0"]


async def test_a_pass_steps_every_route_with_the_time_it_began() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)  # the first slice
    p.rig.now += 0.25  # time passes while the loop serves
    assert await pass_
    assert p.steps() == [f"r{i}@0" for i in range(ROUTES)]


async def test_a_reload_mid_pass_ends_it_and_no_route_is_stepped_on_the_old_config() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    p.control.ticker._wake.clear()
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)  # the first slice: r0-r3
    p.rig.load(many(ROUTES - 2, without=6))  # r6 loses its rollout, r10 and r11 are gone
    assert p.control.ticker._wake.is_set()  # the next pass starts at once
    assert not await pass_
    assert p.steps() == ["r0@0", "r1@0", "r2@0", "r3@0"]
    assert "r6" in p.control.analyzers()  # not reconciled by the pass that was going on
    p.log.clear()
    assert await p.control.paced_tick()  # the next pass follows the new file
    assert sorted(p.control.analyzers()) == sorted(f"r{i}" for i in range(10) if i != 6)
    assert [s.split("@")[0] for s in p.steps()] == [f"r{i}" for i in range(10) if i != 6]


async def test_a_config_reconciled_by_a_command_mid_pass_ends_it_too() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)
    p.rig.load(many(6))
    p.control.command("r1", "pause")  # reconciles: r6-r11 are dropped, their objects gone
    assert not await pass_
    assert [s.split("@")[0] for s in p.steps()] == ["r0", "r1", "r2", "r3", "r1"]


async def test_a_route_commanded_mid_pass_is_left_out_of_the_rest_of_it() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)
    p.rig.now += 0.5
    p.control.command("r9", "pause")  # stepped at once, half a second after the pass began
    assert await pass_
    steps = p.steps()
    assert [s for s in steps if s.startswith("r9@")] == ["r9@0.5"]  # never back to 0
    assert len(steps) == ROUTES
    assert p.control.analyzers()["r9"].phase == "paused"


async def test_leadership_lost_mid_pass_steps_no_further_route() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)
    p.control.lead(False)
    assert not await pass_
    assert len(p.steps()) == 4
    p.log.clear()
    assert await p.control.paced_tick()  # a follower's pass reconciles, steps nothing
    assert p.steps() == []


async def test_decisions_of_a_paced_pass_are_those_of_the_synchronous_tick() -> None:
    sync, paced = Paced(many()), Paced(many())
    for rig in (sync.rig, paced.rig):
        rig.control.tick()
    for second in range(12):
        for p in (sync, paced):
            for i in range(ROUTES):
                window = p.rig.recorder.windows.window(f"r{i}")
                for k in range(40):  # route r7 fails half its candidate requests
                    error = i == 7 and k % 2 == 0
                    version: Version = CANDIDATE if k < 10 else STABLE
                    window.observe(p.rig.now + 0.5, version, 0.02 + second / 1000, error, 0.2)
            p.rig.now += 1
        sync.control.tick()
        assert await paced.control.paced_tick()
    for name, a in sync.control.analyzers().items():
        b = paced.control.analyzers()[name]
        assert (a.phase, a.weight, a.step_index) == (b.phase, b.weight, b.step_index)
        assert sync.control.events(name) == paced.control.events(name)
    phases = {name: a.phase for name, a in sync.control.analyzers().items()}
    assert phases == {f"r{i}": "paused" if i == 7 else "promoted" for i in range(ROUTES)}


async def test_stop_mid_pass_cancels_it_between_two_routes_and_saves_every_rollout(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    p = Paced(many(), store=store, tick=3600.0)
    await p.control.start()  # its first tick is synchronous
    p.log.clear()
    p.control.ticker.wake()
    for _ in range(100):  # the loop wakes, the pass steps its first slice
        await asyncio.sleep(0)
        if p.steps():
            break
    await p.control.stop()
    assert 0 < len(p.steps()) < ROUTES  # cancelled where it yielded
    for i in range(ROUTES):
        assert json.loads(store.path(f"r{i}").read_text())["analyzer"]["weight"] == 20


async def test_wakes_during_a_pass_make_one_more_pass_and_passes_never_overlap() -> None:
    p = Paced(many(), tick=3600.0)
    await p.control.start()
    p.log.clear()
    running, most, passes = 0, 0, 0
    paced_tick = p.control.paced_tick

    async def counted(now: float | None = None) -> bool:
        nonlocal running, most, passes
        running += 1
        passes += 1
        most = max(most, running)
        try:
            return await paced_tick(now)
        finally:
            running -= 1

    p.control.ticker.run = counted
    try:
        p.control.ticker.wake()
        for _ in range(100):  # until the first pass is under way
            await asyncio.sleep(0)
            if p.steps():
                break
        assert (passes, running) == (1, 1)
        for _ in range(5):  # a gate's answer, a test job's outcome ... while it runs
            p.control.ticker.wake()
            await asyncio.sleep(0)
        for _ in range(100):
            await asyncio.sleep(0)
    finally:
        await p.control.stop()
    assert (passes, most, running) == (2, 1, 0)  # the wakes made one more pass, then it slept


def test_the_synchronous_tick_is_one_slice_whatever_the_budget() -> None:
    p = Paced(many(), cost=1.0)
    p.control.tick()
    assert len(p.steps()) == ROUTES
    assert p.control._pass is None


async def test_a_manual_command_outside_a_pass_is_stepped_as_before() -> None:
    p = Paced(many())
    p.control.tick()
    p.log.clear()
    p.control.command("r2", "pause")
    assert p.steps() == ["r2@0"]


async def test_the_background_loop_settles_the_heap_after_each_pass() -> None:
    p = Paced(many(), tick=3600.0)
    await p.control.start()
    try:
        gc.unfreeze()
        kept = Node()
        assert any(o is kept for o in gc.get_objects())
        p.log.clear()
        p.control.ticker.wake()
        for _ in range(100):
            await asyncio.sleep(0)
            if len(p.steps()) == ROUTES and gc.get_freeze_count():
                break
        assert len(p.steps()) == ROUTES
        assert not any(o is kept for o in gc.get_objects())  # frozen: no collection walks it
    finally:
        await p.control.stop()
        gc.unfreeze()


class Node:
    """An object the collector tracks."""

    def __init__(self) -> None:
        self.items: list[object] = []


def bare() -> dict[str, Any]:
    """The routes of `many`, none with a rollout yet."""
    config = many()
    for route in config["routes"]:
        del route["rollout"]
    return config


class Making(Paced):
    """`Paced`, whose rollouts' creations (each reads its saved state) are recorded too and
    cost ``make`` seconds of the stopwatch each."""

    def __init__(self, config: dict[str, Any], *, make: float = 0.001) -> None:
        super().__init__(config)
        create = self.control._create

        def recorded(name: str, rollout: Any, now: float) -> RouteRollout:
            self.t += make
            self.log.append(f"make {name}@{now - T0:g}")
            return create(name, rollout, now)

        self.control._create = recorded  # type: ignore[method-assign]

    def made(self) -> list[str]:
        return [e for e in self.log if e.startswith("make ")]

    def steps(self) -> list[str]:
        return [e for e in super().steps() if not e.startswith("make ")]


async def test_the_rollouts_a_reload_adds_are_made_in_slices_before_the_pass() -> None:
    p = Making(bare())
    assert await p.control.paced_tick()
    probe = await p.probing()
    p.rig.load(many())  # twelve rollouts at once
    assert await p.control.paced_tick()
    await stopped(probe)
    made = [f"make r{i}@0" for i in range(ROUTES)]
    steps = [f"r{i}@0" for i in range(ROUTES)]
    # 1 ms each, 3.5 ms a slice: the makes in slices of their own, then the steps
    assert p.slices() == [made[0:4], made[4:8], made[8:12], steps[0:4], steps[4:8], steps[8:12]]


async def test_rollouts_made_in_slices_are_those_the_synchronous_tick_makes() -> None:
    sliced, whole = Making(bare()), Making(bare())
    for rig in (sliced, whole):
        rig.control.tick()
        rig.rig.load(many())
    assert await sliced.control.paced_tick()
    whole.control.tick()
    assert list(sliced.control.analyzers()) == list(whole.control.analyzers())  # same order
    for name in whole.control.analyzers():
        assert sliced.control.route_status(name) == whole.control.route_status(name)
    assert sliced.made() == whole.made()


async def test_a_reload_while_rollouts_are_made_makes_those_of_the_new_file() -> None:
    p = Making(bare())
    p.control.tick()
    p.rig.load(many())
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)  # the first slice: r0-r3 made
    p.rig.load(many(ROUTES - 2, without=6))  # r6 has no rollout any more, r10 and r11 are gone
    assert await pass_  # the making goes on with the new file, then the pass steps its routes
    assert sorted(p.control.analyzers()) == sorted(f"r{i}" for i in range(10) if i != 6)
    assert sorted(p.made()) == sorted(f"make r{i}@0" for i in range(10) if i != 6)
    assert [s.split("@")[0] for s in p.steps()] == [f"r{i}" for i in range(10) if i != 6]


async def test_a_command_while_rollouts_are_made_makes_the_rest_at_once_and_none_twice() -> None:
    p = Making(bare())
    p.control.tick()
    p.rig.load(many())
    pass_ = asyncio.get_running_loop().create_task(p.control.paced_tick())
    await asyncio.sleep(0)  # r0-r3 made
    with contextlib.suppress(Conflict):  # (idle, not started yet: refused, but reconciled)
        p.control.command("r9", "pause")  # reconciles first: r4-r11 made at once
    assert len(p.made()) == ROUTES
    assert await pass_
    assert sorted(p.made()) == sorted(f"make r{i}@0" for i in range(ROUTES))
    assert len(p.control.analyzers()) == ROUTES


def test_a_rollout_configured_with_its_own_spec_is_as_if_reconfigured_in_full() -> None:
    # `RouteRollout.configure` skips the rollout object it already has (the reconcile after
    # `make_paced`, or a reload that kept the route): the same state as reconfiguring anew.
    p = Paced(many(2))
    p.control.tick()
    p.rig.now += 1
    p.control.tick()
    rt = p.control._routes["r0"]
    full = Paced(many(2))
    full.control.tick()
    full.rig.now += 1
    full.control.tick()
    twin = full.control._routes["r0"]
    rt.configure(rt.rollout)  # skipped
    twin.analyzer.reconfigure(analyzer_spec(twin.rollout))  # what it skips
    twin.analyzer.gates = twin.rollout.gates
    assert encode(rt.analyzer) == encode(twin.analyzer)
    other = many(2)
    other["routes"][0]["rollout"]["steps"] = [30, 60]
    p.rig.load(other)
    snapshot = p.rig.state.snapshot
    assert snapshot is not None
    changed = snapshot.config.route("r0").rollout  # type: ignore[union-attr]
    assert changed is not None
    rt.configure(changed)  # another object: taken
    assert rt.rollout is changed
    assert rt.analyzer.spec_changed
