"""The routing file: frozen, validated models and the parser that reads them.

The routing file is the desired state and lives in git, so validation is strict: unknown keys
are errors, every problem is reported with its path (``routes[1].weight: must be <= 100``),
and a file is accepted or rejected as a whole. Nothing here does IO beyond what the caller
hands in (the file's text).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from splitproxy.errors import ConfigError, Problem

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# RFC 9110 token characters: what a header field name may contain.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
COOKIE_NAME = HEADER_NAME


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

    header: str | None = None
    cookie: str | None = None
    value: str | None = None
    regex: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not HEADER_NAME.fullmatch(v):
            raise ValueError("must be a header field name")
        return v

    @field_validator("cookie")
    @classmethod
    def _cookie(cls, v: str | None) -> str | None:
        if v is not None and not COOKIE_NAME.fullmatch(v):
            raise ValueError("must be a cookie name")
        return v

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

    cookie: str | None = None
    header: str | None = None
    max_age: int = Field(default=30 * 24 * 3600, ge=1, le=10 * 365 * 24 * 3600)

    @field_validator("cookie")
    @classmethod
    def _cookie(cls, v: str | None) -> str | None:
        if v is not None and not COOKIE_NAME.fullmatch(v):
            raise ValueError("must be a cookie name")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not HEADER_NAME.fullmatch(v):
            raise ValueError("must be a header field name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'cookie' or 'header'")
        return self


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
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in ("Backend",):
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
        out.append(Problem(_path(loc), _message(err)))
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
    "Match",
    "Override",
    "Route",
    "RoutingConfig",
    "Sticky",
    "parse_routing",
    "summary",
]
