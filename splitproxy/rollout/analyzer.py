"""The rollout analyzer: a pure, sans-IO state machine that decides a canary's fate.

Theory of operation
-------------------
One `Analyzer` looks after one route. It never reads a clock, a socket or a file: the caller
(``control.py``) ticks it, about once a second, with the time and what happened since the
previous tick, and gets back a list of actions to carry out::

    actions = analyzer.tick(now, Observation(candidate="2.4.0", samples=...))

Everything it knows arrives through `Observation`, and everything it wants done leaves as an
`Action`: `SetWeight` (the candidate's share; ``None`` hands the route back to the routing
file's static weight), `CallHook` (run a gating hook and report the result in a later
`Observation` as a `GateResult`) and `Emit` (a decision for the ledger, with its evidence).
Given the same ticks it makes the same decisions, so a unit test drives a whole rollout,
hours of it, in microseconds and without sleeping.

*Phases.* ``idle`` (no rollout: the file's weight applies), ``progressing`` (a step is
running), ``waiting`` (a gate, a hook or a pause step holds the next move), ``paused`` (a
human, an incident or ``max_duration`` froze the weights), ``promoted`` (all traffic on the
candidate until the file names it stable) and ``rolled_back`` (all traffic on stable until a
new revision or ``retry``). The only moves are those in `TRANSITIONS`, a table kept as data
at the top of this file: ``TRANSITIONS[phase][trigger] -> next phase``. A move that is not
in the table is a bug, and the analyzer raises rather than guess. A manual command that the
table does not allow in the current phase is refused, and the refusal goes to the ledger
(`Analyzer.accepts` answers the same question in advance, for a 409).

*Lifecycle.* A rollout starts when the observation names a candidate revision that the
analyzer has not finished. It restarts from the first step, with fresh statistics, when the
revision changes mid-rollout or when the rollout spec changes. A promoted or rolled-back
revision stays so until the file names another one; ``retry`` starts a rolled-back revision
again. The tick on which a rollout (re)starts is not used as evidence: its requests were
routed under the previous regime.

*Steps.* Each step holds a weight for at least ``interval`` **and** ``min_requests``
candidate requests, so a quiet service is judged on samples, not minutes. When both are met
the absolute checks (thresholds on the candidate's error rate, success rate, latency
quantiles, request rate, and the external checks' latest values) are judged over the step's
window. All pass: next step (through the ``step`` gate, if one is configured), or promotion
after the last one (through ``confirm-promotion``). Any fails: the failure counts, the
window starts again, and the rollout rolls back once more than ``failure_limit`` windows
have failed (Argo's ``failureLimit``). A window without candidate traffic, or a check
without a value, follows ``on_no_data``: ``hold`` waits, ``fail`` counts a failure. A
rollout that has been progressing longer than ``max_duration`` pauses for a human.

*Statistics.* Every tick, not only at the end of a step, three anytime-valid tests are
updated and judged (see `splitproxy.rollout.sequential`); each can roll back at once:

- error rate against stable: randomization-attribution e-processes, pooled and per path
  class, averaged into one;
- latency against stable: attribution e-processes on "slower than stable's trailing q-th
  quantile" for each q (p95 and p99 by default), averaged;
- the guard: a one-sample test that the candidate's error rate is far above the guard's cap.

They share one α per rollout (default 1 %): the guard takes a tenth, the comparison families
split the rest. The e-processes span the whole rollout, across steps, pauses and restarts of
the proxy, so checking them every second costs no validity. When the guard trips and stable's
own error rate over the last minute is above the cap as well, it is an incident, not the
candidate's fault: the rollout pauses instead of rolling back, and the guard starts afresh.

*What comes in.* One tick's traffic is a sequence of `Sample` cells, one per (version,
candidate probability ``p`` in force when the requests were routed, path class), each with
request and error counts and a sparse latency histogram ``((upper bound in seconds, count),
...)``. The bounds must come from one bucket layout shared by both versions (any fixed
layout: log-linear, exponential, a Prometheus-style list). The adapter over ``stats.py`` is
then a loop over the buckets closed since the last tick. The analyzer keeps the rest itself:
stable's trailing latency (about ten minutes, at least 2,000 requests when available) from
which it draws the thresholds for the latency test before it folds in the new tick (the
thresholds must be predictable), and the step's window for the absolute checks. Requests
not routed at random (an override header, synthetic traffic the user wants judged) carry
``p=None``: they count for the absolute checks and the guard, never for the comparisons.
Over ``stats.Window`` the adapter is ``samples.samples_for``: per bucket and version, one
sample per path class (``stats.PathClasses``; the windows' ``~other`` is this analyzer's
overflow slot), one latency sample, and the synthetic requests with ``p=None`` when the
rollout's ``traffic.judge`` says so::

    samples = samples_for(window.observations(last, until=now), judge_synthetic=judge)

with the analyzer built with ``path_class_slots=samples.path_class_slots(windows)``.
`samples_from` is the pooled variant (one class, or none), typed by a narrow protocol
(`BucketLike`) that ``stats.Observation`` satisfies; with it, build the analyzer with
``path_class_slots=0`` so the error test does not reserve half of its weight for classes that
never come.

*Evidence.* After every tick `Analyzer.checks` holds one `CheckResult` per check (value,
bounds, sample size, verdict, and the metric and unit they are in), and every decision is an
`Event` carrying the results that made it. A comparison's evidence carries ``ci``, the
one-sided interval ``[lower, inf)`` for the candidate/stable rate ratio that inverts the
e-process the comparison decides on, at its α: a rollback for "worse than stable" always
shows a lower bound above 1. A closed ``confirm-promotion`` gate is recorded once per wait
(again only when its answer's detail changes); the answers are counted in the status.
`Analyzer.to_dict` / `Analyzer.from_dict` turn the whole state, e-processes included, into
plain JSON-able data, so the proxy can write it atomically after every transition and carry
on where it stopped after a restart (a state saved by an earlier version still loads).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from splitproxy.config import (
    LATENCY_QUANTILES,
    CompareCheck,
    MetricCheck,
    PrometheusCheck,
    Rollout,
    Step,
    WebCheck,
)
from splitproxy.config.vocabulary import GATES, Gate, Version
from splitproxy.rollout.sequential import (
    AlphaSplit,
    AttributionTest,
    PathClassTests,
    RateGuard,
    lower_confidence_bound,
    mean_log_e,
    split_alpha,
)

# --- the transition table ---------------------------------------------------------------------

Phase = Literal["idle", "progressing", "waiting", "paused", "promoted", "rolled_back"]
Trigger = Literal[
    "start",  # a new candidate revision
    "restart",  # a new revision or a new spec mid-rollout: from the first step again
    "restore_promoted",  # a revision promoted earlier shows up again
    "restore_rolled_back",  # a revision rolled back earlier shows up again: it stays so
    "advance",  # the next weight step
    "wait",  # a gate, a gating hook or a pause step holds the next move
    "proceed",  # the gate opened, the hook passed, the pause ended
    "promote",
    "rollback",
    "pause",
    "resume",
    "retry",  # a rolled-back revision, from the first step again
    "abandon",  # the file names no candidate any more
]

PHASES: Final[tuple[Phase, ...]] = (
    "idle",
    "progressing",
    "waiting",
    "paused",
    "promoted",
    "rolled_back",
)

TRANSITIONS: Final[Mapping[Phase, Mapping[Trigger, Phase]]] = MappingProxyType(
    {
        "idle": {
            "start": "progressing",
            "restore_promoted": "promoted",
            "restore_rolled_back": "rolled_back",
            "abandon": "idle",
        },
        "progressing": {
            "advance": "progressing",
            "wait": "waiting",
            "promote": "promoted",
            "rollback": "rolled_back",
            "pause": "paused",
            "restart": "progressing",
            "abandon": "idle",
        },
        "waiting": {
            "proceed": "progressing",
            "promote": "promoted",
            "rollback": "rolled_back",
            "pause": "paused",
            "restart": "progressing",
            "abandon": "idle",
        },
        "paused": {
            "resume": "progressing",
            "promote": "promoted",
            "rollback": "rolled_back",
            "restart": "progressing",
            "abandon": "idle",
        },
        "promoted": {"start": "progressing", "rollback": "rolled_back", "abandon": "idle"},
        "rolled_back": {"start": "progressing", "retry": "progressing", "abandon": "idle"},
    }
)
ACTIVE: Final[frozenset[Phase]] = frozenset({"progressing", "waiting", "paused"})

# --- inputs -----------------------------------------------------------------------------------

Command = Literal["promote", "rollback", "pause", "resume", "retry"]
Histogram = tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """What one version served during one tick, for one candidate probability and path class.

    ``p`` is the probability that a unit was routed to the candidate when these requests were
    routed (the weight / 100), or None for requests not routed at random. ``latency`` is a
    sparse histogram: ``(upper bound in seconds, count)`` pairs of a bucket layout shared by
    both versions.
    """

    version: Version
    requests: int = 0
    errors: int = 0
    p: float | None = None
    path_class: str | None = None
    latency: Histogram = ()


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
class Observation:
    """Everything the analyzer learns in one tick.

    ``candidate`` identifies the candidate the routing file names now (its revision, or a
    digest of its URLs when it has none), None when there is no candidate. ``external`` maps
    an external check's name to the value it produced since the previous tick (None when
    the query failed or gave nothing); a web check without ``json_path`` reports 1.0 for a
    2xx answer and 0.0 otherwise.
    """

    candidate: str | None
    samples: Sequence[Sample] = ()
    commands: Sequence[ManualCommand] = ()
    gates: Sequence[GateResult] = ()
    external: Mapping[str, float | None] = field(default_factory=dict)


# --- outputs ----------------------------------------------------------------------------------

Verdict = Literal["pass", "fail", "no_data"]
CheckKind = Literal["threshold", "compare", "guard", "external"]
# What a check's value (and its min/max) is measured in: a fraction of requests (error or
# success rate), seconds (a latency quantile), requests per second, or an e-value (the
# comparisons and the guard); None: a number of the user's (an external check).
Unit = Literal["fraction", "seconds", "per_second", "e_value"]


def metric_unit(metric: str) -> Unit | None:
    """The unit of a built-in metric's values (`MetricCheck.metric`)."""
    if metric in ("error_rate", "success_rate"):
        return "fraction"
    if metric in LATENCY_QUANTILES:
        return "seconds"
    if metric == "request_rate":
        return "per_second"
    return None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check as judged on one tick.

    ``name`` is the check's label (its ``name:``, or the metric's); ``metric`` what it
    measures (``error_rate``, ``latency_p99``, ``latency`` for a latency comparison; None for
    an external check) and ``unit`` what ``value``, ``min`` and ``max`` are in. ``ci``, for a
    comparison shown as evidence, is the one-sided anytime-valid confidence interval
    ``[lower, inf)`` for the candidate/stable rate ratio, from inverting the very e-process
    that decides at the same α: its lower end is above 1 whenever the comparison fails. (A
    state saved by an older version may hold two-sided intervals and no metric.)
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
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A decision, a transition or a refusal, with the evidence behind it."""

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

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "checks"}
        out["checks"] = [c.to_dict() for c in self.checks]
        return out


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
class Emit:
    """Record ``event`` in the ledger (and send it to event hooks)."""

    event: Event


Action = SetWeight | CallHook | Emit

# --- tuning that is not (yet) in the routing file --------------------------------------------

TRAIL_SLOT: Final = 10.0  # seconds per slot of stable's trailing latency
TRAIL_WINDOW: Final = 600.0  # stable's trailing window for the latency thresholds
TRAIL_MAX_AGE: Final = 3600.0  # kept longer (up to this) while it has too few requests
TRAIL_MIN_REQUESTS: Final = 2000
STABLE_RECENT: Final = 60.0  # the window in which stable "breaches too" (incident)
GUARD_MIN_STABLE: Final = 20  # stable requests needed to call an incident
PATH_CLASS_SLOTS: Final = 10
HISTORY: Final = 100  # events kept in the state (the full ledger is the caller's)
FINISHED_KEPT: Final = 16


def min_threshold_requests(q: float) -> int:
    """Stable requests needed before its q-quantile is a usable latency threshold."""
    return math.ceil(20 / (1 - q))


def hist_add(into: dict[float, int], hist: Iterable[tuple[float, int]], sign: int = 1) -> None:
    for bound, count in hist:
        if count:
            left = into.get(bound, 0) + sign * count
            if left:
                into[bound] = left
            else:
                into.pop(bound, None)


def hist_quantile(hist: Mapping[float, int], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (None when empty)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bound in sorted(hist):
        seen += hist[bound]
        if seen >= rank:
            return bound
    return max(hist)


def hist_above(hist: Iterable[tuple[float, int]], threshold: float) -> int:
    """Requests in buckets above ``threshold`` (a bucket bound): slower than it."""
    return sum(count for bound, count in hist if bound > threshold)


def spec_digest(spec: Rollout) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


# --- the analyzer -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    """The candidate's traffic since the current step window started."""

    start: float = 0.0
    requests: int = 0
    errors: int = 0
    latency: dict[float, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "requests": self.requests,
            "errors": self.errors,
            "latency": [[b, c] for b, c in sorted(self.latency.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Window:
        return cls(
            float(data["start"]),
            int(data["requests"]),
            int(data["errors"]),
            {float(b): int(c) for b, c in data["latency"]},
        )


@dataclass(slots=True)
class _GateWait:
    """The answers a gate has given since the analyzer began waiting for it: one ledger
    event for a closed ``confirm-promotion`` per wait (and one more when its detail
    changes), the rest counted here."""

    since: float | None = None  # when the wait began
    attempts: int = 0  # answers that did not open the gate
    last_at: float | None = None
    last_detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> _GateWait:
        if not data:
            return cls()
        since, last_at = data.get("since"), data.get("last_at")
        return cls(
            None if since is None else float(since),
            int(data.get("attempts", 0)),
            None if last_at is None else float(last_at),
            data.get("last_detail"),
        )


class Analyzer:
    """The rollout state machine of one route (see the module docstring)."""

    def __init__(
        self,
        route: str,
        spec: Rollout,
        *,
        gates: Iterable[Gate] = (),
        path_class_slots: int = PATH_CLASS_SLOTS,
    ) -> None:
        self.route = route
        self.gates: frozenset[Gate] = frozenset(gates)
        unknown = self.gates - set(GATES)
        if unknown:
            raise ValueError(f"unknown gates: {sorted(unknown)}")
        self.path_class_slots = path_class_slots
        self._configure(spec)
        # lifecycle
        self.phase: Phase = "idle"
        self.revision: str | None = None
        self.finished: dict[str, Phase] = {}
        self.step_index = -1  # index into plan; -1 before the first step
        self.weight: float | None = None
        self.started_at: float | None = None
        self.step_started_at: float | None = None
        self.last_now: float | None = None
        self.active_time = 0.0
        self.deadline: float | None = spec.max_duration
        self.failures = 0
        self.pending: Gate | Literal["pause"] | None = None
        self.pending_step = 0
        self.pending_until = math.inf
        self.hook_called_at = 0.0
        self.gate = _GateWait()  # the answers of the gate waited for now
        self.paused_reason: str | None = None
        self.window = _Window()
        self.external: dict[str, tuple[float | None, float]] = {}
        self.history: list[Event] = []
        self.checks: tuple[CheckResult, ...] = ()
        # statistics of the current rollout
        self.errors_test: PathClassTests | None = None
        self.latency_tests: dict[float, AttributionTest] = {}
        self.guard: RateGuard | None = None
        # stable's recent past, kept across rollouts: [slot start, requests, errors, hist]
        self.trail: list[list[Any]] = []
        self._trail_total: dict[float, int] = {}
        self._trail_requests = 0
        self.recent: list[list[float]] = []  # [slot start, stable requests, stable errors]
        self._spec_changed = False
        self._actions: list[Action] = []
        self._now = 0.0

    # --- configuration ------------------------------------------------------------------------

    def _configure(self, spec: Rollout) -> None:
        self.spec = spec
        self.plan: tuple[Step, ...] = spec.plan
        self.spec_hash = spec_digest(spec)
        self.threshold_checks = tuple(c for c in spec.checks if isinstance(c, MetricCheck))
        self.external_checks = tuple(
            c for c in spec.checks if isinstance(c, PrometheusCheck | WebCheck)
        )
        compare = [c for c in spec.checks if isinstance(c, CompareCheck)]
        self.error_compare = next((c for c in compare if c.metric == "error_rate"), None)
        self.latency_compare = next((c for c in compare if c.metric == "latency"), None)
        self.alpha: AlphaSplit = split_alpha(
            spec.alpha,
            error=self.error_compare is not None,
            latency=self.latency_compare is not None,
            guard=spec.guard is not None,
        )

    def reconfigure(self, spec: Rollout) -> None:
        """Take a new rollout spec (a reload). If it differs, a running rollout restarts from
        the first step on the next tick."""
        if spec_digest(spec) == self.spec_hash:
            return
        self._configure(spec)
        self.deadline = spec.max_duration
        self._spec_changed = self.phase in ACTIVE

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.latency_compare.quantiles if self.latency_compare else ()

    def accepts(self, command: Command) -> bool:
        """Would ``command`` be carried out in the current phase?"""
        return self._trigger_for(command) is not None

    def _trigger_for(self, command: Command) -> Trigger | None:
        trigger: Trigger
        if command == "resume":
            trigger = "proceed" if self.phase == "waiting" else "resume"
        else:
            trigger = command
        if command == "retry" and self.revision is None:
            return None
        return trigger if trigger in TRANSITIONS[self.phase] else None

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, now: float, observation: Observation) -> list[Action]:
        """Advance to ``now`` with what happened since the previous tick; return the actions."""
        self._actions = []
        self._now = now
        if self.last_now is not None and self.phase == "progressing":
            self.active_time += max(0.0, now - self.last_now)
        self.last_now = now

        fresh = self._follow_revision(now, observation.candidate)
        thresholds = self._latency_thresholds()
        self._fold(now, observation.samples, thresholds, tests=self.phase in ACTIVE and not fresh)
        for name, value in observation.external.items():
            self.external[name] = (value, now)
        for result in observation.gates:
            self._gate_result(now, result)
        for command in observation.commands:
            self._command(now, command)
        self.checks = self._evaluate(now, thresholds)
        if self.phase in ACTIVE:
            self._judge(now)
        if (
            self.phase == "progressing"
            and self.deadline is not None
            and self.active_time > self.deadline
        ):
            self._pause(now, "max_duration", f"still progressing after {self.deadline:g}s")
        if self.phase in ("progressing", "waiting"):
            self._progress(now)
        actions, self._actions = self._actions, []
        return actions

    # --- revisions ----------------------------------------------------------------------------

    def _follow_revision(self, now: float, candidate: str | None) -> bool:
        """Start, restart, restore or abandon a rollout; True when one began on this tick."""
        if candidate is None:
            if self.phase != "idle":
                self._move(now, "abandon", "abandoned", "the routing file names no candidate")
                self._reset_rollout()
                self.revision = None
                self._set_weight(None)
            return False
        if self._spec_changed:
            self._spec_changed = False
            if self.phase in ACTIVE and candidate == self.revision:
                self._start(now, candidate, "restart", "the rollout spec changed")
                return True
        if self.phase == "idle":
            ended = self.finished.get(candidate)
            if ended is not None:
                self.revision = candidate
                trigger: Trigger = (
                    "restore_promoted" if ended == "promoted" else "restore_rolled_back"
                )
                self._move(now, trigger, "restored", f"{candidate} already ended {ended}")
                self._set_weight(100.0 if ended == "promoted" else 0.0)
                return False
            self._start(now, candidate, "start", f"new candidate {candidate}")
            return True
        if candidate != self.revision:
            again: Trigger = "restart" if self.phase in ACTIVE else "start"
            self._start(now, candidate, again, f"new candidate {candidate}")
            return True
        return False

    def _reset_rollout(self) -> None:
        self.step_index = -1
        self.started_at = None
        self.step_started_at = None
        self.active_time = 0.0
        self.deadline = self.spec.max_duration
        self.failures = 0
        self.pending = None
        self.pending_until = math.inf
        self.paused_reason = None
        self.window = _Window()
        self.external = {}
        self.errors_test = None
        self.latency_tests = {}
        self.guard = None

    def _fresh_tests(self) -> None:
        slots = self.path_class_slots if self.error_compare and self.error_compare.per_path else 0
        self.errors_test = PathClassTests(slots) if self.error_compare else None
        self.latency_tests = {q: AttributionTest() for q in self.quantiles}
        self.guard = RateGuard(self.spec.guard.error_rate) if self.spec.guard else None

    def _start(self, now: float, candidate: str, trigger: Trigger, message: str) -> None:
        self._reset_rollout()
        self.revision = candidate
        self.started_at = now
        self._fresh_tests()
        kind = {"start": "started", "restart": "restarted", "retry": "retried"}[trigger]
        self._move(now, trigger, kind, message)
        if "pre-rollout" in self.gates:
            self._set_weight(0.0)
            self._wait_for(now, "pre-rollout", 0)
        else:
            self._enter_step(now, 0)

    # --- folding one tick's traffic --------------------------------------------------------------

    def _latency_thresholds(self) -> dict[float, float]:
        """Stable's trailing quantiles, from ticks before this one only (predictable)."""
        out: dict[float, float] = {}
        for q in self.quantiles:
            if self._trail_requests >= min_threshold_requests(q):
                c = hist_quantile(self._trail_total, q)
                if c is not None and c != math.inf:
                    out[q] = c
        return out

    def _fold(
        self,
        now: float,
        samples: Sequence[Sample],
        thresholds: Mapping[float, float],
        *,
        tests: bool,
    ) -> None:
        cand_n = cand_x = stab_n = stab_x = 0
        stable_hist: dict[float, int] = {}
        pooled: dict[float, list[int]] = {}  # p -> [candidate errors, stable errors]
        classes: dict[tuple[float, str], list[int]] = {}
        slow: dict[tuple[float, float], list[int]] = {}  # (q, p) -> [candidate, stable]
        for s in samples:
            cand = s.version == "candidate"
            if cand:
                cand_n += s.requests
                cand_x += s.errors
            else:
                stab_n += s.requests
                stab_x += s.errors
                hist_add(stable_hist, s.latency)
            if not tests:
                continue
            if cand:
                self.window.requests += s.requests
                self.window.errors += s.errors
                hist_add(self.window.latency, s.latency)
            if s.p is None or not 0.0 < s.p < 1.0:
                continue
            i = 0 if cand else 1
            if s.errors:
                pooled.setdefault(s.p, [0, 0])[i] += s.errors
                if s.path_class is not None:
                    classes.setdefault((s.p, s.path_class), [0, 0])[i] += s.errors
            if s.latency:
                for q, c in thresholds.items():
                    above = hist_above(s.latency, c)
                    if above:
                        slow.setdefault((q, s.p), [0, 0])[i] += above
        if tests:
            if self.errors_test is not None:
                for p, (x, y) in pooled.items():
                    self.errors_test.pooled.update(p, x, y)
                for (p, name), (x, y) in classes.items():
                    self.errors_test.update_class(p, x, y, name)
            for (q, p), (x, y) in slow.items():
                self.latency_tests[q].update(p, x, y)
            if self.guard is not None:
                self.guard.update(cand_n, cand_x)
        self._trail_add(now, stab_n, stab_x, stable_hist)

    def _trail_add(self, now: float, requests: int, errors: int, hist: dict[float, int]) -> None:
        slot = math.floor(now / TRAIL_SLOT) * TRAIL_SLOT
        if requests or hist:
            if self.recent and self.recent[-1][0] == slot:
                self.recent[-1][1] += requests
                self.recent[-1][2] += errors
            else:
                self.recent.append([slot, requests, errors])
        while self.recent and self.recent[0][0] < now - STABLE_RECENT:
            self.recent.pop(0)
        if hist:
            if self.trail and self.trail[-1][0] == slot:
                hist_add(self.trail[-1][2], hist.items())
                self.trail[-1][1] += sum(hist.values())
            else:
                self.trail.append([slot, sum(hist.values()), dict(hist)])
            hist_add(self._trail_total, hist.items())
            self._trail_requests += sum(hist.values())
        while self.trail:
            oldest_slot, oldest_n, oldest_hist = self.trail[0]
            age = now - oldest_slot
            keep_for_count = self._trail_requests - oldest_n < TRAIL_MIN_REQUESTS
            if age <= TRAIL_WINDOW or (keep_for_count and age <= TRAIL_MAX_AGE):
                break
            self.trail.pop(0)
            hist_add(self._trail_total, oldest_hist.items(), -1)
            self._trail_requests -= oldest_n

    # --- checks -------------------------------------------------------------------------------

    def _evaluate(self, now: float, thresholds: Mapping[float, float]) -> tuple[CheckResult, ...]:
        if self.phase not in ACTIVE:
            return ()
        out = [self._threshold_check(now, c) for c in self.threshold_checks]
        out += [self._external_check(c) for c in self.external_checks]
        if self.error_compare is not None and self.errors_test is not None:
            out.append(self._error_compare(self.error_compare.key, self.errors_test))
        if self.latency_compare is not None:
            out.append(self._latency_compare(self.latency_compare.key, thresholds))
        if self.guard is not None:
            bar = 1 / self.alpha.guard
            e = self.guard.e_value
            out.append(
                CheckResult(
                    "guard",
                    "guard",
                    e,
                    None,
                    bar,
                    self.guard.requests,
                    "fail" if e >= bar else "pass",
                    f"candidate error rate far above {self.guard.cap:g}",
                    metric="error_rate",
                    unit="e_value",
                )
            )
        return tuple(out)

    def _threshold_check(self, now: float, check: MetricCheck) -> CheckResult:
        w = self.window
        value: float | None = None
        sample = w.requests
        if check.metric == "error_rate" and w.requests:
            value = w.errors / w.requests
        elif check.metric == "success_rate" and w.requests:
            value = 1 - w.errors / w.requests
        elif check.metric == "request_rate" and now > w.start:
            value = w.requests / (now - w.start)
        elif check.metric in LATENCY_QUANTILES:
            sample = sum(w.latency.values())
            value = hist_quantile(w.latency, LATENCY_QUANTILES[check.metric])
        return _bounded(
            check.key,
            "threshold",
            value,
            check.min,
            check.max,
            sample,
            metric=check.metric,
            unit=metric_unit(check.metric),
        )

    def _external_check(self, check: PrometheusCheck | WebCheck) -> CheckResult:
        value, at = self.external.get(check.key, (None, -math.inf))
        if at < self.window.start:
            value = None
        low, high = check.min, check.max
        if isinstance(check, WebCheck) and check.json_path is None:
            low, high = 1.0, None
        return _bounded(check.key, "external", value, low, high, 0 if value is None else 1)

    def _error_compare(self, name: str, test: PathClassTests) -> CheckResult:
        bar = 1 / self.alpha.error
        e = test.e_value
        detail = ""
        worst = test.worst_class()
        if worst is not None:
            detail = f"worst path class {worst[0]}: e={worst[1].e_value:.3g}"
        events = test.pooled.events
        verdict: Verdict = "fail" if e >= bar else ("pass" if events else "no_data")
        return CheckResult(
            name, "compare", e, None, bar, events, verdict, detail, None, "error_rate", "e_value"
        )

    def _latency_compare(self, name: str, thresholds: Mapping[float, float]) -> CheckResult:
        bar = 1 / self.alpha.latency
        log_e = self._latency_log_e()
        e = math.exp(log_e) if log_e < 700 else math.inf
        events = sum(t.events for t in self.latency_tests.values())
        detail = ", ".join(f"stable p{q * 100:g} {c * 1000:.4g}ms" for q, c in thresholds.items())
        if not thresholds and not events:
            detail = "stable history too short"
            return CheckResult(
                name, "compare", e, None, bar, 0, "no_data", detail, None, "latency", "e_value"
            )
        verdict: Verdict = "fail" if e >= bar else ("pass" if events else "no_data")
        return CheckResult(
            name, "compare", e, None, bar, events, verdict, detail, None, "latency", "e_value"
        )

    def _latency_log_e(self, r0: float = 1.0) -> float:
        """The latency family's log e-value for "slower-than-threshold rates at most ``r0`` ×
        stable's" (the mean over quantiles; at ``r0 = 1``, the one `_latency_compare` judges)."""
        return mean_log_e([t.log_e_at(r0) for t in self.latency_tests.values()])

    def _with_ci(self, results: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
        """The results with anytime-valid one-sided confidence intervals ``[lower, inf)`` for
        the rate ratios, each from inverting the e-process its comparison decides on (at its
        α), so a failed comparison's lower bound is above 1. For the error rate: the pooled
        and per-path-class family; for latency: the mean over quantiles, a bound on the
        worst of the quantiles' slow-request rate ratios."""
        out = []
        for r in results:
            low: float | None = None
            if (
                r.kind == "compare"
                and self.error_compare
                and r.name == self.error_compare.key
                and self.errors_test
            ):
                low = self.errors_test.lower_confidence_bound(self.alpha.error)
            elif r.kind == "compare" and self.latency_tests:
                low = lower_confidence_bound(self._latency_log_e, self.alpha.latency)
            out.append(replace(r, ci=(low, math.inf)) if low is not None else r)
        return tuple(out)

    # --- decisions ----------------------------------------------------------------------------

    def _judge(self, now: float) -> None:
        """The anytime checks: guard and comparisons roll back (or pause) at once."""
        by_name = {r.name: r for r in self.checks}
        guard = by_name.get("guard")
        if guard is not None and guard.verdict == "fail":
            if self._stable_breaching():
                assert self.spec.guard is not None
                self.guard = RateGuard(self.spec.guard.error_rate)
                if self.phase != "paused":
                    self._pause(
                        now,
                        "incident",
                        "candidate and stable both above the guard's error rate: incident",
                    )
                return
            self._rollback(now, "the guard tripped: candidate error rate far above the cap")
            return
        failing = [r for r in self.checks if r.kind == "compare" and r.verdict == "fail"]
        if failing:
            names = ", ".join(r.name for r in failing)
            self._rollback(now, f"worse than stable: {names}")

    def _stable_breaching(self) -> bool:
        assert self.spec.guard is not None
        n = sum(int(s[1]) for s in self.recent)
        x = sum(int(s[2]) for s in self.recent)
        return n >= GUARD_MIN_STABLE and x / n >= self.spec.guard.error_rate

    def _progress(self, now: float) -> None:
        if self.phase == "waiting":
            self._waiting(now)
            return
        if self.pending is not None:  # resumed while a gate or a pause step was pending
            self._wait_for(now, self.pending, self.pending_step)
            return
        step = self.plan[self.step_index]
        if self._window_outcome(now, step) == "pass":
            self._advance(now)

    def _window_outcome(self, now: float, step: Step) -> Literal["pass", "hold", "fail"]:
        interval, wanted = _needs(self.spec, step)
        if now - self.window.start < interval:
            return "hold"
        n = self.window.requests
        if n == 0:
            if self.spec.on_no_data == "fail":
                self._failure(now, "no candidate traffic in the window")
                return "fail"
            return "hold"
        if n < wanted:
            return "hold"
        judged = [r for r in self.checks if r.kind in ("threshold", "external")]
        failed = [r for r in judged if r.verdict == "fail"]
        if failed:
            self._failure(now, "failed: " + ", ".join(r.name for r in failed))
            return "fail"
        if any(r.verdict == "no_data" for r in judged):
            if self.spec.on_no_data == "fail":
                missing = [r.name for r in judged if r.verdict == "no_data"]
                self._failure(now, "no data: " + ", ".join(missing))
                return "fail"
            return "hold"
        return "pass"

    def _failure(self, now: float, message: str) -> None:
        self.failures += 1
        limit = self.spec.failure_limit
        self._event(now, "check_failed", f"{message} ({self.failures} of {limit} tolerated)")
        if self.failures > limit:
            self._rollback(now, f"more than {limit} failed check windows")
        else:
            self._restart_window(now)

    def _restart_window(self, now: float) -> None:
        self.window = _Window(start=now)

    def _advance(self, now: float) -> None:
        nxt = self.step_index + 1
        if nxt < len(self.plan):
            if "step" in self.gates and self.plan[nxt].weight is not None:
                self._wait_for(now, "step", nxt)
            else:
                self._enter_step(now, nxt)
        elif "confirm-promotion" in self.gates:
            self._wait_for(now, "confirm-promotion", len(self.plan))
        else:
            self._promote(now, "all steps passed")

    def _enter_step(self, now: float, index: int) -> None:
        self.step_index = index
        self.step_started_at = now
        self._restart_window(now)
        step = self.plan[index]
        if step.pause is not None:
            if self.weight is None:
                self._set_weight(0.0)
            self.pending_until = now + step.pause
            self._wait_for(now, "pause", index)
            return
        assert step.weight is not None
        self._set_weight(step.weight)
        self._move(now, "advance", "step", f"step {index + 1}: weight {step.weight:g}%")

    def _wait_for(self, now: float, what: Gate | Literal["pause"], step: int) -> None:
        self.pending = what
        self.pending_step = step
        self.hook_called_at = now
        self.gate = _GateWait(since=now)
        if what == "pause":
            until = self.pending_until
            message = (
                "paused step: waiting for resume"
                if until == math.inf
                else f"pause step: waiting until t={until:g}"
            )
        else:
            message = f"waiting for the {what} gate"
            self._actions.append(CallHook(what, step + 1))
        self._move(now, "wait", "waiting", message)

    def _waiting(self, now: float) -> None:
        if self.pending == "pause":
            if now >= self.pending_until:
                self._proceed(now, "the pause step ended")
            return
        if self.pending in ("step", "confirm-promotion"):
            step = self.plan[min(self.step_index, len(self.plan) - 1)]
            if self._window_outcome(now, step) == "pass":
                self._restart_window(now)
        gate = self.pending
        due = now - self.hook_called_at >= self.spec.interval
        if self.phase == "waiting" and gate is not None and due:  # ask the hook again
            self.hook_called_at = now
            self._actions.append(CallHook(gate, self.pending_step + 1))

    def _gate_result(self, now: float, result: GateResult) -> None:
        if (
            self.phase != "waiting"
            or result.gate != self.pending
            or result.step != self.pending_step + 1
        ):
            return
        if result.passed:
            self._proceed(now, f"the {result.gate} gate passed" + _suffix(result.detail))
            return
        gate = self.gate
        changed = gate.attempts == 0 or result.detail != gate.last_detail
        gate.attempts += 1
        gate.last_at = now
        gate.last_detail = result.detail
        if result.gate != "confirm-promotion":
            self._failure(now, f"the {result.gate} hook failed" + _suffix(result.detail))
        elif changed:  # once per wait, and when the answer says something new
            again = f" (answer {gate.attempts})" if gate.attempts > 1 else ""
            message = "confirm-promotion: not yet" + _suffix(result.detail) + again
            self._event(now, "gate_closed", message)

    def _proceed(self, now: float, message: str, source: str = "analyzer") -> None:
        what, target = self.pending, self.pending_step
        self.pending = None
        self.pending_until = math.inf
        self._move(now, "proceed", "proceeded", message, source=source)
        if what == "confirm-promotion":
            self._promote(now, message, source=source)
        elif what == "pause":
            self._advance(now)
        else:
            self._enter_step(now, target)

    def _promote(self, now: float, message: str, source: str = "analyzer") -> None:
        self._move(now, "promote", "promoted", message, source=source, evidence=True)
        self._finish("promoted")
        self._set_weight(100.0)

    def _rollback(self, now: float, message: str, source: str = "analyzer") -> None:
        self._move(now, "rollback", "rolled_back", message, source=source, evidence=True)
        self._finish("rolled_back")
        self._set_weight(0.0)

    def _pause(self, now: float, reason: str, message: str, source: str = "analyzer") -> None:
        self.paused_reason = reason
        self._move(now, "pause", "paused", message, source=source, evidence=True)

    def _finish(self, phase: Phase) -> None:
        assert self.revision is not None
        self.finished.pop(self.revision, None)
        self.finished[self.revision] = phase
        while len(self.finished) > FINISHED_KEPT:
            self.finished.pop(next(iter(self.finished)))
        self.pending = None

    # --- manual commands ----------------------------------------------------------------------

    def _command(self, now: float, cmd: ManualCommand) -> None:
        source = f"manual:{cmd.source}"
        why = _suffix(cmd.reason)
        if self._trigger_for(cmd.command) is None:
            self._event(now, "refused", f"{cmd.command} refused in phase {self.phase}", source)
            return
        if cmd.command == "promote":
            self._promote(now, "promoted by hand" + why, source)
        elif cmd.command == "rollback":
            self._rollback(now, "rolled back by hand" + why, source)
        elif cmd.command == "pause":
            self._pause(now, "manual", "paused by hand" + why, source)
        elif cmd.command == "resume" and self.phase == "waiting":
            self._proceed(now, f"resumed by hand past {self.pending}" + why, source)
        elif cmd.command == "resume":
            self.paused_reason = None
            if self.deadline is not None and self.active_time >= self.deadline:
                self.deadline = self.active_time + (self.spec.max_duration or 0.0)
            self._move(now, "resume", "resumed", "resumed by hand" + why, source=source)
        elif cmd.command == "retry":
            assert self.revision is not None
            self.finished.pop(self.revision, None)
            self._start(now, self.revision, "retry", "retried by hand" + why)

    # --- plumbing -----------------------------------------------------------------------------

    def _set_weight(self, percent: float | None) -> None:
        if percent != self.weight or percent is None:
            self.weight = percent
            self._actions.append(SetWeight(percent))

    def _move(
        self,
        now: float,
        trigger: Trigger,
        kind: str,
        message: str,
        *,
        source: str = "analyzer",
        evidence: bool = False,
    ) -> None:
        target = TRANSITIONS[self.phase].get(trigger)
        if target is None:
            raise AssertionError(f"no transition {self.phase} --{trigger}-->")
        previous, self.phase = self.phase, target
        self._event(now, kind, message, source, previous=previous, evidence=evidence)

    def _event(
        self,
        now: float,
        kind: str,
        message: str,
        source: str = "analyzer",
        *,
        previous: Phase | None = None,
        evidence: bool = False,
    ) -> None:
        checks = self._with_ci(self.checks) if evidence else self.checks
        event = Event(
            at=now,
            route=self.route,
            kind=kind,
            phase=self.phase,
            previous=previous if previous is not None else self.phase,
            step=self.step_index + 1,
            weight=self.weight,
            revision=self.revision,
            message=message,
            source=source,
            checks=checks,
        )
        self.history.append(event)
        del self.history[:-HISTORY]
        self._actions.append(Emit(event))

    # --- status and durable state -------------------------------------------------------------

    def status(self, *, with_ci: bool = True) -> dict[str, Any]:
        """The route's rollout as the admin API shows it.

        ``interval`` and ``min_requests`` are what the current step's window needs before it
        is judged (None outside a weight step); ``window`` holds its start, its ``elapsed``
        time as of the latest tick and its candidate ``requests`` so far. ``gate``: the gate
        waited for, with the answers it gave so far (None when not waiting for one)."""
        checks = self._with_ci(self.checks) if with_ci else self.checks
        active = self.phase in ACTIVE
        needs = self._step_needs()
        elapsed = None
        if active and self.last_now is not None:
            elapsed = max(0.0, self.last_now - self.window.start)
        return {
            "route": self.route,
            "phase": self.phase,
            "revision": self.revision,
            "step": self.step_index + 1,
            "steps": len(self.plan),
            "weights": [s.weight for s in self.plan],
            "weight": self.weight,
            "failures": self.failures,
            "failure_limit": self.spec.failure_limit,
            "paused_reason": self.paused_reason,
            "waiting_for": self.pending if self.phase == "waiting" else None,
            "gate": self._gate_status(),
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "active_time": self.active_time,
            "interval": needs[0] if needs else None,
            "min_requests": needs[1] if needs else None,
            "window": {
                "start": self.window.start,
                "elapsed": elapsed,
                "requests": self.window.requests,
            },
            "alpha": asdict(self.alpha),
            "checks": [c.to_dict() for c in checks],
        }

    def _step_needs(self) -> tuple[float, int] | None:
        """The current step's ``interval`` and ``min_requests`` (None: no weight step)."""
        if not 0 <= self.step_index < len(self.plan) or self.phase not in ACTIVE:
            return None
        step = self.plan[self.step_index]
        if step.weight is None:
            return None
        return _needs(self.spec, step)

    def _gate_status(self) -> dict[str, Any] | None:
        if self.phase != "waiting" or self.pending is None or self.pending == "pause":
            return None
        g = self.gate
        return {
            "name": self.pending,
            "step": self.pending_step + 1,
            "since": g.since,
            "attempts": g.attempts,
            "last_at": g.last_at,
            "last_detail": g.last_detail,
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain data (JSON-able; floats may be inf)."""
        return {
            "version": 1,
            "route": self.route,
            "spec_hash": self.spec_hash,
            "phase": self.phase,
            "revision": self.revision,
            "finished": dict(self.finished),
            "step_index": self.step_index,
            "weight": self.weight,
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "last_now": self.last_now,
            "active_time": self.active_time,
            "deadline": self.deadline,
            "failures": self.failures,
            "pending": self.pending,
            "pending_step": self.pending_step,
            "pending_until": self.pending_until,
            "hook_called_at": self.hook_called_at,
            "gate": self.gate.to_dict(),
            "paused_reason": self.paused_reason,
            "window": self.window.to_dict(),
            "external": {k: list(v) for k, v in self.external.items()},
            "errors_test": self.errors_test.to_dict() if self.errors_test else None,
            "latency_tests": [[q, t.to_dict()] for q, t in sorted(self.latency_tests.items())],
            "guard": self.guard.to_dict() if self.guard else None,
            "trail": [[s, n, [[b, c] for b, c in sorted(h.items())]] for s, n, h in self.trail],
            "recent": [list(r) for r in self.recent],
            "history": [e.to_dict() for e in self.history],
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(
        cls,
        route: str,
        spec: Rollout,
        data: Mapping[str, Any],
        *,
        gates: Iterable[Gate] = (),
        path_class_slots: int = PATH_CLASS_SLOTS,
    ) -> Analyzer:
        """Rebuild an analyzer from `to_dict` output. With a different spec, a rollout that
        was running restarts from its first step on the next tick."""
        a = cls(route, spec, gates=gates, path_class_slots=path_class_slots)
        a.phase = cast(Phase, data["phase"])
        a.revision = data["revision"]
        a.finished = {str(k): cast(Phase, v) for k, v in data["finished"].items()}
        a.step_index = int(data["step_index"])
        a.weight = data["weight"]
        a.started_at = data["started_at"]
        a.step_started_at = data["step_started_at"]
        a.last_now = data["last_now"]
        a.active_time = float(data["active_time"])
        a.deadline = data["deadline"]
        a.failures = int(data["failures"])
        a.pending = data["pending"]
        a.pending_step = int(data["pending_step"])
        a.pending_until = float(data["pending_until"])
        a.hook_called_at = float(data["hook_called_at"])
        if "gate" in data:
            a.gate = _GateWait.from_dict(data["gate"])
        elif a.pending is not None:  # saved before answers were counted: the wait goes on
            a.gate = _GateWait(since=a.hook_called_at)
        a.paused_reason = data["paused_reason"]
        a.window = _Window.from_dict(data["window"])
        a.external = {str(k): (v[0], float(v[1])) for k, v in data["external"].items()}
        if data["errors_test"] is not None:
            a.errors_test = PathClassTests.from_dict(data["errors_test"])
        a.latency_tests = {float(q): AttributionTest.from_dict(t) for q, t in data["latency_tests"]}
        if data["guard"] is not None:
            a.guard = RateGuard.from_dict(data["guard"])
        for slot, n, hist in data["trail"]:
            h = {float(b): int(c) for b, c in hist}
            a.trail.append([float(slot), int(n), h])
            hist_add(a._trail_total, h.items())
            a._trail_requests += int(n)
        a.recent = [[float(v) for v in r] for r in data["recent"]]
        a.history = [_event_from_dict(e) for e in data["history"]]
        a.checks = tuple(_check_from_dict(c) for c in data["checks"])
        if data["spec_hash"] != a.spec_hash and a.phase in ACTIVE:
            a._spec_changed = True
        elif a.phase in ACTIVE and a.errors_test is None and a.error_compare is not None:
            a._fresh_tests()  # pragma: no cover - only when a spec gained a check unnoticed
        return a


def _needs(spec: Rollout, step: Step) -> tuple[float, int]:
    """What a step's window needs before it is judged: ``(interval, min_requests)``."""
    interval = step.interval if step.interval is not None else spec.interval
    wanted = step.min_requests if step.min_requests is not None else spec.min_requests
    return interval, wanted


def _bounded(
    name: str,
    kind: CheckKind,
    value: float | None,
    low: float | None,
    high: float | None,
    sample: int,
    *,
    metric: str | None = None,
    unit: Unit | None = None,
) -> CheckResult:
    if value is None:
        verdict: Verdict = "no_data"
    elif (low is not None and value < low) or (high is not None and value > high):
        verdict = "fail"
    else:
        verdict = "pass"
    return CheckResult(name, kind, value, low, high, sample, verdict, metric=metric, unit=unit)


def _suffix(text: str) -> str:
    return f": {text}" if text else ""


def _float(value: Any, none: float) -> float:
    """A number of saved state; ``none`` for a null (a non-finite end written as JSON)."""
    return none if value is None else float(value)


def _check_from_dict(d: Mapping[str, Any]) -> CheckResult:
    ci = d.get("ci")
    return CheckResult(
        name=d["name"],
        kind=d["kind"],
        value=d["value"],
        min=d["min"],
        max=d["max"],
        sample=int(d["sample"]),
        verdict=d["verdict"],
        detail=d.get("detail", ""),
        ci=(_float(ci[0], 0.0), _float(ci[1], math.inf)) if ci else None,
        metric=d.get("metric"),
        unit=d.get("unit"),
    )


def _event_from_dict(d: Mapping[str, Any]) -> Event:
    return Event(
        at=float(d["at"]),
        route=d["route"],
        kind=d["kind"],
        phase=d["phase"],
        previous=d["previous"],
        step=int(d["step"]),
        weight=d["weight"],
        revision=d["revision"],
        message=d["message"],
        source=d.get("source", "analyzer"),
        checks=tuple(_check_from_dict(c) for c in d.get("checks", ())),
    )


__all__ = [
    "ACTIVE",
    "GATES",
    "PHASES",
    "TRANSITIONS",
    "Action",
    "Analyzer",
    "CallHook",
    "CheckResult",
    "Emit",
    "Event",
    "GateResult",
    "ManualCommand",
    "Observation",
    "Phase",
    "Sample",
    "SetWeight",
    "hist_quantile",
]
