"""`Ticker.stop` ends the loop even when the cancel lands in the same turn as a wake: on
Python 3.11 `asyncio.wait_for` then returned the finished wait and dropped the cancel, so the
loop went on, and `stop` (with a server's shutdown) waited for good."""

from __future__ import annotations

import asyncio

from splitproxy.rollout.pacing import Ticker


async def test_a_stop_in_the_same_turn_as_a_wake_ends_the_loop() -> None:
    async def run() -> None:
        pass

    ticker = Ticker(run, interval=60.0)
    ticker.start()
    await asyncio.sleep(0)  # the loop waits for a wake (or the minute)
    ticker.wake()  # the wait ends...
    await stopped(ticker)  # ...and the cancel lands in that turn


async def test_a_stop_while_waiting_and_after_a_pass_ends_the_loop() -> None:
    ran = asyncio.Event()

    async def run() -> None:
        ran.set()

    ticker = Ticker(run, interval=60.0)
    ticker.start()
    ticker.wake()
    async with asyncio.timeout(2):
        await ran.wait()
    await asyncio.sleep(0.01)  # back to waiting
    await stopped(ticker)


async def stopped(ticker: Ticker) -> None:
    """Fail unless ``ticker.stop()`` returns within 2 s. (`asyncio.wait`: a timeout that
    cancelled the waiting `stop` would cancel the loop a second time and end it, hiding a
    first cancel the loop dropped.)"""
    stopping = asyncio.ensure_future(ticker.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    if not done:
        stopping.cancel()
    assert done, "stop did not return: the loop went on after its cancel"
