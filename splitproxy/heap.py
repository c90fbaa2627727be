"""The garbage collector in a long-running proxy: keep its full collections off the event loop.

CPython's full (generation 2) collection walks every object the collector tracks and holds the
interpreter meanwhile, so every request in flight waits for it. A proxy that keeps rollout
state for 1,000 routes tracks about a million objects (`benchmarks/controller_tick.py`), and a
full collection of them holds the loop for hundreds of milliseconds. Objects alive for good
(the config, the routes' rollout state) need not be walked again and again: `gc.freeze` moves
every object alive out of the collector's sight. Frozen objects are still freed by reference
counting when dropped; only cyclic garbage among them is never collected.

Two moments settle the heap: a config swap (`reload.Reloader`, with the collector paused while
the file loads: `collector_paused`) and each pass of the rollout controller's background loop
(`settle_after_pass`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

# Every this many settlings (about 10 minutes of controller passes), the frozen objects go back
# to the collector and one full collection runs, right after a pass: see `Settler`.
FULL_EVERY: Final = 600


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection while a file loads, compiles and is swapped in.

    CPython's full collection walks every object and holds the interpreter meanwhile, so
    the event loop stops for its length. Loading 1 MB of YAML builds a node per value (about
    a million objects, dropped at the end) and the new config's tens of thousands of objects
    add a quarter to the heap: left to itself the collector ran two to four full
    collections per such reload, each 100-300 ms. Paused, reference counting frees the
    nodes (they hold no cycles). After the swap the reloader does not collect: it freezes
    the heap (`settle_heap`). Only the reload worker pauses it, one reload at a time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle_heap() -> None:
    """After a swap: move every object alive now out of the collector's sight (`gc.freeze`).

    A full collection walks every object and holds the interpreter meanwhile: with a
    10,000-route config it took 350-400 ms, a stall for every request in flight, whether it
    ran right after the swap (as it used to) or later on its own (the new config's objects
    count toward the next one). Frozen objects are never walked again; they are still freed
    by reference counting when dropped (the replaced config is: a reload leaves no cycles,
    measured 0 cyclic objects per reload), so the collector's work stays that of the objects
    made since the last reload. The price: cyclic garbage alive at this instant is never
    collected; there is next to none (the reload's own objects hold no cycles), and objects
    frozen while alive must not end in cycles: a client or upstream connection open at a
    reload lets go of its parser and transport when it closes, so it is freed then."""
    gc.freeze()


def settle_after_pass() -> None:
    """After a pass of the rollout controller: collect the young generations, then freeze.

    The passes, and the traffic they read, keep making objects that live for seconds to
    minutes (each route's buckets, samples, histories); what outlives two young collections
    counts toward the next full one, and with 1,000 routes under rollout one came every minute
    or two and held the loop 0.2-0.6 s of CPU, walking over a million objects
    (`benchmarks/README.md`, "Pacing"). Frozen after each pass, the objects a full collection
    walks are only those made since the last pass. The young collection first (a few thousand
    objects, about a millisecond) frees the cyclic garbage among the youngest objects rather
    than freezing it. A frozen object that later ends in a cycle is never freed: the
    controller's state makes no cycles (0 cyclic objects left after 130 passes over 1,000
    routes) and neither do the connections (they let go of their parser and transport when
    lost: `benchmarks/cyclic_garbage.py`, 0 per connection), the reason this is safe."""
    gc.collect(1)
    settle_heap()


class Settler:
    """`settle_after_pass`, with a full collection every ``full_every`` calls instead.

    Freezing after every pass trades the full collections for a promise: that nothing frozen
    while alive later ends in a reference cycle, since such garbage is never collected. The
    connections and the controller keep it (tested), but the proxy also runs aiohttp (admin
    API, hooks, synthetic traffic) and will run code not written yet. So every ``full_every``
    passes the heap is unfrozen and collected in full, then frozen again: whatever garbage
    hid among the frozen objects is freed within about 10 minutes, for one full collection
    (one stall of its length, at a known moment: right after a pass) per ``full_every``
    passes, where the collector left alone ran one every minute or two with 1,000 routes."""

    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.passes = 0
        self.full_collections = 0

    def __call__(self) -> None:
        self.passes += 1
        if self.passes % self.full_every:
            settle_after_pass()
            return
        gc.unfreeze()
        gc.collect()
        self.full_collections += 1
        settle_heap()


__all__ = ["FULL_EVERY", "Settler", "collector_paused", "settle_after_pass", "settle_heap"]
