"""A backend with several URLs is served round-robin, and reloads do not leave state behind."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.config import parse_routing
from splitproxy.dataplane.state import content_hash
from tests.conftest import StartProxy


async def _named(name: str) -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_urls_take_turns_and_a_reload_forgets_old_lists(start_proxy: StartProxy) -> None:
    ups = [await _named(n) for n in ("a", "b", "c", "d")]
    try:
        url = [f"http://127.0.0.1:{u.port}" for u in ups]
        server = await start_proxy({"routes": [{"name": "app", "stable": url[:2]}]})
        proxy = f"http://127.0.0.1:{server.listen_port}/"
        async with aiohttp.ClientSession() as session:
            seen = []
            for _ in range(4):
                async with session.get(proxy) as resp:
                    seen.append(await resp.text())
            assert seen in (["a", "b", "a", "b"], ["b", "a", "b", "a"])

            text = f"routes:\n  - {{name: app, stable: [{url[2]}, {url[3]}]}}\n"
            server.state.load(parse_routing(text), content_hash(text), time.time())
            seen = []
            for _ in range(4):
                async with session.get(proxy) as resp:
                    seen.append(await resp.text())
            assert sorted(seen) == ["c", "c", "d", "d"]
        assert server.ctx is not None
        assert len(server.ctx._rr) == 1  # only the list in force keeps a counter
    finally:
        for u in ups:
            await u.close()
