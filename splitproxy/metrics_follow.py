"""How the `metrics.Recorder` follows the routing snapshots (its series, windows, A/B tables
and mirror counts), redoing only what a swap changed.

With 10,000 routes the full pass (a series and a window per route and version, the mirrored
set, every series' window) held the event loop 25-30 ms at every swap, whichever route it
touched. A swap that removes no route redoes only the routes `swapdiff.changed_routes` names;
one that removes a route, or comes after a late request (on an older snapshot) counted a
route no longer served, takes the full pass, which drops what is gone. Either way the state
is what the full pass gives (tests/unit/test_metrics_follow.py checks it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from splitproxy.config.mirror import may_mirror
from splitproxy.dataplane.swapdiff import changed_routes

if TYPE_CHECKING:
    from splitproxy.config import RoutingConfig
    from splitproxy.dataplane.abgoals import AbBook
    from splitproxy.dataplane.state import Snapshot
    from splitproxy.rollout.windows import Windows


class FollowsSnapshots(ABC):
    """The Recorder's part that follows the snapshots (`on_swap`)."""

    windows: Windows
    ab: AbBook
    _series: dict[tuple[str, str], Any]  # metrics_series.Series
    _mirrors: dict[str, Any]  # metrics.MirrorStats
    _followed: Snapshot | None = None  # the snapshot the series follow
    _stray = False  # a series was made for a route the followed snapshot has not
    # the latest routing config asked about, and whether any of its routes runs an A/B test
    _ab_of: tuple[RoutingConfig | None, bool] = (None, False)

    @abstractmethod
    def _get(self, route: str, version: str) -> Any:
        """The series of ``route``'s ``version`` (made when first asked; the Recorder's)."""

    @abstractmethod
    def _mirror_stats(self) -> Any:
        """A route's new, empty mirror statistics (the Recorder's)."""

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: series for its routes, windows of removed routes dropped."""
        diff = changed_routes(old, new) if old is not None and old is self._followed else None
        self._followed = new
        if diff is None or diff.removed or self._stray:
            self._follow_all(new)
            return
        for name in diff.changed:
            self._follow_route(new, name)
            series = (self._series.get((name, v)) for v in ("stable", "candidate"))
            for one in series:
                if one is not None and one.version is not None:
                    one.window = self.windows.window(name)
        # the A/B routes as compiled now (a leader's global tables find theirs by identity);
        # nothing to do for a file without A/B tests while the book holds none (a walk of
        # every route on each of a tick's weight changes)
        if self._runs_ab(new.config) or self.ab.holds_any():
            self.ab.configure(new.routes)
        changed = set(diff.changed)
        kept = {n for n in self._mirrors if n not in changed}
        mirrored = kept | {n for n in changed if _mirrors(new, n)}
        if mirrored != self._mirrors.keys():
            self._mirrors = {
                n: self._mirrors.get(n) or self._mirror_stats() for n in sorted(mirrored)
            }

    def _follow_route(self, new: Snapshot, name: str) -> None:
        route = new.route(name)
        assert route is not None
        self._get(name, "stable")  # series exist (at zero) from the start: rate() needs that
        if route.candidate is not None:
            self._get(name, "candidate")

    def _runs_ab(self, config: RoutingConfig) -> bool:
        """Does any route of ``config`` run an A/B test (``rollout.ab``, what compiles into a
        route's ``ab``)? Known once per config: a snapshot's weight changes keep its config."""
        seen, runs = self._ab_of
        if seen is not config:
            runs = any(r.rollout is not None and r.rollout.ab is not None for r in config.routes)
            self._ab_of = (config, runs)
        return runs

    def _follow_all(self, new: Snapshot) -> None:
        self._stray = False
        names = {r.name for r in new.routes}
        self.windows.retain(names)
        self.ab.configure(new.routes)
        for route in new.routes:
            self._follow_route(new, route.name)
        mirrored = {r.name for r in new.config.routes if may_mirror(r) and r.name in names}
        self._mirror_table(mirrored)
        for (name, _), series in self._series.items():
            if series.version is not None:
                series.window = self.windows.window(name) if name in names else None

    def _mirror_table(self, mirrored: set[str]) -> None:
        """The mirror counts of ``mirrored`` routes, in name order; kept where they were."""
        self._mirrors = {n: self._mirrors.get(n) or self._mirror_stats() for n in sorted(mirrored)}


def _mirrors(snapshot: Snapshot, name: str) -> bool:
    model = snapshot.config.route(name)
    return model is not None and may_mirror(model)
