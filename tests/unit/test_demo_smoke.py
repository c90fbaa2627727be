"""The demo's test job, ``python -m splitproxy.demo.smoke``: it passes only when every answer is
a 200 naming its version, against a real loopback upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from splitproxy.demo import smoke
from splitproxy.demo.service import Faults, create_app


@pytest.fixture
async def candidate() -> AsyncIterator[tuple[str, Faults]]:
    faults = Faults()
    server = TestServer(create_app("candidate", faults=faults), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", faults
    await server.close()


async def run(monkeypatch: pytest.MonkeyPatch, url: str | None) -> int:
    if url is None:
        monkeypatch.delenv("SPLITPROXY_PREVIEW_URL", raising=False)
    else:
        monkeypatch.setenv("SPLITPROXY_PREVIEW_URL", url)
    return await asyncio.to_thread(smoke.main, ["--rounds", "2"])


async def test_passes_against_a_healthy_candidate_and_says_so(
    candidate: tuple[str, Faults],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = candidate
    assert await run(monkeypatch, url) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "GET /: 200 from candidate"
    assert out[-1] == f"smoke: 6/6 requests passed against {url}"


async def test_fails_when_the_candidate_answers_500_or_is_gone(
    candidate: tuple[str, Faults],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, faults = candidate
    faults.error_rate = 1.0  # changed while it runs: the next request fails
    assert await run(monkeypatch, url) == 1
    out = capsys.readouterr().out
    assert "GET /cart: 500 from candidate" in out
    assert out.splitlines()[-1].startswith("smoke: 0/6 requests passed")
    assert await run(monkeypatch, "http://127.0.0.1:9") == 1  # nothing listens there
    assert "no answer" in capsys.readouterr().out
    assert await run(monkeypatch, None) == 2
    assert "SPLITPROXY_PREVIEW_URL is not set" in capsys.readouterr().out
