"""The pass in slices (`rollout.pacing`): a slice stops once it used its budget, overrunning by
at most one item; a paced pass steps every item once, in order, and lets the loop run between
two slices; ``proceed`` ends it between two slices. The clock is driven by the steps."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.rollout.pacing import Pass, Ticker, run_paced, run_slice


class Stopwatch:
    """A monotonic clock that moves only when a step says it took time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def slices_of(costs: list[float] | list[int], budget: float) -> list[list[int]]:
    """The slices `run_slice` makes of items costing ``costs`` (item i's cost spent in its step)."""
    clock = Stopwatch()

    def step(i: int) -> None:
        clock.t += costs[i]

    items = list(range(len(costs)))
    out: list[list[int]] = []
    at = 0
    while at < len(items):
        end = run_slice(items, at, budget, clock, step)
        out.append(items[at:end])
        at = end
    return out


def test_a_slice_ends_with_the_item_that_used_its_budget_up() -> None:
    assert slices_of([0.001] * 12, 0.0045) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


def test_a_slow_item_overruns_its_slice_by_itself_only() -> None:
    # the 50 ms item ends the slice it is in; the next slice starts afresh
    assert slices_of([0.001, 0.05, 0.001, 0.001, 0.001], 0.003) == [[0, 1], [2, 3, 4]]


def test_a_slice_steps_at_least_one_item_even_with_no_budget() -> None:
    assert slices_of([0.0, 0.1, 0.0], 0.0) == [[0], [1], [2]]


@given(st.lists(st.integers(0, 20), max_size=60), st.integers(0, 10))
def test_slices_partition_the_items_and_stay_within_budget_plus_one_item(
    costs: list[int], budget: int
) -> None:  # whole microseconds: exact sums
    slices = slices_of(costs, budget)
    assert [i for s in slices for i in s] == list(range(len(costs)))
    for s in slices:
        spent = [costs[i] for i in s]
        assert s
        # every item but the last found the budget not yet used up
        assert sum(spent[:-1]) < budget or len(s) == 1
        if s[-1] != len(costs) - 1:  # a slice ended early only once its budget was used
            assert sum(spent) >= budget


async def test_the_loop_runs_between_two_slices_and_every_item_is_stepped_once() -> None:
    clock = Stopwatch()
    seen: list[str] = []
    done = False

    def step(i: int) -> None:
        clock.t += 0.001
        seen.append(f"step {i}")

    async def other() -> None:
        while not done:
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(other())
    await asyncio.sleep(0)
    seen.clear()
    finished = await run_paced(
        list(range(7)), step, budget=0.0025, clock=clock, proceed=lambda: True
    )
    done = True
    await task
    assert finished
    assert seen[: seen.index("step 6") + 1] == [
        *("step 0", "step 1", "step 2", "other"),
        *("step 3", "step 4", "step 5", "other"),
        "step 6",
    ]


async def test_proceed_is_asked_between_slices_and_ends_the_pass() -> None:
    stepped: list[int] = []
    asked = 0

    def proceed() -> bool:
        nonlocal asked
        asked += 1
        return asked < 3

    finished = await run_paced(
        list(range(10)), stepped.append, budget=0.0, clock=Stopwatch(), proceed=proceed
    )
    assert not finished
    assert stepped == [0, 1, 2]  # asked after slices 1, 2 (yes) and 3 (no)


async def test_a_pass_of_one_slice_never_yields_nor_asks() -> None:
    def proceed() -> bool:
        raise AssertionError("asked")

    stepped: list[int] = []
    assert await run_paced([1, 2], stepped.append, budget=1.0, clock=Stopwatch(), proceed=proceed)
    assert stepped == [1, 2]


def test_a_pass_holds_while_its_config_is_in_force_and_the_replica_leads() -> None:
    config, other = object(), object()
    this = Pass(config)
    assert this.holds(config, True)
    assert not this.holds(other, True)
    assert not this.holds(config, False)
    assert not this.holds(None, True)


async def test_the_ticker_never_overlaps_passes_and_waits_its_interval_after_a_long_one() -> None:
    loop = asyncio.get_running_loop()
    spans: list[tuple[float, float]] = []
    settled: list[float] = []
    running = 0

    async def long_pass() -> None:  # three times the interval
        nonlocal running
        running += 1
        assert running == 1
        started = loop.time()
        await asyncio.sleep(0.03)
        spans.append((started, loop.time()))
        running -= 1

    ticker = Ticker(long_pass, 0.01, after=lambda: settled.append(loop.time()))
    ticker.start()
    while len(settled) < 3:
        await asyncio.sleep(0.005)
    await ticker.stop()
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started - ended >= 0.009  # the interval after the previous pass, never within it
    assert len(settled) >= 3  # ``after`` each pass, once it ended
    assert all(end <= at for (_, end), at in zip(spans, settled, strict=False))


async def test_a_failing_pass_is_logged_and_the_ticker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    settled = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("a bug")

    def after() -> None:
        nonlocal settled
        settled += 1

    ticker = Ticker(flaky, 3600.0, after=after)
    ticker.start()
    for _ in range(2):
        ticker.wake()
        for _ in range(20):
            await asyncio.sleep(0)
    await ticker.stop()
    assert (runs, settled) == (2, 1)  # the failed pass settles nothing; the next one runs
    assert "rollout tick failed" in caplog.text
