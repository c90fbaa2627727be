"""``GET /api/v1/status`` for many routes: pages, a name filter, the route count, and the same
answer as ever for a config that fits one page."""

from __future__ import annotations

import aiohttp

from splitproxy import statuspage
from tests.conftest import StartProxy

UPSTREAM = "http://127.0.0.1:9"  # never contacted: no request is proxied here


def many(n: int) -> dict[str, object]:
    return {
        "routes": [
            {"name": f"r{i:04d}", "match": {"path_prefix": f"/r{i}/"}, "stable": UPSTREAM}
            for i in range(n)
        ]
    }


async def test_status_comes_in_pages_that_cover_every_route_once(
    start_proxy: StartProxy,
) -> None:
    n = statuspage.DEFAULT_LIMIT + 150  # over one default page, and several slices
    server = await start_proxy(many(n))
    base = f"http://127.0.0.1:{server.admin_port}/api/v1/status"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as resp:
            first = await resp.json()
        async with session.get(base, params={"offset": str(statuspage.DEFAULT_LIMIT)}) as resp:
            rest = await resp.json()
        async with session.get(base, params={"limit": str(n)}) as resp:
            whole = await resp.json()
        async with session.get(base, params={"route": "r011", "limit": "5"}) as resp:
            found = await resp.json()
    assert first["route_count"] == n
    assert len(first["routes"]) == statuspage.DEFAULT_LIMIT
    assert first["page"] == {"offset": 0, "limit": statuspage.DEFAULT_LIMIT, "route": None,
                             "matched": n, "returned": statuspage.DEFAULT_LIMIT}  # fmt: skip
    names = [r["name"] for r in first["routes"] + rest["routes"]]
    assert names == [f"r{i:04d}" for i in range(n)]
    assert [r["name"] for r in whole["routes"]] == names
    assert whole["routes"][0]["stable"] == first["routes"][0]["stable"]
    assert [r["name"] for r in found["routes"]] == [f"r011{i}" for i in range(5)]
    assert found["page"]["matched"] == 10
    assert found["route_count"] == n


async def test_a_small_config_answers_every_route_as_before(start_proxy: StartProxy) -> None:
    server = await start_proxy(many(3))
    base = f"http://127.0.0.1:{server.admin_port}/api/v1/status"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as resp:
            assert resp.content_type == "application/json"
            status = await resp.json()
    assert [r["name"] for r in status["routes"]] == ["r0000", "r0001", "r0002"]
    assert status["route_count"] == 3
    assert {"version", "ready", "draining", "uptime_seconds", "config", "rollouts"} <= set(status)


async def test_a_page_that_is_not_a_whole_number_is_a_json_error(
    start_proxy: StartProxy,
) -> None:
    server = await start_proxy(many(2))
    base = f"http://127.0.0.1:{server.admin_port}/api/v1/status"
    async with aiohttp.ClientSession() as session:
        for query, code in [({"limit": "0"}, "invalid_limit"), ({"offset": "-1"},
                            "invalid_offset"), ({"limit": "ten"}, "invalid_limit")]:  # fmt: skip
            async with session.get(base, params=query) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == code
