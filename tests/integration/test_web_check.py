"""The web check as the controller reads it: method, headers, body, and bracketed JSON paths."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.config import WebCheck
from splitproxy.rollout.external import make_reader


async def test_a_web_check_sends_its_method_headers_and_body_and_reads_a_field() -> None:
    seen: list[tuple[str, str | None, str]] = []

    async def score(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("X-Token"), await request.text()))
        return web.json_response({"items": [{"value": 0.93}]})

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_route("*", "/score", score)
    app.router.add_get("/down", down)
    app.router.add_get("/up", score)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            read = make_reader(session)
            check = WebCheck(
                web=base + "/score",
                method="POST",
                headers={"X-Token": "abc"},
                body='{"q": 1}',
                json_path="items[0].value",
                min=0.9,
            )
            assert await read(check) == 0.93
            assert seen == [("POST", "abc", '{"q": 1}')]
            assert await read(WebCheck(web=base + "/up")) == 1.0
            assert await read(WebCheck(web=base + "/down")) == 0.0
    finally:
        await server.close()
