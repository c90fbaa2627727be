"""Which routes a snapshot swap changed, so that its followers redo only those (pure).

A follower of the snapshots (health, metrics, mirror) used to rebuild its state for every
route at each swap, on the event loop: with 10,000 routes that held serving for hundreds of
milliseconds whichever route a reload touched. `changed_routes` names the routes whose
definition may differ, from object identity alone: a route compiled from a definition equal
to the previous one keeps its compiled backends (`state.compile_snapshot` reuses them, and a
weight change or a carried-over override only replaces the weight), so backend plans that are
the *same objects* mean the same definition; anything else counts as changed. A follower may
then keep its state for every other route.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress
from operator import is_not

from splitproxy.dataplane.routing import BackendPlan
from splitproxy.dataplane.state import Snapshot


@dataclass(frozen=True, slots=True)
class SwapDiff:
    """What a swap from ``old`` to ``new`` changed, by route name."""

    changed: tuple[str, ...]  # in ``new``: added, or defined or compiled anew (in new's order)
    removed: tuple[str, ...]  # in ``old`` only
    renamed: bool  # the list of names differs (moved, added or removed): an order to rebuild


def changed_routes(old: Snapshot, new: Snapshot) -> SwapDiff:
    """The routes of ``new`` whose compiled backends are not those of ``old``, and the
    routes ``old`` had that ``new`` has not. O(routes) identity checks, no comparison; every
    follower of one swap asks for the same pair, so the answer is computed once."""
    for key, held, diff in _LAST:
        if held is new and key == id(old):
            return diff  # (``new`` is held, so the ``old`` it replaced is the same object)
    diff = _diff(old, new)
    _LAST[:] = [(id(old), new, diff)]
    return diff


_LAST: list[tuple[int, Snapshot, SwapDiff]] = []  # the latest pair asked about


def _diff(old: Snapshot, new: Snapshot) -> SwapDiff:
    before, after = old.routes, new.routes
    changed: list[str] = []
    if len(before) == len(after):  # the usual reload: the same routes in the same order
        # the places whose compiled route is another object, found in C: a rollout's weight
        # change swaps one route of thousands, and a tick may make hundreds of them
        for i in compress(range(len(after)), map(is_not, before, after)):
            a, b = before[i], after[i]
            if a.name != b.name:  # moved, added or removed: the general case below
                changed = []
                break
            if a.stable is not b.stable or a.candidate is not b.candidate:
                changed.append(b.name)
        else:
            return SwapDiff(tuple(changed), (), False)
    for route in after:
        was = old.route(route.name)
        if was is None or was.stable is not route.stable or was.candidate is not route.candidate:
            changed.append(route.name)
    removed = tuple(r.name for r in before if new.route(r.name) is None)
    return SwapDiff(tuple(changed), removed, True)  # some name moved, came or went


class UpstreamKeys:
    """`state.upstream_keys` of each snapshot followed, kept as a count of the routes naming
    each address: a swap updates the counts of the routes it changed, so that a reload that
    edits one route of 10,000 does not walk the others (the pool janitor's 10-30 ms per swap
    on the event loop). Warm and reverted backends (a few) are added each time."""

    def __init__(self) -> None:
        self._of: Snapshot | None = None
        self._routes: dict[str, tuple[tuple[str, int], ...]] = {}  # route -> its addresses
        self._counts: Counter[tuple[str, int]] = Counter()

    def follow(self, old: Snapshot | None, new: Snapshot) -> set[tuple[str, int]]:
        """The upstream addresses ``new`` names."""
        if old is None or old is not self._of:
            self._routes, self._counts = {}, Counter()
            names: Iterable[str] = (route.name for route in new.routes)
        else:
            diff = changed_routes(old, new)
            for name in diff.removed:
                self._drop(self._routes.pop(name))
            names = diff.changed
        for name in names:
            route = new.route(name)
            assert route is not None
            named = tuple(
                target.key
                for plan in (route.stable, route.candidate)
                if plan is not None
                for target in plan.targets
            )
            self._drop(self._routes.get(name, ()))
            self._counts.update(named)
            self._routes[name] = named
        self._of = new
        keys = set(self._counts)
        for backend in (*new.warm.values(), *new.reverts.values()):
            keys.update(target.key for target in BackendPlan.from_model(backend).targets)
        return keys

    def _drop(self, named: tuple[tuple[str, int], ...]) -> None:
        """A route no longer names these addresses: an address no route names is gone."""
        counts = self._counts
        for key in named:
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
