"""A rollout's weight made the one in force: what the analyzer says goes into the runtime
state (`RuntimeState.set_rollout_weight`), once per change, whatever else swaps the snapshot."""

from __future__ import annotations

from splitproxy.dataplane.state import RuntimeState, Snapshot
from splitproxy.rollout import shadow
from splitproxy.rollout.ledger import RouteRollout


def sync_weight(state: RuntimeState, rt: RouteRollout, now: float) -> None:
    """Make route ``rt``'s rollout weight in ``state`` what its analyzer says (applies
    ``SetWeight``): its weight and candidate revision, rolled back (closed) or not, shadowing
    or not; none while it has no weight.

    What the setting reads is the config, this route's rollout weight in force and those four
    values, so when none changed there is nothing to do. The snapshot itself is not compared:
    every other route's weight change swaps it (a tick makes dozens, hundreds at a step
    boundary) and keeps both this route's weight object and the config, so comparing it sent
    nearly every route of a tick through the setting again."""
    snapshot = state.snapshot
    if snapshot is None:
        return
    a = rt.analyzer
    phase = a.phase
    closed, mirror = phase == "rolled_back", phase == "waiting" and shadow.holding(a)
    (config, have), synced = rt.synced
    if (
        config is not snapshot.config
        or have is not snapshot.rollout_weights.get(rt.name)
        or synced != (a.weight, a.revision, closed, mirror)
    ):
        synced = (a.weight, a.revision, closed, mirror)
        _set_weight(state, rt, snapshot, now, closed, mirror)
        now_in = state.snapshot
        assert now_in is not None  # (a weight set swaps a snapshot in, never out)
        rt.synced = ((now_in.config, now_in.rollout_weights.get(rt.name)), synced)


def _set_weight(
    state: RuntimeState, rt: RouteRollout, snap: Snapshot, now: float, closed: bool, mirror: bool
) -> None:
    if rt.route_in(snap.config) is None:
        return
    a = rt.analyzer
    have = snap.rollout_weights.get(rt.name)
    if a.weight is None or a.revision is None:
        if have is not None:
            state.clear_rollout_weight(rt.name)
        return
    want = round(a.weight, 2)
    got = None if have is None else (have.percent, have.candidate, have.closed, have.shadow)
    if got != (want, a.revision, closed, mirror):
        state.set_rollout_weight(rt.name, want, now, a.revision, closed=closed, shadow=mirror)
