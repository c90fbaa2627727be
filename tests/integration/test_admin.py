"""The admin API on its own listener: health, status, runtime weights, auth, JSON errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.server import Server
from tests.conftest import StartProxy


async def _named(name: str) -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def versions() -> AsyncIterator[tuple[str, str]]:
    stable, candidate = await _named("stable"), await _named("candidate")
    yield f"http://127.0.0.1:{stable.port}", f"http://127.0.0.1:{candidate.port}"
    await stable.close()
    await candidate.close()


def shop(stable: str, candidate: str, weight: float = 0) -> dict[str, object]:
    return {
        "routes": [
            {
                "name": "shop",
                "stable": stable,
                "candidate": {"url": candidate, "revision": "2"},
                "weight": weight,
            }
        ]
    }


async def _split(server: Server, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{server.listen_port}/") as resp:
                seen[await resp.text()] += 1
    return seen


async def test_health_and_status(start_proxy: StartProxy, versions: tuple[str, str]) -> None:
    server = await start_proxy(shop(*versions, weight=10))
    admin = f"http://127.0.0.1:{server.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(admin + "/livez") as resp:
            assert resp.status == 200
        async with session.get(admin + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
        async with session.get(admin + "/api/v1/status") as resp:
            status = await resp.json()
    assert status["ready"] is True
    assert status["config"]["revision"] == server.state.snapshot.revision  # type: ignore[union-attr]
    (route,) = status["routes"]
    assert route["name"] == "shop"
    assert route["stable"]["urls"] == [versions[0]]
    assert route["candidate"]["revision"] == "2"
    assert route["weight"] == {"effective": 10.0, "file": 10.0, "runtime": None, "source": "file"}


async def test_runtime_weight_moves_traffic_and_shows_who_set_it(
    start_proxy: StartProxy, versions: tuple[str, str]
) -> None:
    server = await start_proxy(shop(*versions, weight=0))
    assert await _split(server, 20) == Counter(stable=20)
    admin = f"http://127.0.0.1:{server.admin_port}/api/v1/routes/shop"
    async with aiohttp.ClientSession() as session:
        async with session.put(admin + "/weight", json={"weight": 100}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["weight"]["effective"] == 100.0
        assert body["weight"]["file"] == 0.0
        assert body["weight"]["source"] == "runtime"
        assert body["weight"]["runtime"]["percent"] == 100.0
        assert await _split(server, 20) == Counter(candidate=20)
        async with session.get(admin) as resp:
            assert (await resp.json())["weight"]["source"] == "runtime"
        async with session.delete(admin + "/weight") as resp:
            assert (await resp.json())["weight"] == {
                "effective": 0.0,
                "file": 0.0,
                "runtime": None,
                "source": "file",
            }
    assert await _split(server, 20) == Counter(stable=20)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/v1/routes/nope/weight", {"weight": 5}, 404, "no_such_route"),
        ("/api/v1/routes/shop/weight", {"weight": 101}, 400, "invalid_weight"),
        ("/api/v1/routes/shop/weight", {"weight": "ten"}, 400, "invalid_weight"),
        ("/api/v1/routes/shop/weight", {"percent": 5}, 400, "invalid_weight"),
    ],
)
async def test_bad_admin_requests_get_json_errors(
    start_proxy: StartProxy,
    versions: tuple[str, str],
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    server = await start_proxy(shop(*versions))
    async with aiohttp.ClientSession() as session:
        async with session.put(f"http://127.0.0.1:{server.admin_port}{path}", json=body) as resp:
            assert resp.status == status
            error = (await resp.json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert server.state.snapshot is not None
    assert server.state.snapshot.overrides == {}


async def test_unknown_paths_and_invalid_json_get_json_errors(
    start_proxy: StartProxy, versions: tuple[str, str]
) -> None:
    server = await start_proxy(shop(*versions))
    base = f"http://127.0.0.1:{server.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/v1/nothing") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with session.put(
            base + "/api/v1/routes/shop/weight",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_a_weight_on_a_route_without_candidate_is_refused(
    start_proxy: StartProxy, versions: tuple[str, str]
) -> None:
    server = await start_proxy({"routes": [{"name": "solo", "stable": versions[0]}]})
    url = f"http://127.0.0.1:{server.admin_port}/api/v1/routes/solo/weight"
    async with aiohttp.ClientSession() as session, session.put(url, json={"weight": 5}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "no_candidate"


async def test_admin_token_guards_the_api_but_not_health(
    start_proxy: StartProxy, versions: tuple[str, str]
) -> None:
    server = await start_proxy(shop(*versions), admin_token="s3cret")
    base = f"http://127.0.0.1:{server.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/v1/status") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        bad = {"Authorization": "Bearer wrong"}
        async with session.put(
            base + "/api/v1/routes/shop/weight", json={"weight": 50}, headers=bad
        ) as resp:
            assert resp.status == 401
        good = {"Authorization": "Bearer s3cret"}
        async with session.get(base + "/api/v1/status", headers=good) as resp:
            assert resp.status == 200
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 200
    assert server.state.snapshot is not None
    assert server.state.snapshot.overrides == {}


async def test_readyz_turns_503_while_draining(
    start_proxy: StartProxy, versions: tuple[str, str]
) -> None:
    server = await start_proxy(shop(*versions))
    server.request_stop()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.admin_port}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
