"""Synthetic traffic in the routing file: what the proxy sends while a rollout is analysed.

``traffic.py`` sends it, ``synthetic.py`` marks it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from splitproxy.config.fields import Duration, Frozen, check_added_headers, sub_path_error

MAX_TRAFFIC_RATE = 1000.0  # requests per second
_TRAFFIC_PATH = re.compile(r"/[\x21-\x22\x24-\x7e]{0,2047}")  # visible ASCII, no '#'
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
                raise sub_path_error(
                    f"[{i}]", "must be a path starting with '/' (visible ASCII, no '#')"
                )
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return check_added_headers(v, _TRAFFIC_RESERVED)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 300:
            raise ValueError("must be a duration > 0 and <= 5m")
        return v
