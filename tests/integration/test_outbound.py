"""The proxy's own outbound calls against real servers on 127.0.0.1: hooks and metric sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from splitproxy.rollout.hooks import HookClient, slack_text
from splitproxy.rollout.sources import SourceError, query_prometheus, read_web


class Recorder:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status = self.answers.pop(0) if self.answers else 200
        return web.json_response({"ok": status < 300}, status=status)


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_hook_retries_until_it_gets_a_2xx(session: aiohttp.ClientSession) -> None:
    rec = Recorder([503, 500, 200])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await serve(app)
    try:
        result = await HookClient(session, backoff=0.01).post(
            f"http://127.0.0.1:{server.port}/hook", {"type": "step", "route": "shop"}, retries=2
        )
    finally:
        await server.close()
    assert result.ok
    assert result.attempts == 3
    assert rec.bodies == [{"type": "step", "route": "shop"}] * 3


async def test_a_hook_that_keeps_failing_reports_why(session: aiohttp.ClientSession) -> None:
    rec = Recorder([500, 500])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await serve(app)
    try:
        result = await HookClient(session, backoff=0.01).post(
            f"http://127.0.0.1:{server.port}/hook", {}, retries=1
        )
    finally:
        await server.close()
    assert not result.ok
    assert result.as_dict() == {"ok": False, "status": 500, "attempts": 2, "error": "HTTP 500"}


async def test_a_slow_hook_times_out(session: aiohttp.ClientSession) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", slow)
    server = await serve(app)
    try:
        result = await HookClient(session).post(
            f"http://127.0.0.1:{server.port}/hook", {}, timeout=0.2, retries=0
        )
    finally:
        await server.close()
    assert not result.ok
    assert result.error == "no answer within 0.2s"


async def test_an_unreachable_hook_is_a_failure_not_a_crash(session: aiohttp.ClientSession) -> None:
    server = await serve(web.Application())
    port = server.port
    await server.close()
    result = await HookClient(session, backoff=0.01).post(
        f"http://127.0.0.1:{port}/hook", {}, retries=1
    )
    assert not result.ok
    assert result.status is None
    assert result.error is not None
    assert "ClientConnectorError" in result.error


def test_slack_text_names_the_route_and_the_event() -> None:
    body = slack_text(
        {"route": "shop", "type": "rolled_back", "weight": 10, "message": "error rate 4.1%"}
    )
    assert body == {"text": "splitproxy · shop: rolled_back (candidate at 10%). error rate 4.1%"}


async def test_web_source_reads_a_json_field_or_the_status(session: aiohttp.ClientSession) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"checks": [{"score": 0.97}], "name": "x"}, status=200)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/broken", broken)
    server = await serve(app)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert (await read_web(session, base + "/health", field="checks.0.score")).value == 0.97
        assert (await read_web(session, base + "/broken")).status == 503
        with pytest.raises(SourceError, match=r"no field 'checks\.1\.score'"):
            await read_web(session, base + "/health", field="checks.1.score")
        with pytest.raises(SourceError, match="is not a number"):
            await read_web(session, base + "/health", field="name")
        with pytest.raises(SourceError, match="HTTP 503"):
            await read_web(session, base + "/broken", field="x")
    finally:
        await server.close()


async def test_prometheus_source_reads_one_value(session: aiohttp.ClientSession) -> None:
    answers: dict[str, Any] = {
        "one": {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.25"]}]},
        },
        "none": {"status": "success", "data": {"resultType": "vector", "result": []}},
        "two": {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]},
        },
        "scalar": {"status": "success", "data": {"resultType": "scalar", "result": [1, "42"]}},
        "bad": {"status": "error", "error": "parse error at char 3"},
    }

    async def query(request: web.Request) -> web.Response:
        return web.json_response(answers[request.query["query"]])

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await serve(app)
    base = f"http://127.0.0.1:{server.port}/"
    try:
        assert await query_prometheus(session, base, "one") == 0.25
        assert await query_prometheus(session, base, "scalar") == 42.0
        assert await query_prometheus(session, base, "none") is None
        with pytest.raises(SourceError, match="returned 2 series"):
            await query_prometheus(session, base, "two")
        with pytest.raises(SourceError, match="parse error"):
            await query_prometheus(session, base, "bad")
    finally:
        await server.close()
