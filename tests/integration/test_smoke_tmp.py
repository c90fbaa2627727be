from __future__ import annotations
import aiohttp
from aiohttp import web
from tests.helpers import route

async def test_smoke(start_proxy, aiohttp_server) -> None:
    async def h(r: web.Request) -> web.Response:
        return web.Response(text="stable")
    app = web.Application(); app.router.add_get("/", h)
    up = await aiohttp_server(app)
    srv = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"http://127.0.0.1:{srv.listen_port}/") as r:
                assert await r.text() == "stable"
