"""Settling the heap (`splitproxy.heap`): what is alive goes out of the collector's sight, the
young cyclic garbage is collected first rather than frozen, and the collector paused while a
file loads comes back as it was."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from splitproxy.heap import Settler, collector_paused, settle_after_pass


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test's freezes undone afterwards: the objects go back in the collector's sight."""
    try:
        yield
    finally:
        gc.unfreeze()


def tracked(obj: object) -> bool:
    """Whether a collection would walk ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.mark.usefixtures("unfrozen")
def test_after_a_pass_the_living_are_frozen_and_young_cycles_are_freed_not_frozen() -> None:
    kept = Node()
    cycle = Node()
    cycle.other = cycle  # garbage only a collection frees
    gone = weakref.ref(cycle)
    del cycle
    assert gone() is not None
    assert tracked(kept)
    settle_after_pass()
    assert gone() is None  # collected by the young collection, before the freeze
    assert not tracked(kept)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("unfrozen")
def test_a_frozen_object_is_still_freed_by_reference_counting() -> None:
    node = Node()
    ref = weakref.ref(node)
    settle_after_pass()
    del node
    assert ref() is None


def test_the_collector_paused_comes_back_as_it_was() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.usefixtures("unfrozen")
def test_garbage_frozen_while_alive_is_freed_by_the_periodic_full_collection() -> None:
    settle = Settler(full_every=3)
    node = Node()
    node.other = node
    ref = weakref.ref(node)
    settle()  # frozen while alive
    del node  # now a cycle among frozen objects: no young collection sees it
    settle()
    assert ref() is not None
    assert settle.full_collections == 0
    settle()  # the third: unfrozen, collected in full, frozen again
    assert ref() is None
    assert settle.full_collections == 1
    assert gc.get_freeze_count() > 0
