"""Traffic mirroring in the routing file: copies of a route's requests sent to its candidate.

``mirror: {percent: 10, methods: [GET, HEAD], max_body: 64KB, timeout: 5s, concurrency: 16,
queue: 64, headers: {...}, compare: {body: hash, json_ignore: [meta.generated_at]}}``

``dataplane/mirror.py`` sends the copies and compares the answers; users never see them.
Unsafe methods (POST, PUT, PATCH, DELETE) are mirrored only when ``methods`` names them, and
`check_warnings` makes ``splitproxy check`` say so: the candidate acts on each copy (a
second write to a database both versions share, a second e-mail sent).

A rollout's ``shadow: {duration: 5m, min_requests: 500}`` (`Shadow`) mirrors before any user
reaches the candidate: with the route's ``mirror:`` settings, or `SHADOW_MIRROR` without one.
The ``{metric: mirror_divergence}`` check judges mirrored copies, so it needs one or the
other (`check_divergence`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from splitproxy.config.fields import (
    Duration,
    Frozen,
    check_added_headers,
    percent_resolution,
    sub_path_error,
)

if TYPE_CHECKING:
    from splitproxy.config.routes import Route, RoutingConfig

MirrorMethod = Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY_LIMIT: Final = 1024 * 1024  # a queued copy holds its body: bounded per route
HEADER: Final = "X-Splitproxy-Mirror"

_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|k|mb|mib|m)?", re.IGNORECASE)
_KIB, _MIB = 1024, 1024 * 1024
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": _KIB, "kb": _KIB, "kib": _KIB, "m": _MIB, "mb": _MIB,
                      "mib": _MIB}  # fmt: skip
# set by the proxy or its HTTP client for every copy, never by the routing file
_RESERVED: Final = frozenset(
    {
        HEADER.lower(),
        "x-splitproxy-synthetic",
        "x-request-id",
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
# ``meta.generated_at``, ``items.*.updated_at``: object keys, ``*`` for every element
_JSON_SEGMENT = re.compile(r"[^.\s]{1,128}")


def parse_size(value: Any) -> Any:
    """A byte count: a number of bytes or ``64KB`` / ``64KiB`` / ``1MB`` (all powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64KB")
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a size such as 64KB or 1MB")
        return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    return value


Size = Annotated[int, BeforeValidator(parse_size)]


def _methods(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(v.strip().upper() if isinstance(v, str) else v for v in value)
    return value


class MirrorCompare(Frozen):
    """What is compared besides the status class and latency. ``body: hash`` compares a hash
    of both bodies (the primary's computed as it streams to the user); ``json_ignore`` compares
    small JSON bodies with those paths removed (dotted keys, ``*`` for every element)."""

    body: Literal["hash", "none"] = "none"
    json_ignore: tuple[str, ...] = Field(default=(), max_length=50)

    @field_validator("json_ignore")
    @classmethod
    def _paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, path in enumerate(v):
            parts = path.split(".")
            if len(parts) > 32 or not all(_JSON_SEGMENT.fullmatch(p) for p in parts):
                raise sub_path_error(
                    f"[{i}]", "must be a dotted path of keys such as meta.generated_at (* for any)"
                )
        return v

    @model_validator(mode="after")
    def _needs_body(self) -> MirrorCompare:
        if self.json_ignore and self.body != "hash":
            raise ValueError("'json_ignore' compares bodies: set 'body: hash'")
        return self


class Mirror(Frozen):
    """Copies of ``percent`` of the route's requests (``methods`` only; bodies up to
    ``max_body``) sent to the candidate in the background, marked ``X-Splitproxy-Mirror: 1``,
    each bounded by ``timeout``; at most ``concurrency`` in flight and ``queue`` waiting per
    route (more are dropped and counted). The answers are compared with the user's, never sent
    to anyone."""

    percent: float = Field(gt=0.0, le=100.0, strict=True)
    methods: Annotated[tuple[MirrorMethod, ...], BeforeValidator(_methods)] = Field(
        default=("GET", "HEAD"), min_length=1
    )
    max_body: Size = Field(default=64 * 1024, ge=0, le=MAX_BODY_LIMIT)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 5.0
    concurrency: int = Field(default=16, ge=1, le=256, strict=True)
    queue: int = Field(default=64, ge=1, le=4096, strict=True)
    compare: MirrorCompare = MirrorCompare()

    @field_validator("percent")
    @classmethod
    def _resolution(cls, v: float) -> float:
        return percent_resolution(v)

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a method is listed twice")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_added_headers(v, _RESERVED)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 60:
            raise ValueError("must be a duration > 0 and <= 1m")
        return v

    @property
    def unsafe_methods(self) -> tuple[str, ...]:
        """The listed methods a server may act on (not safe to repeat on the candidate)."""
        return tuple(m for m in self.methods if m not in SAFE_METHODS)


class Shadow(Frozen):
    """The shadow phase of a rollout: once the candidate is ready, and before any user reaches
    it, user requests are mirrored to it (the route's ``mirror:``, else `SHADOW_MIRROR`) for at
    least ``duration`` and ``min_requests`` mirrored answers; the checks are judged on those
    answers, then the first step starts. A failure rolls back before any user saw the
    candidate."""

    duration: Duration = 300.0
    min_requests: int = Field(default=500, ge=0, strict=True)

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: float) -> float:
        if not 0 < v < float("inf"):
            raise ValueError("must be a duration > 0")
        return v


# the shadow's copies on a route without ``mirror:``: GET and HEAD, all of them, default bounds
SHADOW_MIRROR: Final = Mirror(percent=100.0)
DIVERGENCE: Final = "mirror_divergence"  # the check's metric


def may_mirror(route: Route) -> bool:
    """Can copies of this route's requests go to its candidate (now, or in a shadow phase)?"""
    rollout = route.rollout
    return route.mirror is not None or (rollout is not None and rollout.shadow is not None)


def check_divergence(route: Route) -> None:
    """Refuse a ``mirror_divergence`` check on a route that never mirrors (it would wait for
    copies that never come)."""
    rollout = route.rollout
    if rollout is None or may_mirror(route):
        return
    for i, check in enumerate(rollout.checks):
        if getattr(check, "metric", None) == DIVERGENCE:
            raise sub_path_error(
                f".rollout.checks[{i}]",
                "'mirror_divergence' judges mirrored copies: give the route 'mirror:' or the "
                "rollout 'shadow:'",
            )


def check_warnings(config: RoutingConfig) -> list[str]:
    """What ``splitproxy check`` warns about in a valid file: mirrored unsafe methods, and a
    shadow phase that judges no divergence."""
    out = []
    for i, route in enumerate(config.routes):
        mirror = route.mirror
        if mirror is not None and mirror.unsafe_methods:
            listed = ", ".join(mirror.unsafe_methods)
            out.append(
                f"routes[{i}].mirror.methods: {listed} mirrored to the candidate: it will act "
                "on every copy (writes, e-mails, payments happen twice)"
            )
        rollout = route.rollout
        if rollout is not None and rollout.shadow is not None:
            metrics = {getattr(c, "metric", None) for c in rollout.checks}
            if DIVERGENCE not in metrics:
                out.append(
                    f"routes[{i}].rollout.shadow: no {{metric: mirror_divergence}} check: "
                    "divergence from stable is shown but never judged"
                )
    return out
