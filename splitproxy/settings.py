"""Static settings: read once at start-up (restart to change).

Sources, highest first: ``serve`` flags (passed as keyword arguments), ``SPLITPROXY_*``
environment variables, defaults. Only `server.py` and `cli.py` read this module; everything
below them receives plain values.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_address(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``"host:port"``, ``":port"`` or ``"[::1]:port"`` -> ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]") or default_host
    return host, int(port)


class Settings(BaseSettings):
    """Everything that needs a restart to change. Durations are in seconds."""

    model_config = SettingsConfigDict(env_prefix="SPLITPROXY_", extra="forbid", frozen=True)

    listen: str = "0.0.0.0:8080"
    admin: str = "127.0.0.1:9901"
    config: Path | None = None
    state_dir: Path | None = None
    admin_token: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True

    connect_timeout: float = Field(default=5.0, gt=0)
    # upstream: longest wait for the response head, and for each read of its body
    read_timeout: float = Field(default=60.0, gt=0)
    # client: longest time from the first byte of a request to the end of its headers
    header_timeout: float = Field(default=10.0, gt=0)
    # client: longest wait for the next byte of a request body
    body_timeout: float = Field(default=60.0, gt=0)
    # client: an idle keep-alive connection is closed after this
    client_idle_timeout: float = Field(default=75.0, gt=0)
    # upstream: pooled idle connections are closed after this; below the idle timeouts of
    # common servers (uvicorn, Node: 5 s) so the proxy closes first and never reuses a dead one
    upstream_idle_timeout: float = Field(default=4.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    # after SIGTERM, how long /readyz says 503 while the listener still accepts
    drain_delay: float = Field(default=0.0, ge=0)

    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    # request body limit in bytes; 0 means no limit
    max_body_bytes: int = Field(default=0, ge=0)
    # per upstream address; 0 means no limit. At the limit, requests get 503 + Retry-After.
    max_upstream_connections: int = Field(default=0, ge=0)

    # peers whose X-Forwarded-* headers are trusted (appended to); others are overwritten
    # hot reload: watch the routing file's directory, and poll it (seconds; 0 turns polling off)
    reload_watch: bool = True
    reload_poll_interval: float = Field(default=1.0, ge=0)

    trusted_proxies: tuple[str, ...] = ()
    via: str = "1.1 splitproxy"

    @field_validator("listen", "admin")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)
        return v

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.listen)

    @property
    def admin_address(self) -> tuple[str, int]:
        return parse_address(self.admin, "127.0.0.1")
