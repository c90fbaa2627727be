"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import socket
from typing import Any


def route(stable: str, candidate: str | None = None, **fields: Any) -> dict[str, Any]:
    """A one-route routing config named ``app``."""
    r: dict[str, Any] = {"name": "app", "stable": stable, **fields}
    if candidate is not None:
        r["candidate"] = candidate
    return {"routes": [r]}


def held_port() -> socket.socket:
    """A socket bound to a free loopback port (``SO_REUSEADDR``), never listening.

    While it is open, connections to the port are refused and no other ``bind(0)`` is handed
    the port, yet a server told the port can listen on it (asyncio's, aiohttp's, Redis' and
    Prometheus' listeners all set ``SO_REUSEADDR`` too). A port that was only bound and closed
    before a child process binds it can meanwhile go to another test's listener (tests run
    side by side on pytest-xdist workers), which then answered this test's readiness probe.
    Close it once the server listens (or when the test ends, for a server restarted on it).
    """
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    except OSError:
        sock.close()
        raise
    return sock
