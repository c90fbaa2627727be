"""The preview listener through a real proxy to aiohttp upstreams on 127.0.0.1: it always
reaches the candidate, leaves user routing alone, and stays out of the analyzer's numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from splitproxy.dataplane.synthetic import HEADER, marker
from splitproxy.server import Server
from tests.conftest import StartProxy
from tests.integration.test_metrics import by, scrape
from tests.integration.test_synthetic import Upstream

SEED = "splitproxy_id"


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    stable, candidate = await Upstream("stable").start(), await Upstream("candidate").start()
    yield stable, candidate
    for u in (stable, candidate):
        assert u.server is not None
        await u.server.close()


def routes(stable: Upstream, candidate: Upstream, **app: Any) -> dict[str, Any]:
    """``app`` (weight 0, an ``X-Canary`` override, a seed cookie) and ``solo`` (no candidate,
    under ``/solo``)."""
    return {
        "routes": [
            {"name": "solo", "match": {"path_prefix": "/solo"}, "stable": stable.url},
            {
                "name": "app",
                "stable": stable.url,
                "candidate": {"url": candidate.url, "revision": "2.0"},
                "weight": 0,
                "overrides": [{"header": "X-Canary"}],
                "sticky": {"cookie": SEED},
                **app,
            },
        ]
    }


async def get(
    session: aiohttp.ClientSession, port: int, path: str = "/", **headers: str
) -> tuple[str, aiohttp.ClientResponse]:
    async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
        return await resp.text(), resp


async def admin(server: Server, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.admin_port}{path}") as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def test_at_weight_0_the_preview_address_answers_from_the_candidate_and_users_from_stable(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream]
) -> None:
    stable, candidate = upstreams
    server = await start_proxy(routes(stable, candidate), preview_listen="127.0.0.1:0")
    assert server.preview_port not in (0, server.listen_port)
    # a fresh session per request: no cookie jar carries a seed from one to the next
    for _ in range(10):
        async with aiohttp.ClientSession() as session:
            body, resp = await get(session, server.preview_port, "/a")
            assert (resp.status, body) == (200, "candidate")
            assert "Set-Cookie" not in resp.headers  # no bucket handed out
            # the preview address is the candidate's: an opt-out override does not apply
            body, _ = await get(session, server.preview_port, "/a", **{"X-Canary": "never"})
            assert body == "candidate"
            body, resp = await get(session, server.listen_port, "/u")
            assert (resp.status, body) == (200, "stable")
            assert SEED in resp.cookies  # the main listener still seeds new users
    async with aiohttp.ClientSession() as session:
        # a route without candidate: stable is all there is
        body, _ = await get(session, server.preview_port, "/solo/x")
        assert body == "stable"
        # the main listener's override still works
        body, _ = await get(session, server.listen_port, "/u", **{"X-Canary": "always"})
        assert body == "candidate"

    assert [p for p, _ in stable.seen].count("/u") == 10
    assert {p for p, _ in candidate.seen} == {"/a", "/u"}
    assert len(candidate.seen) == 21  # 20 previews, 1 user forced by the override

    samples = await scrape(server)
    requests = by(samples, "splitproxy_requests_total", "route", "version", "code", "traffic")
    assert requests[("app", "candidate", "200", "preview")] == 20
    assert requests[("solo", "stable", "200", "preview")] == 1
    assert requests[("app", "stable", "200", "user")] == 10
    assert requests[("app", "candidate", "200", "user")] == 1
    durations = by(
        samples, "splitproxy_request_duration_seconds_count", "route", "version", "traffic"
    )
    assert durations[("app", "candidate", "preview")] == 20
    assert durations[("app", "candidate", "user")] == 1
    decisions = by(samples, "splitproxy_routing_decisions_total", "route", "version", "reason")
    assert decisions[("app", "candidate", "preview")] == 20
    assert decisions[("solo", "stable", "preview")] == 1

    # the analyzer's live windows saw the 11 user requests, not one of the previews
    periods = server.recorder.observations("app", time.time() - 60)
    assert sum(p.candidate.requests for p in periods) == 1
    assert sum(p.stable.requests for p in periods) == 10
    assert sum(p.stable.requests for p in server.recorder.observations("solo", 0.0)) == 0
    traffic = (await admin(server, "/api/v1/routes/app"))["traffic"]
    assert (traffic["candidate"]["requests"], traffic["stable"]["requests"]) == (1, 10)


async def test_synthetic_markers_are_not_honoured_on_the_preview_listener(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream]
) -> None:
    stable, candidate = upstreams
    server = await start_proxy(routes(stable, candidate), preview_listen="127.0.0.1:0")
    token = server.ctx.synthetic_token if server.ctx is not None else ""
    to_stable = {HEADER: marker("app", "stable", token)}
    async with aiohttp.ClientSession() as session:
        body, _ = await get(session, server.preview_port, "/m", **to_stable)
        assert body == "candidate"
        # on the main listener the same marker is synthetic traffic to stable
        body, _ = await get(session, server.listen_port, "/m", **to_stable)
        assert body == "stable"
    assert candidate.marked() == []  # the upstream never sees a marker from a preview
    samples = await scrape(server)
    synthetic = by(samples, "splitproxy_synthetic_requests_total", "route", "version", "code")
    assert synthetic == {("app", "stable", "200"): 1}
    requests = by(samples, "splitproxy_requests_total", "route", "version", "code", "traffic")
    assert requests == {("app", "candidate", "200", "preview"): 1}


@pytest.mark.parametrize("held", ["waiting", "paused"])
async def test_a_held_rollout_at_weight_0_still_previews_the_candidate(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream], held: str
) -> None:
    stable, candidate = upstreams
    rollout = {"steps": [{"pause": True}, 50], "interval": "1h"}
    config = routes(stable, candidate, rollout=rollout)
    server = await start_proxy(config, preview_listen="127.0.0.1:0")

    async def phase() -> str:
        view = await admin(server, "/api/v1/routes/app")
        return str(view["rollout"]["phase"])

    deadline = time.monotonic() + 5
    while await phase() != "waiting":
        assert time.monotonic() < deadline, await phase()
        await asyncio.sleep(0.05)
    if held == "paused":
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{server.admin_port}/api/v1/routes/app/pause", json={}
            ) as resp,
        ):
            assert resp.status == 200
        assert await phase() == "paused"
    view = await admin(server, "/api/v1/routes/app")
    assert view["weight"]["effective"] == 0
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            body, _ = await get(session, server.preview_port)
            assert body == "candidate"
            body, _ = await get(session, server.listen_port)
            assert body == "stable"
    assert await phase() == held  # previews moved nothing
    traffic = (await admin(server, "/api/v1/routes/app"))["traffic"]
    assert (traffic["candidate"]["requests"], traffic["stable"]["requests"]) == (0, 5)


async def test_there_is_no_preview_listener_unless_it_is_set(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream]
) -> None:
    stable, candidate = upstreams
    server = await start_proxy(routes(stable, candidate))
    assert server.settings.preview_listen is None
    assert server.preview_port == 0
    async with aiohttp.ClientSession() as session:
        body, _ = await get(session, server.listen_port)
        assert body == "stable"
    samples = await scrape(server)
    traffic = {dict(labels)["traffic"] for (name, labels) in samples if "traffic" in dict(labels)}
    assert traffic == {"user"}


async def test_shutdown_drains_a_preview_request_and_closes_the_preview_listener(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream]
) -> None:
    stable, candidate = upstreams
    server = await start_proxy(
        routes(stable, candidate), preview_listen="127.0.0.1:0", drain_timeout=5.0
    )
    port = server.preview_port
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get(session, port, "/hang"))  # the upstream takes 2 s
        deadline = time.monotonic() + 5
        while not any(p == "/hang" for p, _ in candidate.seen):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await server.shutdown()
        body, resp = await slow
        assert (resp.status, body) == (200, "candidate")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_failing_candidate_is_not_replayed_on_stable_for_a_preview(
    start_proxy: StartProxy, upstreams: tuple[Upstream, Upstream], refused_port: Callable[[], int]
) -> None:
    stable, candidate = upstreams
    config = routes(stable, candidate)
    # nothing listens at the candidate's address
    config["routes"][1]["candidate"]["url"] = f"http://127.0.0.1:{refused_port()}"
    server = await start_proxy(config, preview_listen="127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        # the preview asked for the candidate's answer: it gets the failure, not stable's page
        _, resp = await get(session, server.preview_port, "/p")
        assert resp.status == 502
        # a user forced to the candidate is replayed on stable, as before
        body, resp = await get(session, server.listen_port, "/u", **{"X-Canary": "always"})
        assert (resp.status, body) == (200, "stable")
    assert [p for p, _ in stable.seen] == ["/u"]
    samples = await scrape(server)
    requests = by(samples, "splitproxy_requests_total", "route", "version", "code", "traffic")
    assert requests[("app", "candidate", "502", "preview")] == 1
    # the analyzer weighs the user's failed attempt only
    periods = server.recorder.observations("app", time.time() - 60)
    assert sum(p.candidate.errors for p in periods) == 1
