"""The shadow phase's copies through a real proxy and its rollout controller: a route without
``mirror:`` copies user requests to its candidate while (and only while) its rollout is in
the shadow, and the candidate's answers reach the analyzer as evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from splitproxy.config.mirror import HEADER
from tests.conftest import StartProxy
from tests.integration.proxy_support import RawUpstream, Seen, raw_upstream, recording_app
from tests.integration.test_mirror import eventually, request, route_status, send, stable_server


@pytest.fixture
async def stable() -> AsyncIterator[RawUpstream]:
    async with raw_upstream(stable_server) as up:
        yield up


async def test_copies_go_to_the_candidate_only_while_the_rollout_is_in_its_shadow(
    start_proxy: StartProxy,
    stable: RawUpstream,
    aiohttp_server: AiohttpServer,
) -> None:
    seen: list[Seen] = []
    candidate = await aiohttp_server(recording_app(seen))
    rollout: dict[str, Any] = {
        "steps": [50],
        "interval": "1h",
        "shadow": {"duration": "1h", "min_requests": 1},
    }
    server = await start_proxy(
        {
            "routes": [
                {
                    "name": "app",
                    "stable": stable.url,
                    "candidate": f"http://127.0.0.1:{candidate.port}",
                    "rollout": rollout,
                }
            ]
        }
    )
    control = server.control
    assert control is not None

    def copies() -> list[Seen]:
        return [s for s in seen if s.header(HEADER) == "1"]

    async def shadowing() -> bool:
        control.tick()
        view = await route_status(server, "app")
        return bool(view["rollout"]["waiting_for"] == "shadow")

    await eventually(shadowing)
    for _ in range(5):
        await send(server.listen_port, request("GET", "/items"))
    await eventually(lambda: len(copies()) == 5)
    assert [s.raw_path for s in seen if s.raw_path == "/items"] == ["/items"] * 5  # copies only

    async def counted() -> bool:
        control.tick()
        view = await route_status(server, "app")
        return bool(view["rollout"]["shadow"]["mirrored"] == 5)

    await eventually(counted)  # the analyzer took the candidate's answers as evidence
    control.command("app", "resume", reason="seen enough")  # past the shadow: the first step
    view = await route_status(server, "app")
    assert (view["rollout"]["step"], view["weight"]["effective"]) == (1, 50.0)
    for _ in range(20):
        await send(server.listen_port, request("GET", "/items"))
    users = [s for s in seen if s.raw_path == "/items" and s.header(HEADER) is None]
    assert users  # users reach the candidate from the first step on ...
    assert len(copies()) == 5  # ... and no request is copied any more: the route has no mirror
