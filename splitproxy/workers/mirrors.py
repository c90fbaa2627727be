"""Mirrored answers handed from a follower to the leader (workers and replicas alike).

A shadow phase judges the candidate's answers to mirrored copies (`rollout.mirrored`). With
several processes, each one's recorder tallies its own copies; a follower takes its tallies
with every harvest of buckets and the leader adds them to its own, so the leader's shadow
sees every process's copies, each once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from splitproxy.rollout.mirrored import MirrorTally

if TYPE_CHECKING:
    from splitproxy.metrics import Recorder


def take_tallies(recorder: Recorder, routes: list[str]) -> dict[str, MirrorTally]:
    """Each route's tally with answers since the previous take; its tally starts again from
    zero (so no answer is sent twice). Routes without mirrored answers are left out."""
    out: dict[str, MirrorTally] = {}
    for route in routes:
        stats = recorder.mirror_stats(route)
        if stats is not None and stats.tally.answered:
            out[route], stats.tally = stats.tally, MirrorTally()
    return out


def merge_tallies(recorder: Recorder, mirrors: Mapping[str, MirrorTally]) -> None:
    """Add a follower's tallies to this process's (routes it does not mirror are skipped:
    a reload may have reached one process first)."""
    for route, tally in mirrors.items():
        stats = recorder.mirror_stats(route)
        if stats is not None:
            stats.tally.merge(tally)
