"""The rollout part of the file: steps, checks, the guard, hooks and synthetic traffic.

A route's ``rollout:`` section becomes a `Rollout`; the analyzer reads its plan, checks and
gates, the controller its hooks and external checks, the traffic sender its `Traffic`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from splitproxy.config.abtest import AbTest, ab_plan, check_ab_rollout
from splitproxy.config.fields import (
    CHECK_NAME,
    Duration,
    Fraction,
    Frozen,
    check_header_names,
    fmt_number,
    parse_duration,
    parse_fraction,
    percent_resolution,
    sub_path_error,
)
from splitproxy.config.mirror import Shadow
from splitproxy.config.testjob import TestJob
from splitproxy.config.traffic import Traffic
from splitproxy.config.vocabulary import GATES, Gate, HookOn


def _step_shorthand(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"weight": value}
    if not isinstance(value, dict):
        raise ValueError("a step is a weight (a number, or {weight: N}) or {pause: ...}")
    return value


def _pause(value: Any) -> Any:
    if value is True or value == math.inf:
        return math.inf
    if value is False or value is None:
        raise ValueError("must be true (wait for 'resume' or 'promote') or a duration")
    return parse_duration(value)


class Step(Frozen):
    """One step of a rollout: a candidate weight held for at least ``interval`` and
    ``min_requests`` candidate requests (defaults: the rollout's), or a pause: ``pause: true``
    waits for ``resume`` (or ``promote``), ``pause: 10m`` waits that long."""

    weight: float | None = Field(default=None, gt=0.0, le=100.0, strict=True)
    interval: Duration | None = None
    min_requests: int | None = Field(default=None, ge=0, strict=True)
    pause: Annotated[float, BeforeValidator(_pause)] | None = None

    @field_validator("weight")
    @classmethod
    def _resolution(cls, v: float | None) -> float | None:
        return None if v is None else percent_resolution(v)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.weight is None) == (self.pause is None):
            raise ValueError("a step is a weight (a number, or {weight: N}) or {pause: ...}")
        if self.pause is not None and (self.interval is not None or self.min_requests is not None):
            raise ValueError("a pause step takes no 'interval' or 'min_requests'")
        return self


StepSpec = Annotated[Step, BeforeValidator(_step_shorthand)]

MetricName = Literal[
    "error_rate",
    "success_rate",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "request_rate",
    "mirror_divergence",  # the share of mirrored copies whose answers differed from stable's
]
LATENCY_QUANTILES: dict[str, float] = {
    "latency_p50": 0.50,
    "latency_p90": 0.90,
    "latency_p95": 0.95,
    "latency_p99": 0.99,
}


class _Named(Frozen):
    """A check with an optional ``name`` (its label in status, events and metrics)."""

    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not CHECK_NAME.fullmatch(v):
            raise ValueError("must be 1-64 letters, digits, '_', '.', ':' or '-'")
        return v


def _check_bounds(low: float | None, high: float | None, required: bool = True) -> None:
    if required and low is None and high is None:
        raise ValueError("give 'min', 'max' or both")
    if low is not None and high is not None and low > high:
        raise ValueError("'min' must not be above 'max'")


class MetricCheck(_Named):
    """An absolute threshold on a built-in metric of the candidate, over each step's window:
    ``{metric: error_rate, max: 0.01}``, ``{metric: latency_p99, max: 500ms}``."""

    metric: MetricName
    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _units(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        metric = data.get("metric")
        out = dict(data)
        for bound in ("min", "max"):
            v = data.get(bound)
            if v is None:
                continue
            try:
                out[bound] = _metric_value(metric, v)
            except ValueError as exc:
                raise sub_path_error(f".{bound}", str(exc)) from None
        return out

    @model_validator(mode="after")
    def _bounds(self) -> MetricCheck:
        _check_bounds(self.min, self.max)
        return self

    @property
    def key(self) -> str:
        """The check's name in status, events and metrics."""
        return self.name or self.metric


def _metric_value(metric: Any, v: Any) -> float:
    if isinstance(metric, str) and metric.startswith("latency_"):
        return parse_duration(v, unit_required=True)
    rate = metric in ("error_rate", "success_rate", "mirror_divergence")
    value = parse_fraction(v) if rate else v
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if rate and not 0.0 <= value <= 1.0:
        raise ValueError("a rate is between 0 and 1 (or 0% and 100%)")
    if metric == "request_rate" and value < 0:
        raise ValueError("must be >= 0 (requests per second)")
    return float(value)


class CompareCheck(_Named):
    """A comparison with stable by an anytime-valid sequential test:
    ``{metric: error_rate, compare: stable}`` (pooled and per path class) or
    ``{metric: latency, compare: stable}`` (exceedances of stable's trailing quantiles)."""

    metric: Literal["error_rate", "latency"]
    compare: Literal["stable"]
    per_path: bool = Field(default=True, strict=True)
    # blue/green only: "all" also compares on test traffic before the switch (and on live
    # traffic against stable's pre-switch baseline in the bake)
    traffic: Literal["user", "all"] = "user"
    quantiles: tuple[float, ...] = Field(default=(0.95, 0.99), min_length=1, max_length=4)
    # latency only: a request is slow above stable's quantile plus this share of it, for both
    # versions alike (0: any slowdown the counts can show fails; 20%: only one beyond a fifth)
    tolerance: Fraction = Field(default=0.0, ge=0.0, le=10.0)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for i, q in enumerate(v):
            if not 0.5 <= q <= 0.999:
                raise sub_path_error(f"[{i}]", "must be between 0.5 and 0.999")
        if len(set(v)) != len(v):
            raise ValueError("a quantile is given twice")
        return v

    @model_validator(mode="after")
    def _options(self) -> CompareCheck:
        given = self.model_fields_set
        if self.metric == "error_rate" and "quantiles" in given:
            raise ValueError("'quantiles' applies to {metric: latency, compare: stable}")
        if self.metric == "error_rate" and "tolerance" in given:
            raise ValueError("'tolerance' applies to {metric: latency, compare: stable}")
        if self.metric == "latency" and "per_path" in given:
            raise ValueError("'per_path' applies to {metric: error_rate, compare: stable}")
        return self

    @property
    def key(self) -> str:
        return self.name or f"{self.metric}_vs_stable"


def _external_url(value: Any) -> Any:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r}: must be an http:// or https:// URL")
    return value


ExternalURL = Annotated[str, BeforeValidator(_external_url)]


class PrometheusCheck(_Named):
    """A PromQL query against a Prometheus server; its single value must lie in [min, max]."""

    prometheus: ExternalURL
    query: str = Field(min_length=1)
    min: float | None = Field(default=None, strict=True)
    max: float | None = Field(default=None, strict=True)
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _bounds(self) -> PrometheusCheck:
        _check_bounds(self.min, self.max)
        return self

    @property
    def key(self) -> str:
        return self.name or "prometheus"


class WebCheck(_Named):
    """An HTTP check: a 2xx answer passes, or, with ``json_path``, the JSON field it names
    (``result.score``, ``items[0].value``) must lie in [min, max]."""

    web: ExternalURL
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_path: str | None = Field(default=None, min_length=1)
    min: float | None = Field(default=None, strict=True)
    max: float | None = Field(default=None, strict=True)
    timeout: Duration = 10.0

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_header_names(v)

    @model_validator(mode="after")
    def _bounds(self) -> WebCheck:
        if self.json_path is None and (self.min is not None or self.max is not None):
            raise ValueError("'min'/'max' need a 'json_path' (without one, a 2xx answer passes)")
        if self.json_path is not None:
            _check_bounds(self.min, self.max)
        return self

    @property
    def key(self) -> str:
        return self.name or "web"


def _check_kind(value: Any) -> str | None:
    if isinstance(value, MetricCheck | CompareCheck | PrometheusCheck | WebCheck):
        return type(value).__name__
    if isinstance(value, dict):
        if "prometheus" in value:
            return "PrometheusCheck"
        if "web" in value:
            return "WebCheck"
        if "compare" in value:
            return "CompareCheck"
        if "metric" in value:
            return "MetricCheck"
    return None


Check = Annotated[
    Annotated[MetricCheck, Tag("MetricCheck")]
    | Annotated[CompareCheck, Tag("CompareCheck")]
    | Annotated[PrometheusCheck, Tag("PrometheusCheck")]
    | Annotated[WebCheck, Tag("WebCheck")],
    Discriminator(
        _check_kind,
        custom_error_type="check_kind",
        custom_error_message="a check needs 'metric', 'prometheus' or 'web'",
    ),
]


class Guard(Frozen):
    """The fast guard: a candidate error rate far above ``error_rate`` rolls back at once
    (an anytime-valid one-sample test, so one early error cannot trip it)."""

    error_rate: Fraction = Field(default=0.05, gt=0.0, lt=1.0)


def _guard_shorthand(value: Any) -> Any:
    if value is True:
        return {}
    if value is False:
        return None
    return value


class Hook(_Named):
    """A webhook of the rollout: ``{on: confirm-promotion, url: http://ci/approve}``.

    Gating hooks (``pre-rollout`` before the first step, ``step`` before each weight increase,
    ``confirm-promotion`` before promotion) hold the rollout until they answer 2xx; the
    others (``post-rollout`` when a rollout ends either way, ``rollback``, and ``event`` for
    every decision) are notifications. Each call is a POST of JSON, or with ``format: slack``
    of a Slack-compatible ``{"text": ...}``, bounded by ``timeout`` and retried ``retries``
    times.
    """

    on: HookOn
    url: ExternalURL
    timeout: Duration = 10.0
    retries: int = Field(default=2, ge=0, le=10, strict=True)
    format: Literal["json", "slack"] = "json"
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on` key as the boolean true (GitHub Actions' old trap)
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_header_names(v)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a duration > 0")
        return v

    @property
    def gating(self) -> bool:
        return self.on in GATES


BAKE = 600.0  # blue/green: how long checks watch the new version after the switch


class Rollout(Frozen):
    """How a route's candidate is rolled out: the steps, their minimum time and sample size,
    the checks, and the failure policy.

    ``progress_deadline``: how long a rollout may wait for its candidate to become ready
    (time paused or at a gate or a pause step does not count) before it is rolled back;
    ``unhealthy_timeout``: how long a candidate may stay unhealthy during a rollout before
    each such stretch counts as a failed check."""

    strategy: Literal["canary", "bluegreen", "ab"] = "canary"
    steps: tuple[StepSpec, ...] | None = Field(default=None, min_length=1)
    step_weight: float | None = Field(default=None, gt=0.0, le=100.0, strict=True)
    max_weight: float | None = Field(default=None, gt=0.0, le=100.0, strict=True)
    interval: Duration = 60.0
    min_requests: int = Field(default=100, ge=0, strict=True)
    failure_limit: int = Field(default=1, ge=0, strict=True)
    max_duration: Duration | None = None
    progress_deadline: Duration = 600.0
    unhealthy_timeout: Duration = 60.0
    on_no_data: Literal["hold", "fail"] = "hold"
    checks: tuple[Check, ...] = ()
    alpha: float = Field(default=0.01, gt=0.0, le=0.2, strict=True)
    guard: Annotated[Guard | None, BeforeValidator(_guard_shorthand)] = Guard()
    hooks: tuple[Hook, ...] = ()
    traffic: Traffic | None = None  # synthetic traffic while the rollout analyses
    # blue/green: test iterations before the switch, the bake after it
    iterations: int | None = Field(default=None, ge=1, le=1000, strict=True)
    bake: Duration | None = None
    auto_promote: bool = Field(default=True, strict=True)
    test: TestJob | None = None  # run against the candidate before the switch
    shadow: Shadow | None = None  # mirrored, judged on its answers, before any user meets it
    # every strategy: how long after a promotion `splitproxy revert` may send all traffic
    # back to the previous stable (kept warm meanwhile)
    revert_window: Duration | None = None
    ab: AbTest | None = None  # strategy: ab (config/abtest.py)

    @field_validator("progress_deadline", "unhealthy_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not 0 < v < math.inf:
            raise ValueError("must be a duration > 0")
        return v

    @field_validator("step_weight", "max_weight")
    @classmethod
    def _resolution(cls, v: float | None) -> float | None:
        return None if v is None else percent_resolution(v)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: tuple[Step, ...] | None) -> tuple[Step, ...] | None:
        if v is None:
            return v
        previous: float | None = None
        for i, step in enumerate(v):
            if step.weight is None:
                continue
            if previous is not None and step.weight <= previous:
                raise sub_path_error(
                    f"[{i}]", f"must be above the previous step's weight ({fmt_number(previous)})"
                )
            previous = step.weight
        if previous is None:
            raise ValueError("needs at least one weight step")
        return v

    @field_validator("checks")
    @classmethod
    def _unique_checks(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        seen: set[str] = set()
        for i, check in enumerate(v):
            if check.key in seen:
                raise sub_path_error(
                    f"[{i}]",
                    f"check name {check.key!r} appears twice; give each check its own 'name'",
                )
            seen.add(check.key)
        return v

    @model_validator(mode="after")
    def _step_source(self) -> Rollout:
        if self.strategy == "ab" or self.ab is not None:
            return check_ab_rollout(self)
        if self.strategy == "bluegreen":
            return self._bluegreen()
        defaults = {"iterations": None, "bake": None, "auto_promote": True, "test": None}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                raise ValueError(f"'{name}' applies to strategy: bluegreen")
        for i, check in enumerate(self.checks):
            if isinstance(check, CompareCheck) and check.traffic != "user":
                raise sub_path_error(f".checks[{i}]", "'traffic' applies to strategy: bluegreen")
        linear = self.step_weight is not None or self.max_weight is not None
        if self.steps is not None and linear:
            raise ValueError("give either 'steps' or 'step_weight' with 'max_weight', not both")
        if self.steps is None:
            if self.step_weight is None or self.max_weight is None:
                raise ValueError("needs 'steps', or 'step_weight' and 'max_weight'")
            if self.step_weight > self.max_weight:
                raise ValueError("'step_weight' must not be above 'max_weight'")
        return self

    def _bluegreen(self) -> Rollout:
        for name in ("steps", "step_weight", "max_weight"):
            if getattr(self, name) is not None:
                raise ValueError(f"a blue/green rollout has 'iterations', not '{name}'")
        if "step" in {h.on for h in self.hooks}:
            raise ValueError("a blue/green rollout has no 'step' hooks (it has no weight steps)")
        for i, check in enumerate(self.checks):
            if isinstance(check, CompareCheck) and check.traffic != "all":
                raise sub_path_error(
                    f".checks[{i}]",
                    "before the switch a blue/green candidate sees test traffic only, where a "
                    "comparison with stable means nothing; add 'traffic: all' to compare anyway "
                    "(test traffic before the switch, live traffic against stable's pre-switch "
                    "baseline in the bake), or remove the check",
                )
        return self

    @property
    def bluegreen(self) -> bool:
        return self.strategy == "bluegreen"

    @property
    def switch_index(self) -> int:
        """Blue/green: the plan index of the bake (the step after the switch)."""
        return self.iterations or 1

    @property
    def gates(self) -> frozenset[Gate]:
        """The gating hooks configured (what the analyzer waits for)."""
        configured = {h.on for h in self.hooks}
        return frozenset(g for g in GATES if g in configured)

    @property
    def plan(self) -> tuple[Step, ...]:
        """The steps in order; ``step_weight`` + ``max_weight`` compile to step, 2·step, …
        up to and including ``max_weight`` (the last step is clamped to it). Blue/green:
        ``iterations`` steps at 0 % (test traffic only), then the bake at 100 %."""
        if self.ab is not None:
            return ab_plan(self.ab)
        if self.strategy == "bluegreen":
            test = Step.model_construct(weight=0.0, interval=None, min_requests=None, pause=None)
            bake = Step.model_construct(
                weight=100.0, interval=BAKE if self.bake is None else self.bake, min_requests=0
            )
            return (test,) * self.switch_index + (bake,)
        if self.steps is not None:
            return self.steps
        assert self.step_weight is not None
        assert self.max_weight is not None
        weights: list[float] = []
        k = 1
        while True:
            w = round(min(self.step_weight * k, self.max_weight), 2)
            weights.append(w)
            if w >= self.max_weight:
                break
            k += 1
        return tuple(Step(weight=w) for w in weights)
