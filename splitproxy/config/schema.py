"""The routing file: frozen, validated models and the parser that reads them.

The routing file is the desired state and lives in git, so validation is strict: unknown keys
are errors, every problem is reported with its path (``routes[1].weight: must be <= 100``),
and a file is accepted or rejected as a whole. Nothing here does IO beyond what the caller
hands in (the file's text).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from splitproxy.config.vocabulary import GATES, Gate, HookOn
from splitproxy.errors import ConfigError, Problem

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# RFC 9110 token characters: what a header field name may contain.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
COOKIE_NAME = HEADER_NAME


def _name(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise ValueError(f"must be a {what}")
        return v

    return AfterValidator(check)


HeaderName = Annotated[str, _name(HEADER_NAME, "header field name")]
CookieName = Annotated[str, _name(COOKIE_NAME, "cookie name")]


def _header_names(headers: dict[str, str]) -> dict[str, str]:
    """Check a ``headers:`` mapping's names; the error's path names the bad header."""
    for header in headers:
        if not HEADER_NAME.fullmatch(header):
            raise _sub_path_error(f".{header}", "must be a header field name")
    return headers


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _upstream_url(value: str) -> str:
    """Check an upstream URL: plain ``http://host[:port]``, nothing the data path cannot honour."""
    parts = urlsplit(value)
    if parts.scheme != "http":
        raise ValueError(f"{value!r}: only http:// upstreams are supported")
    if not parts.hostname:
        raise ValueError(f"{value!r}: no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r}: invalid port") from None
    if port == 0:
        raise ValueError(f"{value!r}: invalid port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: a path, query or fragment on an upstream is not supported")
    if parts.username or parts.password:
        raise ValueError(f"{value!r}: credentials in an upstream URL are not supported")
    return value.rstrip("/")


UpstreamURL = Annotated[
    str, BeforeValidator(lambda v: _upstream_url(v) if isinstance(v, str) else v)
]


def _backend_shorthand(value: Any) -> Any:
    """Accept a URL, a list of URLs, or the full mapping; normalise to the mapping."""
    if isinstance(value, str):
        return {"url": [value]}
    if isinstance(value, list):
        return {"url": value}
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return {**value, "url": [value["url"]]}
    return value


class Backend(Frozen):
    """One version of the service: one or more URLs (served round-robin) and its revision."""

    url: tuple[UpstreamURL, ...] = Field(min_length=1)
    revision: str | None = Field(default=None, min_length=1, max_length=128)

    @property
    def urls(self) -> tuple[str, ...]:
        return self.url


BackendSpec = Annotated[Backend, BeforeValidator(_backend_shorthand)]


class Match(Frozen):
    """Which requests a route serves: an exact host (or ``*.suffix``) and a path prefix."""

    host: str | None = Field(default=None, min_length=1, max_length=253)
    path_prefix: str = "/"

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.lower()
        bare = v[2:] if v.startswith("*.") else v
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", bare):
            raise ValueError("must be a host name without port, or *.domain")
        return v

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class Override(Frozen):
    """Force a version from a header or a cookie, before the weighted split.

    With neither ``value`` nor ``regex``, the header or cookie's value says where to go:
    ``always`` sends to the candidate, ``never`` to stable, anything else falls through.
    With ``value`` (exact) or ``regex`` (full match), a match sends to the candidate.
    """

    header: HeaderName | None = None
    cookie: CookieName | None = None
    value: str | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Override:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'header' or 'cookie'")
        if self.value is not None and self.regex is not None:
            raise ValueError("give at most one of 'value' or 'regex'")
        return self


class Sticky(Frozen):
    """Keep each client on one version: a seed cookie the proxy sets, or a header it sends."""

    cookie: CookieName | None = None
    header: HeaderName | None = None
    max_age: int = Field(default=30 * 24 * 3600, ge=1, le=10 * 365 * 24 * 3600)

    @model_validator(mode="after")
    def _one_source(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'cookie' or 'header'")
        return self


# --- rollout: automatic progressive delivery ---------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
CHECK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


def parse_duration(value: Any, *, unit_required: bool = False) -> float:
    """A duration in seconds: ``30s``, ``5m``, ``1h30m``, ``500ms``, ``1.5s`` or a number of
    seconds (a whole number is refused when ``unit_required``: ``500`` could be either)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 500ms")
    if isinstance(value, int | float):
        if unit_required and isinstance(value, int):  # 500: milliseconds or seconds?
            raise ValueError(f"give a unit, e.g. {value}ms or {value}s")
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 1h30m or 500ms")
    else:
        raise ValueError("must be a duration such as 30s, 5m or 500ms")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration >= 0")
    return seconds


def _fraction(value: Any) -> Any:
    """A rate: a number in [0, 1] or a percentage string (``"1%"``, ``"0.5 %"``)."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Fraction = Annotated[float, BeforeValidator(_fraction)]


def _percent_weight(v: float) -> float:
    if round(v * 100) != round(v * 100, 6):
        raise ValueError("has a resolution of 0.01 percent")
    return v


def _sub_path_error(sub: str, message: str) -> PydanticCustomError:
    """An error about an element below the validated field (``steps`` + ``[2]``)."""
    return PydanticCustomError("sub_path", "{message}", {"sub": sub, "message": message})


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
        return None if v is None else _percent_weight(v)

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
                raise _sub_path_error(f".{bound}", str(exc)) from None
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
    value = _fraction(v) if metric in ("error_rate", "success_rate") else v
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if metric in ("error_rate", "success_rate") and not 0.0 <= value <= 1.0:
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
    quantiles: tuple[float, ...] = Field(default=(0.95, 0.99), min_length=1, max_length=4)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for i, q in enumerate(v):
            if not 0.5 <= q <= 0.999:
                raise _sub_path_error(f"[{i}]", "must be between 0.5 and 0.999")
        if len(set(v)) != len(v):
            raise ValueError("a quantile is given twice")
        return v

    @model_validator(mode="after")
    def _options(self) -> CompareCheck:
        given = self.model_fields_set
        if self.metric == "error_rate" and "quantiles" in given:
            raise ValueError("'quantiles' applies to {metric: latency, compare: stable}")
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
        return _header_names(v)

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
_TAGS = frozenset({"Backend", "MetricCheck", "CompareCheck", "PrometheusCheck", "WebCheck"})


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
        return _header_names(v)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a duration > 0")
        return v

    @property
    def gating(self) -> bool:
        return self.on in GATES


# --- synthetic traffic (traffic.py sends it, synthetic.py marks it) --------------------------

MAX_TRAFFIC_RATE = 1000.0  # requests per second
_TRAFFIC_PATH = re.compile(r"/[\x21-\x22\x24-\x7e]{0,2047}")  # visible ASCII, no '#'
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4096}")
# set by the proxy or the HTTP client, never by the routing file
_TRAFFIC_RESERVED = frozenset(
    {
        "x-splitproxy-synthetic",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)


class Traffic(Frozen):
    """Synthetic traffic the proxy sends to the route while its rollout is analysed:
    ``{rate: 5, paths: [/], headers: {...}, method: GET, judge: false, target: candidate}``.

    ``rate`` requests per second (open loop, at most ``concurrency`` in flight, each bounded by
    ``timeout``), to ``paths`` in turn, through the proxy's own listener, marked so that the
    proxy sends them to ``target`` and counts them apart. ``judge: true`` lets them count for
    the absolute checks, the guard and ``min_requests`` (never for the comparisons with
    stable, which need randomly routed requests); by default they only exercise the candidate.
    """

    rate: float = Field(gt=0.0, le=MAX_TRAFFIC_RATE, strict=True)
    paths: tuple[str, ...] = Field(default=("/",), min_length=1, max_length=100)
    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(default=None, max_length=65536)
    judge: bool = Field(default=False, strict=True)
    target: Literal["candidate", "stable"] = "candidate"
    concurrency: int = Field(default=16, ge=1, le=256, strict=True)
    timeout: Duration = 10.0

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, path in enumerate(v):
            if not _TRAFFIC_PATH.fullmatch(path):
                raise _sub_path_error(
                    f"[{i}]", "must be a path starting with '/' (visible ASCII, no '#')"
                )
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for header, value in v.items():
            if not HEADER_NAME.fullmatch(header):
                raise _sub_path_error(f".{header}", "must be a header field name")
            if header.lower() in _TRAFFIC_RESERVED:
                raise _sub_path_error(f".{header}", "is set by the proxy, not in the routing file")
            if not _HEADER_VALUE.fullmatch(value):
                raise _sub_path_error(f".{header}", "must be printable ASCII (no line breaks)")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 300:
            raise ValueError("must be a duration > 0 and <= 5m")
        return v


class Rollout(Frozen):
    """How a route's candidate is rolled out: the steps, their minimum time and sample size,
    the checks, and the failure policy."""

    strategy: Literal["canary"] = "canary"
    steps: tuple[StepSpec, ...] | None = Field(default=None, min_length=1)
    step_weight: float | None = Field(default=None, gt=0.0, le=100.0, strict=True)
    max_weight: float | None = Field(default=None, gt=0.0, le=100.0, strict=True)
    interval: Duration = 60.0
    min_requests: int = Field(default=100, ge=0, strict=True)
    failure_limit: int = Field(default=1, ge=0, strict=True)
    max_duration: Duration | None = None
    on_no_data: Literal["hold", "fail"] = "hold"
    checks: tuple[Check, ...] = ()
    alpha: float = Field(default=0.01, gt=0.0, le=0.2, strict=True)
    guard: Annotated[Guard | None, BeforeValidator(_guard_shorthand)] = Guard()
    hooks: tuple[Hook, ...] = ()
    traffic: Traffic | None = None  # synthetic traffic while the rollout analyses

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, v: Any) -> Any:
        if v in ("ab", "bluegreen"):
            raise ValueError(f"{v!r} is not supported yet; use 'canary'")
        return v

    @field_validator("step_weight", "max_weight")
    @classmethod
    def _resolution(cls, v: float | None) -> float | None:
        return None if v is None else _percent_weight(v)

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
                raise _sub_path_error(
                    f"[{i}]", f"must be above the previous step's weight ({_num(previous)})"
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
                raise _sub_path_error(
                    f"[{i}]",
                    f"check name {check.key!r} appears twice; give each check its own 'name'",
                )
            seen.add(check.key)
        return v

    @model_validator(mode="after")
    def _step_source(self) -> Rollout:
        linear = self.step_weight is not None or self.max_weight is not None
        if self.steps is not None and linear:
            raise ValueError("give either 'steps' or 'step_weight' with 'max_weight', not both")
        if self.steps is None:
            if self.step_weight is None or self.max_weight is None:
                raise ValueError("needs 'steps', or 'step_weight' and 'max_weight'")
            if self.step_weight > self.max_weight:
                raise ValueError("'step_weight' must not be above 'max_weight'")
        return self

    @property
    def gates(self) -> frozenset[Gate]:
        """The gating hooks configured (what the analyzer waits for)."""
        configured = {h.on for h in self.hooks}
        return frozenset(g for g in GATES if g in configured)

    @property
    def plan(self) -> tuple[Step, ...]:
        """The steps in order; ``step_weight`` + ``max_weight`` compile to step, 2·step, …
        up to and including ``max_weight`` (the last step is clamped to it)."""
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


class Route(Frozen):
    """A service behind the proxy: its stable version, an optional candidate, and the split."""

    name: str
    match: Match = Match()
    stable: BackendSpec
    candidate: BackendSpec | None = None
    # strict: YAML reads `yes`/`on` as booleans, which must not become 1 percent
    weight: float = Field(default=0.0, ge=0.0, le=100.0, strict=True)
    overrides: tuple[Override, ...] = ()
    sticky: Sticky | None = None
    rollout: Rollout | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ROUTE_NAME.fullmatch(v):
            raise ValueError(
                "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("weight")
    @classmethod
    def _resolution(cls, v: float) -> float:
        if round(v * 100) != round(v * 100, 6):
            raise ValueError("has a resolution of 0.01 percent")
        return v

    @model_validator(mode="after")
    def _weight_needs_candidate(self) -> Route:
        if self.candidate is None and self.weight > 0:
            raise ValueError("a weight above 0 needs a 'candidate'")
        return self

    @property
    def weight_bp(self) -> int:
        """The weight in basis points (0..10 000), the unit the routing decision works in."""
        return round(self.weight * 100)


class RoutingConfig(Frozen):
    """The whole routing file."""

    revision: str | None = Field(default=None, min_length=1, max_length=128)
    routes: tuple[Route, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingConfig:
        seen: set[str] = set()
        for route in self.routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            seen.add(route.name)
        return self

    def route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# Short, stable wording for the errors users meet most; pydantic's own text otherwise.
def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx['le'])}"
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}"
    if kind == "less_than":
        return f"must be < {_num(ctx['lt'])}"
    if kind == "greater_than":
        return f"must be > {_num(ctx['gt'])}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "sub_path":
        return str(ctx["message"])
    return str(err["msg"])


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in _TAGS:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from(exc: ValidationError) -> list[Problem]:
    """Turn pydantic's errors into ``path: message`` problems, one per error.

    pydantic checks a list's length on the items that validated, so a list whose only item
    is invalid also reports "too short"; that echo is dropped.
    """
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    out = []
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        sub = (err.get("ctx") or {}).get("sub", "") if err["type"] == "sub_path" else ""
        out.append(Problem(_path(loc) + sub, _message(err)))
    return out


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _duplicate_names(data: dict[str, Any]) -> list[Problem]:
    routes = data.get("routes")
    if not isinstance(routes, list):
        return []
    seen: set[str] = set()
    problems = []
    for i, route in enumerate(routes):
        name = route.get("name") if isinstance(route, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(Problem(f"routes[{i}].name", f"route name {name!r} is used twice"))
            seen.add(name)
    return problems


def parse_routing(text: str, source: str = "") -> RoutingConfig:
    """Parse and validate a routing file's YAML text; raise `ConfigError` naming every problem."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([Problem(where, f"invalid YAML: {exc.problem}")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML: {exc}")], source) from None
    if data is None:
        raise ConfigError([Problem("", "the file is empty; it needs 'routes'")], source)
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the top level must be a mapping with 'routes'")], source)
    duplicates = _duplicate_names(data)
    try:
        config = RoutingConfig.model_validate(data)
    except ValidationError as exc:
        problems = [p for p in problems_from(exc) if "is used twice" not in p.message]
        raise ConfigError(problems + duplicates, source) from None
    if duplicates:  # pragma: no cover - the model's own check catches these first
        raise ConfigError(duplicates, source)
    return config


def summary(config: RoutingConfig) -> str:
    """One line describing a valid config, as `splitproxy check` prints it."""
    parts = []
    for r in config.routes:
        cand = f", candidate {r.weight:g}%" if r.candidate else ""
        parts.append(f"{r.name} (stable{cand})")
    rev = f" revision {config.revision}," if config.revision else ""
    return f"ok:{rev} {len(config.routes)} route(s): " + "; ".join(parts)


__all__ = [
    "Backend",
    "Check",
    "CompareCheck",
    "Guard",
    "Hook",
    "Match",
    "MetricCheck",
    "Override",
    "PrometheusCheck",
    "Rollout",
    "Route",
    "RoutingConfig",
    "Step",
    "Sticky",
    "Traffic",
    "WebCheck",
    "parse_duration",
    "parse_routing",
    "summary",
]
