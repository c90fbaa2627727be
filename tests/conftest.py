"""Shared fixtures: a splitproxy `Server` running in the test's event loop on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings as hypothesis_settings

from splitproxy.server import Server
from splitproxy.settings import Settings

pytest_plugins = ["tests.redis_server"]  # the `redis_server` fixture

# No per-example deadline: an example's time is not behaviour, and on a loaded machine a loop of
# thousands of routing draws overran hypothesis' 200 ms and failed a correct test. Each test's
# whole time is still bounded by pytest-timeout.
hypothesis_settings.register_profile("splitproxy", deadline=None)
hypothesis_settings.load_profile("splitproxy")

StartProxy = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start a proxy on 127.0.0.1 (free ports) from a routing config.

    ``await start_proxy(routes, **settings)``: ``routes`` is the routing file as a dict (or
    YAML text); keyword arguments override settings (``max_body_bytes=10``). The routing file
    is written to ``tmp_path/routes.yaml`` (``server.settings.config``). Every proxy started
    is shut down when the test ends.
    """
    servers: list[Server] = []

    async def start(routes: dict[str, Any] | str, **overrides: Any) -> Server:
        text = routes if isinstance(routes, str) else yaml.safe_dump(routes, sort_keys=False)
        path = tmp_path / "routes.yaml"
        path.write_text(text)
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "config": path,
            "access_log": False,
            "drain_timeout": 2.0,
        }
        values.update(overrides)
        server = Server(Settings(**values))
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.shutdown()
