"""Connecting to the Redis that replicas share: the URL checked and redacted, the clients
built with short timeouts.

A Redis that is down or unreachable must never hold a thread or a task for long: every
client connects within `CONNECT_TIMEOUT` and waits at most `OPERATION_TIMEOUT` per command,
and retries a command once (a pooled connection that a Redis restart closed), without a
backoff. What fails after that is the caller's to retry later.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

SCHEMES: Final = ("redis", "rediss")
CONNECT_TIMEOUT: Final = 2.0
OPERATION_TIMEOUT: Final = 2.0


def is_redis_url(value: object) -> bool:
    """True for a ``redis://`` or ``rediss://`` URL (a state setting that is not a path)."""
    return (
        isinstance(value, str) and value.split("://", 1)[0].lower() in SCHEMES and ("://" in value)
    )


def redact(url: str) -> str:
    """``url`` without its password (and without a query, which may hold one), for logs and
    the status: ``redis://:***@host:6379/0``."""
    if "://" not in url:  # not a URL at all (a path?): shown as given, unless it may hold one
        return url if "@" not in url else "<not a URL>"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        hostport = f"{user}:***@{hostport}" if colon else f"{user}@{hostport}"
    return f"{parts.scheme}://{hostport}{parts.path}"


def check_url(url: str) -> str:
    """``url`` when it is a usable Redis URL; ValueError naming it (redacted) otherwise."""
    if not is_redis_url(url):
        raise ValueError(f"{redact(url)} is not a redis:// or rediss:// URL")
    try:
        redis.ConnectionPool.from_url(url)  # parses only: it connects at the first command
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{redact(url)} is not a usable Redis URL ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"{redact(url)} names no host")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"{redact(url)}: the database must be a number (/0)")
    return url


def _options() -> dict[str, Any]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": OPERATION_TIMEOUT,
        "health_check_interval": 0,
    }


def sync_client(url: str) -> redis.Redis:
    """A client for threads (the state writer); it connects at its first command."""
    check_url(url)
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **_options())


def async_client(url: str) -> redis.asyncio.Redis:
    """A client for the event loop (the lease, the replica link); connects at first use."""
    check_url(url)
    return redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 1), **_options())


__all__ = [
    "CONNECT_TIMEOUT",
    "OPERATION_TIMEOUT",
    "async_client",
    "check_url",
    "is_redis_url",
    "redact",
    "sync_client",
]
