"""Static settings: read once at start-up (restart to change).

Sources, highest first: ``serve`` flags (passed as keyword arguments), ``SPLITPROXY_*``
environment variables (names in any case), defaults. A list setting reads from the environment
as comma-separated values (``10.0.0.0/8, 192.168.0.0/16``) or as a JSON list
(``["10.0.0.0/8"]``). Only `server.py`, `cli.py` and the demo read this module; everything below
them receives plain values.

The environment is read by `Settings` itself (`_environment`), on a plain pydantic model:
pydantic-settings did the same for 1.7 MiB of RSS in every proxy (its sources, dotenv, its
config machinery), for one prefix and no ``.env`` file. A variable's text is validated like a
flag's value, so a bad one fails with pydantic's message, named by `load_settings`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from splitproxy.gitsource import GitSpec, is_git_spec, parse_git_spec
from splitproxy.replicas.keys import check_namespace

ENV_PREFIX = "SPLITPROXY_"
MAX_WORKERS = 64


def parse_address(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``"host:port"``, ``":port"`` or ``"[::1]:port"`` -> ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]") or default_host
    return host, int(port)


def _list_from_env(value: Any) -> Any:
    """A list setting given as one string (an environment variable): a JSON list, or
    comma-separated values with the spaces around them dropped; anything else as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError(f"{value!r} is neither a JSON list nor comma-separated") from None
        return items  # a list: the text starts with '['

    return [item.strip() for item in text.split(",") if item.strip()]


# A variable's text is never JSON-decoded as a whole ("10.0.0.0/8" is not JSON): every list or
# tuple setting splits it here (tests/unit/test_settings.py checks that each one does).
StrList = Annotated[tuple[str, ...], BeforeValidator(_list_from_env)]


def _environment(fields: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The ``SPLITPROXY_*`` variables of ``environ`` that name one of ``fields``, by field
    name; variable names match in any case (``splitproxy_listen`` too), as they always have.
    Other ``SPLITPROXY_*`` names are ignored: a variable meant for another version of the
    proxy must not stop this one from starting."""
    by_name = {key.lower(): value for key, value in environ.items()}
    prefix = ENV_PREFIX.lower()
    return {name: by_name[prefix + name] for name in fields if prefix + name in by_name}


class Settings(BaseModel):
    """Everything that needs a restart to change. Durations are in seconds.

    ``Settings(**flags)`` fills each field from its flag, else its ``SPLITPROXY_*`` variable,
    else its default (`_sources`); an unknown flag is refused (``extra="forbid"``), defaults are
    validated like any value."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    listen: str = "0.0.0.0:8080"
    # a second proxy listener whose requests always go to their route's candidate; off if None
    preview_listen: str | None = None
    admin: str = "127.0.0.1:9901"
    config: Path | None = None
    # the routing file in a git branch: set by giving ``config`` as git+URL#BRANCH:PATH
    # (`_sources` moves it here: a Path would fold the URL's //)
    config_git: str | None = None
    # how often the branch of a git+ config is fetched (and on SIGHUP, `reload`)
    git_interval: float = Field(default=30.0, gt=0)
    state_dir: Path | None = None
    # rollout state in a Redis shared by replicas: redis://[:password@]host:6379/0 (rediss://
    # for TLS); instead of state_dir. Keys are prefixed with state_namespace.
    state: str | None = None
    state_namespace: str = "splitproxy"
    # the admin API's bearer token: from the environment or a file, never a command-line flag
    # (a flag's value shows in `ps` to every user of the machine)
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
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
    # a WebSocket (or other upgraded) tunnel with no byte either way is cut after this
    tunnel_idle_timeout: float = Field(default=300.0, gt=0)
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
    # client connections at once; 0 sizes it from the open-file limit (each client connection
    # may hold an upstream one too). Over it, a new connection gets 503 and is closed.
    max_connections: int = Field(default=0, ge=0)
    # per upstream address; 0 means no limit. At the limit, requests get 503 + Retry-After.
    max_upstream_connections: int = Field(default=0, ge=0)

    # hot reload: watch the routing file's directory, and poll it (seconds; 0 turns polling off)
    reload_watch: bool = True
    reload_poll_interval: float = Field(default=1.0, ge=0)

    # peers whose X-Forwarded-* headers are trusted (appended to); others are overwritten
    trusted_proxies: StrList = ()
    via: str = "1.1 splitproxy"

    # worker processes serving the same listener (splitproxy/workers); "auto": one per core.
    # 1 (the default) is one process, no supervisor.
    workers: int | Literal["auto"] = 1

    @model_validator(mode="before")
    @classmethod
    def _sources(cls, data: Any) -> Any:
        """Flags over the environment; then a ``git+`` config moves to ``config_git`` (a
        `Path` would fold the URL's ``//``), wherever it came from."""
        if not isinstance(data, dict):
            return data
        data = {**_environment(cls.model_fields, os.environ), **data}
        if is_git_spec(data.get("config")):
            data["config_git"] = data.pop("config")
        return data

    @field_validator("config_git")
    @classmethod
    def _git_spec(cls, v: str | None) -> str | None:
        if v is not None:
            parse_git_spec(v)
        return v

    @property
    def git_spec(self) -> GitSpec | None:
        """Where the routing file lives when ``config`` is a git+ URL."""
        return parse_git_spec(self.config_git) if self.config_git is not None else None

    @field_validator("listen", "admin", "preview_listen")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str, info: ValidationInfo) -> int | str:
        if isinstance(v, int) and not 1 <= v <= MAX_WORKERS:
            raise ValueError(f"must be between 1 and {MAX_WORKERS}, or auto")
        if v != 1 and info.data.get("state") is not None:
            raise ValueError(
                "replicas sharing a Redis state (state) run one process each: run more "
                "replicas instead of workers"
            )
        return v

    @property
    def worker_count(self) -> int:
        """How many worker processes ``workers`` asks for (``auto``: the cores this process
        may run on)."""
        if self.workers == "auto":
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                cores = os.cpu_count() or 1
            return max(1, min(MAX_WORKERS, cores))
        return self.workers

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network") from None
        return v

    @field_validator("state")
    @classmethod
    def _state(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            if info.data.get("state_dir") is not None:
                raise ValueError("set state (a Redis URL) or state_dir, not both")
            from splitproxy.replicas.connection import check_url  # the redis client: not for all

            check_url(v)  # the error names the URL without its password
        return v

    @field_validator("state_namespace")
    @classmethod
    def _state_namespace(cls, v: str) -> str:
        return check_namespace(v)

    @field_validator("admin_token")
    @classmethod
    def _token_not_empty(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_token(v.get_secret_value())
        return v

    @field_validator("admin_token_file")
    @classmethod
    def _token_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None:
            if info.data.get("admin_token") is not None:
                raise ValueError("set admin_token or admin_token_file, not both")
            read_token_file(v)
        return v

    @property
    def admin_secret(self) -> str | None:
        """The admin token in force (from ``admin_token`` or ``admin_token_file``), if any."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value().strip()
        if self.admin_token_file is not None:
            return read_token_file(self.admin_token_file)
        return None

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.listen)

    @property
    def preview_address(self) -> tuple[str, int] | None:
        return parse_address(self.preview_listen) if self.preview_listen is not None else None

    @property
    def admin_address(self) -> tuple[str, int]:
        return parse_address(self.admin, "127.0.0.1")


_TOKEN_FILE_LIMIT = 4096


def check_token(token: str) -> str:
    """A usable bearer token: not empty, visible ASCII only (it travels in a header)."""
    token = token.strip()
    if not token:
        raise ValueError("must not be empty (leave it unset to run the admin API without one)")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("must be visible ASCII characters only")
    return token


def read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file (never a FIFO that would block), at most 4 KiB,
    one token (surrounding white space ignored)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > _TOKEN_FILE_LIMIT:
            raise ValueError(f"{path} is larger than {_TOKEN_FILE_LIMIT} bytes")
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        return check_token(text)
    except ValueError as exc:
        raise ValueError(f"the token in {path} {exc}") from None


class InvalidSettings(Exception):
    """Settings that cannot be used; ``lines``: one per bad setting, naming its variable."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


# never echoed in an error (a state URL may hold a password)
_SECRETS = frozenset({"admin_token", "admin_token_file", "state"})


def _line(field: str, message: str) -> str:
    if field == "config_git":  # given as config (see `Settings._sources`)
        field = "config"
    return f"splitproxy: invalid setting {field} ({ENV_PREFIX}{field.upper()}): {message}"


def _explain(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "value_error":
            message = str((err.get("ctx") or {}).get("error", err["msg"]))
        else:
            message = err["msg"]
            given = err.get("input")
            if field not in _SECRETS and isinstance(given, str | int | float):
                message += f", got {given!r}"
        lines.append(_line(field, message))
    return lines


def load_settings(**values: Any) -> Settings:
    """`Settings` from ``values`` (flags) over the environment; `InvalidSettings` with one
    line per bad setting instead of pydantic's multi-line report."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise InvalidSettings(_explain(exc)) from None
