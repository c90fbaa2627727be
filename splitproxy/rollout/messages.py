"""What goes into the rollout analyzer and what comes out of it (pure value types).

`Observation` is one tick's input: the candidate the routing file names, the traffic as
`Sample` cells, the human's commands (`ManualCommand`), the gating hooks' answers
(`GateResult`), the external checks' values and the candidate's health (`CandidateHealth`).
An `Action` is one tick's output: `SetWeight`, `CallHook` or `Emit` (an `Event` for the
ledger, carrying the `CheckResult` values behind it). The machine that turns one into the
other is `splitproxy.rollout.analyzer`; how the evidence is weighed,
`splitproxy.rollout.evidence`; how these values are written to and read from saved state,
`splitproxy.rollout.codec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from splitproxy.config import LATENCY_QUANTILES
from splitproxy.config.vocabulary import Gate, Version
from splitproxy.dataplane.abgoals import AbCounts
from splitproxy.dataplane.health import CandidateHealth

if TYPE_CHECKING:
    from splitproxy.rollout.phases import Phase, Trigger

# --- inputs -----------------------------------------------------------------------------------

Command = Literal["promote", "rollback", "pause", "resume", "retry"]
Histogram = tuple[tuple[float, int], ...]


class Sample(NamedTuple):
    """What one version served during one tick, for one candidate probability and path class.

    ``p`` is the probability that a unit was routed to the candidate when these requests were
    routed (the weight / 100), or None for requests not routed at random. ``latency`` is a
    sparse histogram: ``(upper bound in seconds, count)`` pairs of a bucket layout shared by
    both versions.

    On a sticky route, ``unit_errors`` of the ``errors`` came from requests routed by a
    sticky key (a user), and ``units`` names those users (distinct ids of their keys; fewer
    than ``unit_errors`` when a user failed twice, or when the window's per-bucket table was
    full). The comparison with stable counts each user's first error once (`units.UnitTable`):
    a user's requests all go where its key goes, so they are not independent draws.

    A named tuple, not a frozen dataclass: the controller makes about ten per route per tick
    (a thousand routes: ten thousand a second), and a tuple is made in a third of the time a
    frozen dataclass's ``__init__`` takes (it sets each field through ``object.__setattr__``).
    Immutable and compared by value all the same.
    """

    version: Version
    requests: int = 0
    errors: int = 0
    p: float | None = None
    path_class: str | None = None
    latency: Histogram = ()
    unit_errors: int = 0
    units: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ManualCommand:
    """A human's command (admin API or CLI)."""

    command: Command
    source: str = "admin"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GateResult:
    """The outcome of a `CallHook` (``step`` echoes the hook's step)."""

    gate: Gate
    step: int
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """How a blue/green test job (a `RunTest`) ended: ``attempt`` echoes the action's;
    ``detail`` is its exit code and the tail of its output."""

    __test__ = False  # a value type, not a test case (for pytest's collector)

    attempt: int
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MirrorSample:
    """The candidate's answers to mirrored copies since the previous tick (see
    `splitproxy.rollout.shadow`): ``answered`` copies sent (with or without an answer),
    ``errors`` among them (no answer, or a 5xx), ``compared`` (an answer compared with the
    user's) and ``diverged`` among those, and the answers' latency histogram."""

    answered: int = 0
    errors: int = 0
    compared: int = 0
    diverged: int = 0
    latency: Histogram = ()


class Observation(NamedTuple):
    """Everything the analyzer learns in one tick.

    ``candidate`` identifies the candidate the routing file names now (its revision, or a
    digest of its URLs when it has none), None when there is no candidate. ``external`` maps
    an external check's name to the value it produced since the previous tick (None when
    the query failed or gave nothing); a web check without ``json_path`` reports 1.0 for a
    2xx answer and 0.0 otherwise. ``health``: the candidate's readiness and availability
    now (None: not known, which counts as ready and healthy; see `readiness`). The controller's
    ``samples`` are a `samples.BucketFeed`: its live buckets, which `Evidence.fold` folds as
    they are (``tally``) and which read as a sequence are their samples.

    A named tuple, like `Sample`: the controller makes one per route per tick.
    """

    candidate: str | None
    samples: Sequence[Sample] = ()
    commands: Sequence[ManualCommand] = ()
    gates: Sequence[GateResult] = ()
    external: Mapping[str, float | None] = MappingProxyType({})  # read only: one for all
    health: CandidateHealth | None = None
    tests: Sequence[TestOutcome] = ()
    mirror: MirrorSample | None = None  # None: no copies go to the candidate now
    ab: AbCounts | None = None  # an A/B test's users and conversions since the last tick


# --- outputs ----------------------------------------------------------------------------------

Verdict = Literal["pass", "fail", "no_data"]
CheckKind = Literal["threshold", "compare", "guard", "external", "health"]
# What a check's value (and its min/max) is measured in: a fraction of requests (error or
# success rate), seconds (a latency quantile), requests per second, or an e-value (the
# comparisons and the guard); None: a number of the user's (an external check).
Unit = Literal["fraction", "seconds", "per_second", "e_value"]


def bounded_verdict(value: float | None, low: float | None, high: float | None) -> Verdict:
    """A threshold's verdict: no value is no data; outside ``[low, high]`` fails."""
    if value is None:
        return "no_data"
    if (low is not None and value < low) or (high is not None and value > high):
        return "fail"
    return "pass"


def metric_unit(metric: str) -> Unit | None:
    """The unit of a built-in metric's values (`MetricCheck.metric`)."""
    if metric in ("error_rate", "success_rate", "mirror_divergence"):
        return "fraction"
    if metric in LATENCY_QUANTILES:
        return "seconds"
    if metric == "request_rate":
        return "per_second"
    return None


class CheckResult(NamedTuple):
    """One check as judged on one tick.

    ``name`` is the check's label (its ``name:``, or the metric's); ``metric`` what it
    measures (``error_rate``, ``latency_p99``, ``latency`` for a latency comparison; None for
    an external check) and ``unit`` what ``value``, ``min`` and ``max`` are in. ``ci``, for a
    comparison shown as evidence, is the one-sided anytime-valid confidence interval
    ``[lower, inf)`` for the candidate/stable rate ratio, from inverting the very e-process
    that decides at the same α: its lower end is above 1 whenever the comparison fails. (A
    state saved by an older version may hold two-sided intervals and no metric.)

    A named tuple, like `Sample`: the tick judges every check of every route every second, and
    a tuple of eleven fields is made in a third of a frozen dataclass's time (change one field
    with ``_replace``).
    """

    name: str
    kind: CheckKind
    value: float | None
    min: float | None
    max: float | None
    sample: int
    verdict: Verdict
    detail: str = ""
    ci: tuple[float, float] | None = None
    metric: str | None = None
    unit: Unit | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (the ledger's and saved state's form; see `codec`)."""
        out = self._asdict()
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A decision, a transition or a refusal, with the evidence behind it.

    ``trigger`` is the row of `phases.TRANSITIONS` that fired for a transition (None for an
    event that moves no phase: a failed check window, a closed gate, a refusal, the
    controller's own notes)."""

    at: float
    route: str
    kind: str
    phase: Phase
    previous: Phase
    step: int  # 1-based; 0 before the first step
    weight: float | None
    revision: str | None
    message: str
    source: str = "analyzer"
    checks: tuple[CheckResult, ...] = ()
    trigger: Trigger | None = None
    ab: Mapping[str, Any] | None = None  # an A/B test's result (`rollout.ab.result`)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain data (the ledger's and saved state's form; see `codec`)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in _APART}
        out["checks"] = [c.to_dict() for c in self.checks]
        if self.ab is not None:
            out["ab"] = self.ab
        return out


_APART = ("checks", "ab")


@dataclass(frozen=True, slots=True)
class SetWeight:
    """Route ``percent`` of the traffic to the candidate; None: the file's weight applies."""

    percent: float | None


@dataclass(frozen=True, slots=True)
class CallHook:
    """Run the gating hook ``gate`` before step ``step`` (1-based; promotion: steps + 1) and
    report a `GateResult` with the same gate and step."""

    gate: Gate
    step: int


@dataclass(frozen=True, slots=True)
class RunTest:
    """Run the rollout's test job against the candidate (blue/green, before the switch) and
    report a `TestOutcome` with the same ``attempt``; a newer attempt replaces an older one."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Emit:
    """Record ``event`` in the ledger (and send it to event hooks)."""

    event: Event


Action = SetWeight | CallHook | RunTest | Emit
