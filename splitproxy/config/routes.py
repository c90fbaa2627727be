"""The routing part of the file: routes, their backends, matching, overrides and stickiness.

`RoutingConfig` is the whole file once validated; `parse.parse_routing` builds it from YAML.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from splitproxy.config.fields import (
    ROUTE_NAME,
    CookieName,
    Duration,
    Frozen,
    HeaderName,
    percent_resolution,
    status_codes,
    sub_path_error,
)
from splitproxy.config.matching import HeaderOrCookieRule
from splitproxy.config.mirror import Mirror, check_divergence
from splitproxy.config.rollout import Rollout
from splitproxy.config.vocabulary import CANDIDATE, Version


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


def _expect(value: Any) -> Any:
    """``2xx``, ``3xx``, a status code or a list of codes, as the set of accepted codes."""
    if isinstance(value, bool):
        raise ValueError("must be 2xx, 3xx, a status code or a list of status codes")
    return status_codes(value, "23", "2xx, 3xx")


class HealthCheck(Frozen):
    """An active health check of every address of a backend: ``GET path`` each ``interval``;
    an answer within ``timeout`` with an ``expect``-ed status passes. ``unhealthy_after``
    consecutive failures take an address out of rotation, ``healthy_after`` consecutive
    passes put it back (and make a new candidate ready)."""

    path: str = Field(default="/healthz", min_length=1, max_length=2048)
    interval: Duration = Field(default=2.0, ge=0.1, le=3600.0)
    timeout: Duration = Field(default=1.0, gt=0.0, le=300.0)
    unhealthy_after: int = Field(default=3, ge=1, le=100)
    healthy_after: int = Field(default=2, ge=1, le=100)
    expect: Annotated[tuple[int, ...], BeforeValidator(_expect)] = tuple(range(200, 300))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in v):
            raise ValueError("must be a plain request path (no spaces or control characters)")
        return v

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if self.timeout > self.interval:
            raise ValueError("'timeout' must not be longer than 'interval'")
        return self


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
    """One version of the service: one or more URLs (served round-robin), its revision, and
    its own health check (else the route's, if any)."""

    url: tuple[UpstreamURL, ...] = Field(min_length=1)
    revision: str | None = Field(default=None, min_length=1, max_length=128)
    health: HealthCheck | None = None

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


class Override(HeaderOrCookieRule):
    """Force a version from a header or a cookie, before the weighted split.

    With neither ``value`` nor ``regex``, the header or cookie's value says where to go:
    ``always`` sends to the candidate, ``never`` to stable, anything else falls through.
    With ``value`` (exact) or ``regex`` (full match), a match sends to the candidate.
    """


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
    # the health check of both versions, unless a backend has its own
    health: HealthCheck | None = None
    mirror: Mirror | None = None  # copies of requests to the candidate, compared, never seen

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
        return percent_resolution(v)

    @model_validator(mode="after")
    def _weight_needs_candidate(self) -> Route:
        if self.candidate is None and self.weight > 0:
            raise ValueError("a weight above 0 needs a 'candidate'")
        if self.candidate is None and self.mirror is not None:
            raise ValueError("'mirror' sends copies to the candidate: it needs a 'candidate'")
        check_divergence(self)
        if self.rollout is not None and self.rollout.ab is not None and self.sticky is None:
            raise sub_path_error(".sticky", "an A/B test needs a sticky key (cookie or header)")
        return self

    def health_of(self, version: Version) -> HealthCheck | None:
        """The active health check of ``version``: the backend's own, else the route's."""
        backend = self.candidate if version == CANDIDATE else self.stable
        if backend is None:
            return None
        return backend.health if backend.health is not None else self.health

    @property
    def weight_bp(self) -> int:
        """The weight in basis points (0..10 000), the unit the routing decision works in."""
        return round(self.weight * 100)


class RoutingConfig(Frozen):
    """The whole routing file."""

    revision: str | None = Field(default=None, min_length=1, max_length=128)
    routes: tuple[Route, ...] = Field(min_length=1)
    # name -> route for the routes tuple it was built from: followers look every route up on
    # each swap, and a scan per lookup made that quadratic (seconds for thousands of routes)
    _index: tuple[tuple[Route, ...], dict[str, Route]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingConfig:
        seen: dict[str, Route] = {}
        for route in self.routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            seen[route.name] = route
        self._index = (self.routes, seen)
        return self

    def route(self, name: str) -> Route | None:
        """The route named ``name``, or None (a dict lookup)."""
        index = self._index
        if index is None or index[0] is not self.routes:  # a copy with other routes
            index = self._index = (self.routes, {r.name: r for r in self.routes})
        return index[1].get(name)
