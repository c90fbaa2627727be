"""The admin API cannot be driven by a web page: not cross-site, not through DNS rebinding.

A browser can send a "simple" cross-site POST (a form, or ``fetch`` in no-cors mode) with a
text/plain, urlencoded or multipart body and no preflight; it cannot send
``Content-Type: application/json`` without a CORS preflight, which this API never grants. A
page that rebinds its own name to 127.0.0.1 reaches a loopback listener with its own Host.
"""

from __future__ import annotations

import aiohttp
import pytest

from splitproxy.server import Server
from tests.conftest import StartProxy

ROUTES = {"routes": [{"name": "shop", "stable": "http://127.0.0.1:9", "weight": 0}]}
WEIGHTED = {
    "routes": [
        {
            "name": "shop",
            "stable": "http://127.0.0.1:9",
            "candidate": "http://127.0.0.1:10",
            "weight": 0,
        }
    ]
}


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.admin_port}"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_cross_site_simple_post_is_refused_and_changes_nothing(
    start_proxy: StartProxy, content_type: str
) -> None:
    server = await start_proxy(WEIGHTED)
    async with aiohttp.ClientSession() as session:
        async with session.put(
            base(server) + "/api/v1/routes/shop/weight",
            data=b'{"weight": 100}',
            headers={"Content-Type": content_type},
        ) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        async with session.post(
            base(server) + "/api/v1/reload", data=b"x", headers={"Content-Type": content_type}
        ) as resp:
            assert resp.status == 415
        async with session.post(base(server) + "/api/v1/routes/shop/rollback") as resp:
            assert resp.status == 415  # no Content-Type at all: a no-cors fetch
    snapshot = server.state.snapshot
    assert snapshot is not None
    assert snapshot.overrides == {}


async def test_a_json_post_from_another_origin_is_refused(start_proxy: StartProxy) -> None:
    server = await start_proxy(WEIGHTED)
    async with aiohttp.ClientSession() as session:
        async with session.put(
            base(server) + "/api/v1/routes/shop/weight",
            json={"weight": 100},
            headers={"Origin": "http://evil.example"},
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "cross_origin"
        same = f"http://127.0.0.1:{server.admin_port}"
        async with session.put(
            base(server) + "/api/v1/routes/shop/weight",
            json={"weight": 10},
            headers={"Origin": same},
        ) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9901", "10.0.0.1"])
async def test_a_foreign_host_on_a_loopback_listener_is_refused(
    start_proxy: StartProxy, host: str
) -> None:
    server = await start_proxy(ROUTES)
    async with aiohttp.ClientSession() as session:
        async with session.get(base(server) + "/api/v1/status", headers={"Host": host}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "bad_host"
        async with session.get(base(server) + "/livez", headers={"Host": host}) as resp:
            assert resp.status == 200  # health probes keep working
        for loopback in ("localhost:1", "127.0.0.1", "[::1]:9901"):
            async with session.get(
                base(server) + "/api/v1/status", headers={"Host": loopback}
            ) as resp:
                assert resp.status == 200, loopback


@pytest.mark.parametrize(
    "query", ["limit=inf", "limit=1e400", "since=nan", "limit=abc", "since=-inf"]
)
async def test_bad_query_values_are_400_never_500(start_proxy: StartProxy, query: str) -> None:
    server = await start_proxy(ROUTES)
    async with (
        aiohttp.ClientSession() as session,
        session.get(base(server) + "/api/v1/events?" + query) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["code"].startswith("invalid_")


@pytest.mark.parametrize("body", [b"[]", b"null", b'{"weight": "50"}', b'{"weight": 1e999}'])
async def test_bad_bodies_are_400_never_500(start_proxy: StartProxy, body: bytes) -> None:
    server = await start_proxy(WEIGHTED)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            base(server) + "/api/v1/routes/shop/weight",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
