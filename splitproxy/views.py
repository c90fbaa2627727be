"""The JSON the admin API answers with, as types: what `admin.py` builds and `console` reads.

``GET /api/v1/status`` is a `StatusView`; ``GET /api/v1/routes/{name}`` and every call that
changes a route (its weight, a rollout command) answer with a `RouteView`; ``GET
/api/v1/events`` is an `EventsView`. Both ends are checked against these, so a key renamed
on one side is a type error on the other. Floats that are not finite (an unbounded
confidence interval, an overwhelming e-value) are null in JSON, hence the ``| None`` on
numbers of the rollout part. Plain words (a phase, a check's kind or verdict) are ``str``
here: the analyzer defines their values, and the console shows unknown ones as they come.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

# --- a route ----------------------------------------------------------------------------------


class MatchView(TypedDict):
    host: str | None
    path_prefix: str


class AddressView(TypedDict):
    """One upstream address's health (``dataplane/health.py``)."""

    url: str
    state: str  # healthy, unhealthy (failing its checks), ejected or probing (half-open)
    healthy: bool  # takes traffic now
    ejected: bool  # out after failed requests (``probing`` included)
    since: float  # Unix time of the last change of ``state``
    consecutive_failures: int  # failed requests in a row
    ejected_until: float | None  # Unix time; None when not ejected
    last_check: str | None  # the latest active check's result; None: not checked (yet)
    ready: bool | None  # passed ``healthy_after`` checks in a row once; None: not checked


class BackendView(TypedDict):
    """One version's upstreams, its revision, its requests in flight now, and its addresses'
    health; ``all_down``: every address is out, so requests try them anyway (fail open)."""

    urls: list[str]
    revision: str | None
    in_flight: int
    all_down: bool
    addresses: list[AddressView]


class RuntimeWeightView(TypedDict):
    percent: float
    set_at: float  # Unix time
    source: str  # who set it: "admin", or the rollout controller


class WeightView(TypedDict):
    """The candidate's weight in percent: what serves, the file's, a runtime override, and
    which of ``rollout``, ``runtime`` or ``file`` won (``source``)."""

    effective: float
    file: float
    runtime: RuntimeWeightView | None
    source: str


class LatencyView(TypedDict):
    p50: float | None  # milliseconds; None without requests
    p95: float | None
    p99: float | None


class VersionSummary(TypedDict):
    """One version's live traffic over the span of a `TrafficView` (``rate`` per second)."""

    requests: int
    rate: float
    errors: int
    error_rate: float | None
    latency_ms: LatencyView


class TrafficView(TypedDict):
    """A route's recent traffic per version; ``candidate`` is None for a route without one
    (and no candidate traffic left in the window)."""

    window_seconds: float
    stable: VersionSummary
    candidate: VersionSummary | None


class MirrorExampleView(TypedDict):
    """A mirrored copy whose answer differed from the user's, or got none."""

    at: float  # Unix time the copy's answer was judged
    method: str
    path: str  # without the query
    primary_status: int  # what the user got
    mirror_status: int | None  # what the candidate answered the copy; None: no answer
    differed: str  # e.g. "status 200 vs 500", "body (12 vs 14 bytes)", "json at a.b"


class MirrorLatencyView(TypedDict):
    """Recent latencies of the mirrored requests: the user's answers and the copies'."""

    stable: LatencyView
    candidate: LatencyView


class MirrorView(TypedDict):
    """A route's traffic mirroring (``mirror:``): copies by result since the proxy started
    (match, diverged, error, dropped, skipped), the divergence rate ``diverged / (match +
    diverged)`` (None before any copy was compared), latencies and the last divergent copies."""

    percent: float
    methods: list[str]
    compare_body: str  # hash or none
    requests: dict[str, int]
    divergence_rate: float | None
    latency_ms: MirrorLatencyView
    examples: list[MirrorExampleView]


# --- a route's rollout -------------------------------------------------------------------------


class CheckView(TypedDict):
    """One check as judged on one tick (`rollout.analyzer.CheckResult`)."""

    name: str
    kind: str  # threshold, compare, guard, external or health (the candidate's availability)
    value: float | None
    min: float | None
    max: float | None
    sample: int
    verdict: str  # pass, fail or no_data
    detail: str
    ci: list[float | None] | None  # a comparison's confidence interval for the ratio
    metric: str | None
    unit: str | None  # fraction, seconds, per_second, e_value; None: the user's own number


class EventView(TypedDict):
    """A ledger entry: a decision or a transition with the checks it rests on."""

    at: float
    route: str
    kind: str
    phase: str
    previous: str
    step: int  # 1-based; 0 before the first step
    weight: float | None
    revision: str | None
    message: str
    source: str
    checks: list[CheckView]
    # the analyzer's trigger that fired (a row of its table); null for the controller's own
    # events and for entries saved before triggers were recorded
    trigger: str | None
    ab: NotRequired[AbView]  # an A/B test's result, on the events that carry evidence


class GateView(TypedDict):
    """The gate a waiting rollout asks, and the answers it gave so far."""

    name: str
    step: int
    since: float | None
    attempts: int
    last_at: float | None
    last_detail: str | None


class ProgressDeadlineView(TypedDict):
    """The progress deadline: seconds counted toward it (waiting for readiness and
    progressing, until the candidate is ready), its limit, and when the candidate was ready."""

    spent: float
    limit: float
    ready_at: float | None  # None: not ready yet in this rollout


class WindowView(TypedDict):
    start: float
    elapsed: float | None  # as of the latest tick; None when no step is running
    requests: int  # candidate requests in the step's window so far


class AlphaView(TypedDict):
    """How the rollout's α is split between the families of tests."""

    total: float
    error: float
    latency: float
    guard: float


class RejectedStateView(TypedDict):
    path: str
    reason: str


class RolloutStateView(TypedDict):
    persistent: bool
    file: str | None  # where the route's document lives: a path, or a Redis key and field
    last_error: str | None
    rejected: RejectedStateView | None  # the saved state set aside at start, and why


class HookView(TypedDict):
    on: str
    name: str | None
    format: str
    gating: bool


class ExternalReadingView(TypedDict):
    value: float | None
    at: float | None
    error: str | None


class SyntheticGeneratorView(TypedDict):
    """The synthetic-traffic generator's counters, of the run going on or the last one."""

    running: bool
    rate: float
    target: str
    judge: bool
    sent: int
    failed: int
    cancelled: int
    skipped: int
    in_flight: int
    statuses: dict[str, int]  # by HTTP status code
    last_error: str | None


class VersionRequestsView(TypedDict):
    requests: int
    errors: int


class SyntheticAnsweredView(TypedDict):
    """Synthetic requests the proxy answered in the last ``window_seconds``, per version."""

    window_seconds: float
    stable: VersionRequestsView
    candidate: VersionRequestsView


class SyntheticView(TypedDict):
    """A rollout's synthetic traffic: its spec, the generator, and what was answered."""

    rate: float
    target: str
    judge: bool
    running: bool
    generator: SyntheticGeneratorView | None  # None: it never ran
    answered: SyntheticAnsweredView


class JobAttemptsView(TypedDict):
    attempts: int  # runs so far
    passed: bool


class BaselineView(TypedDict):
    at: float  # the switch
    stable_requests: int  # stable's last minute before it
    stable_error_rate: float | None
    latency_thresholds: dict[str, float]  # "p99": seconds


class JobRunView(TypedDict):
    attempt: int
    running: bool
    started_at: float | None
    last: dict[str, Any] | None  # passed, exit_code, timed_out, duration, tail


class BlueGreenView(TypedDict):
    stage: str  # idle, testing, baking, promoted, rolled_back or reverted
    iterations: int
    iteration: int | None  # 1-based, while active
    bake: float | None  # seconds
    auto_promote: bool
    test: JobAttemptsView | None  # None: no test job
    baseline: BaselineView | None  # from the switch on
    job: JobRunView | None  # the test job's latest run (None: never run here)


class RevertView(TypedDict):
    previous_stable: list[str]  # its URLs
    previous_revision: str | None
    promoted: str | None  # the revision promoted over it
    promoted_at: float
    until: float  # the window's end
    open: bool


class ShadowView(TypedDict):
    """A rollout's shadow phase (``shadow:``): where it stands and what the candidate's
    answers to mirrored copies said so far (``rollout/shadow.py``)."""

    stage: str  # pending, mirroring, paused, passed or rolled_back
    duration: float
    min_requests: int
    started_at: float | None
    elapsed: float | None  # seconds in the shadow so far; None outside it
    mirrored: int  # copies sent in the shadow (answered or failed)
    errors: int  # no answer, or a 5xx
    error_rate: float | None
    compared: int  # answers compared with the user's
    diverged: int
    divergence: float | None  # diverged / compared


class AbArmView(TypedDict):
    users: int  # exposed
    converted: int  # converted at least once
    rate: float | None  # converted / users


class AbGoalArmView(AbArmView):
    value: float  # the sum of the goal's value_header


class AbGoalView(TypedDict):
    name: str
    primary: bool  # the first goal: the one the decision is made on
    stable: AbGoalArmView
    candidate: AbGoalArmView
    lift: float | None  # 0.05: the candidate converts 5 % more per user
    lift_interval: list[float | None] | None  # anytime-valid; None: unbounded
    e_value: float | None


class AbView(TypedDict):
    """An A/B test (strategy: ab): the verdict on the primary goal, and every goal's counts."""

    outcome: str  # running, candidate_wins, stable_wins, no_difference or srm
    reason: str
    elapsed: float  # seconds since the test started
    winner: str | None  # candidate or stable, once declared
    lift: float | None
    lift_interval: list[float | None] | None
    candidate: AbArmView
    stable: AbArmView
    e_value: float | None
    srm_e_value: float | None
    alpha: dict[str, float]  # total, conversion, srm
    goal: str  # the primary goal's name
    split: float  # the candidate's share of the audience's users, percent
    started_at: float
    min_duration: float
    max_duration: float
    users: dict[str, int]  # stable, candidate
    untracked: int  # users left out because the table was full
    broken: bool  # paused for a sample ratio mismatch
    goals: list[AbGoalView]


class RolloutView(TypedDict):
    """A route's rollout: phase, plan and position, the step's window and what it needs,
    the checks of the latest tick, hooks, external readings and recent history."""

    route: str
    strategy: str  # canary, bluegreen or ab
    phase: str  # idle, progressing, waiting, paused, promoted or rolled_back
    revision: str | None
    step: int  # 1-based; 0 before the first step
    steps: int
    weights: list[float | None]  # None: a pause step
    weight: float | None
    failures: int
    failure_limit: int
    paused_reason: str | None
    # readiness, shadow, a gate (pre-rollout, step, confirm-promotion), pause, test, switch
    waiting_for: str | None
    gate: GateView | None
    started_at: float | None
    step_started_at: float | None
    active_time: float  # seconds the rollout has been progressing
    progress_deadline: ProgressDeadlineView
    interval: float | None  # the current weight step's needs; None outside one
    min_requests: int | None
    window: WindowView
    alpha: AlphaView
    checks: list[CheckView]
    state: RolloutStateView
    hooks: list[HookView]
    waiting_on_hooks: list[str]
    external: dict[str, ExternalReadingView]  # by check name
    synthetic: SyntheticView | None  # None: the rollout has no ``traffic:``
    bluegreen: BlueGreenView | None  # None: a canary
    shadow: ShadowView | None  # None: the rollout has no ``shadow:``
    ab: AbView | None  # None: not an A/B test, or its test has not begun
    revert: RevertView | None  # an open revert window after a promotion
    history: list[EventView]


class RouteView(TypedDict):
    """A route as status shows it."""

    name: str
    match: MatchView
    stable: BackendView
    candidate: BackendView | None
    weight: WeightView
    # the routing file's own ``sticky`` and ``overrides`` entries, None fields left out: their
    # shape is the schema's (`config.Sticky`, `config.Override`), echoed, never read back
    sticky: dict[str, Any] | None
    overrides: list[dict[str, Any]]
    traffic: TrafficView
    rollout: RolloutView | None  # None: the route has no ``rollout``
    mirror: MirrorView | None  # None: the route has no ``mirror``


# --- the whole proxy ---------------------------------------------------------------------------


class ConfigView(TypedDict):
    path: str | None
    revision: str
    loaded_at: float
    last_reload_successful: bool
    last_error: str | None


class RolloutsView(TypedDict):
    """Where rollout state lives."""

    backend: NotRequired[Literal["file", "redis"]]  # with a store: which kind
    location: NotRequired[str]  # the directory, or the Redis URL without its password
    state_dir: str | None  # the directory of the file backend; None otherwise
    persistent: bool
    note: NotRequired[str]  # memory only: why that matters
    last_error: NotRequired[str | None]  # the last failure to save, with a state directory
    replica: NotRequired[ReplicaView]  # one of several replicas (a Redis state store)


class ReplicaView(TypedDict):
    """One replica of several sharing a Redis state store."""

    name: str  # host:pid:random
    leading: bool  # this replica decides the rollouts
    fencing_token: int | None  # its leadership's token (None: it follows)
    state_store_reachable: bool
    routing_version: int  # the leader's routing state this replica serves
    pooled_replicas: list[str]  # the replicas whose observations it pools now
    late_buckets_dropped: int  # buckets that arrived after their second was judged


class PageView(TypedDict):
    """Which routes a status answer holds (`statuspage.Page`)."""

    offset: int
    limit: int
    route: str | None  # only routes whose name contains this (None: every route)
    matched: int  # routes that match ``route``, over every page
    returned: int  # routes in this answer


class StatusView(TypedDict):
    version: str
    ready: bool
    draining: bool
    uptime_seconds: float
    config: ConfigView
    rollouts: RolloutsView | None  # None: no rollout controller runs
    route_count: int  # routes in the config, whatever the page
    page: PageView
    routes: list[RouteView]  # this page's (every route of a config up to 1,000 routes)


class EventsView(TypedDict):
    events: list[EventView]
