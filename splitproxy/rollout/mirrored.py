"""The candidate's answers to mirrored copies, tallied for the rollout analyzer (pure).

The recorder adds every copy that was sent (``dataplane/mirror.py`` reports a
`MirrorOutcome`) to its route's `MirrorTally`; the controller takes the tally once per tick
as a `messages.MirrorSample`, which the analyzer's shadow seam (`splitproxy.rollout.shadow`)
folds into its evidence. Copies that were never sent (``dropped``, ``skipped``) are not
answers: they are counted by the recorder alone.

Latencies go into a `LatencySketch`, so the sample's histogram has the bucket layout of the
live windows' (the threshold checks read both alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitproxy.rollout.messages import MirrorSample
from splitproxy.rollout.sketch import LatencySketch

if TYPE_CHECKING:
    from splitproxy.dataplane.mirror_compare import MirrorOutcome


class MirrorTally:
    """The copies answered since the tally was last taken (see the module docstring)."""

    __slots__ = ("answered", "compared", "diverged", "errors", "latency")

    def __init__(self) -> None:
        self.answered = self.errors = self.compared = self.diverged = 0
        self.latency = LatencySketch()

    def add(self, outcome: MirrorOutcome) -> None:
        """One copy that was sent: an error when it got no answer or a 5xx (as a user
        request's answer would count), compared when it got any answer."""
        self.answered += 1
        status = outcome.mirror_status
        if status is None or status >= 500:
            self.errors += 1
        if outcome.result in ("match", "diverged"):
            self.compared += 1
            self.diverged += outcome.result == "diverged"
        self.latency.add(outcome.mirror_latency)

    def take(self) -> MirrorSample:
        """What was tallied so far, as a sample; the tally starts again from zero."""
        sample = MirrorSample(
            self.answered, self.errors, self.compared, self.diverged, self.latency.histogram()
        )
        self.answered = self.errors = self.compared = self.diverged = 0
        self.latency = LatencySketch()
        return sample
