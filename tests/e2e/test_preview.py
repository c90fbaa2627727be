"""The real CLI with ``--preview-listen``: both listeners answer, the access log tells them
apart, and SIGTERM drains both."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.e2e.proc import serving

PREVIEW = re.compile(r"preview listener on 127\.0\.0\.1:(\d+)")


async def _version(name: str) -> TestServer:
    """An upstream that answers its name; ``/slow`` after 1.5 s."""

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(1.5)
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def _get(url: str) -> tuple[int, str, str | None]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode(), resp.headers.get("Set-Cookie")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(40)
async def test_serve_with_a_preview_listener_answers_from_both_and_drains_both(
    tmp_path: Path,
) -> None:
    stable, candidate = await _version("stable"), await _version("candidate")
    config = tmp_path / "routes.yaml"
    route = {
        "name": "app",
        "stable": f"http://127.0.0.1:{stable.port}",
        "candidate": f"http://127.0.0.1:{candidate.port}",
        "weight": 0,
        "sticky": {"cookie": "splitproxy_id"},
    }
    config.write_text(yaml.safe_dump({"routes": [route]}))
    try:
        with serving(config, tmp_path / "proxy.log", "--preview-listen", "127.0.0.1:0") as proxy:
            found = PREVIEW.search(proxy.output())
            assert found is not None, proxy.output()
            preview = int(found.group(1))
            assert preview != proxy.port

            status, body, cookie = await asyncio.to_thread(_get, f"http://127.0.0.1:{preview}/p")
            assert (status, body, cookie) == (200, "candidate", None)
            status, body, cookie = await asyncio.to_thread(_get, f"http://127.0.0.1:{proxy.port}/u")
            assert (status, body) == (200, "stable")
            assert cookie is not None
            assert cookie.startswith("splitproxy_id=")

            async with aiohttp.ClientSession() as session:
                # a slow request in flight on each listener when SIGTERM arrives
                slow = [
                    asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow"))
                    for port in (proxy.port, preview)
                ]
                await asyncio.sleep(0.5)
                proxy.process.send_signal(signal.SIGTERM)
                answers = []
                for task in slow:
                    resp = await asyncio.wait_for(task, 10)
                    async with resp:
                        answers.append((resp.status, await resp.text()))
                assert answers == [(200, "stable"), (200, "candidate")]
            code = await asyncio.to_thread(proxy.process.wait, 15)
            assert code == 0, proxy.output()
            assert _refused(proxy.port)
            assert _refused(preview)

            lines = proxy.output().splitlines()
            (previewed,) = [line for line in lines if '"GET /p HTTP/1.1"' in line]
            assert "version=candidate reason=preview " in previewed
            assert previewed.endswith(" listener=preview")
            (user,) = [line for line in lines if '"GET /u HTTP/1.1"' in line]
            assert "version=stable reason=sticky " in user
            assert "listener=" not in user
    finally:
        await stable.close()
        await candidate.close()
