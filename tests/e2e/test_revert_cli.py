"""The revert window through the real CLI: a promoted candidate, the GitOps commit that makes
it stable, then ``splitproxy revert``: inside the window every request goes back to the
previous stable at once; outside it the command is refused with the reason."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Serve
from tests.e2e.proc import cli
from tests.e2e.test_rollout_cli import (
    ROUTE,
    route_view,
    served_by,
    start_proxy,
    traffic,
    versions,
    wait_for,
)


def config(path: Path, stable: str, candidate: str, window: str) -> dict[str, Any]:
    route = {
        "name": ROUTE,
        "stable": {"url": stable, "revision": "1.0"},
        "candidate": {"url": candidate, "revision": "1.1"},
        "rollout": {
            "steps": [50],
            "interval": "1s",
            "min_requests": 10,
            "revert_window": window,
        },
    }
    document = {"routes": [route]}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return document


def moved_on(path: Path, document: dict[str, Any], candidate: str) -> None:
    """The commit after the promotion: the candidate is the route's stable now."""
    route = document["routes"][0]
    route["stable"] = {"url": candidate, "revision": "1.1"}
    del route["candidate"]
    path.write_text(yaml.safe_dump(document, sort_keys=False))


async def until_reloaded(proxy: Any, timeout: float = 10.0) -> None:
    """Until the proxy serves the commit that named the candidate stable."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await route_view(proxy))["candidate"] is None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the new file was not loaded: {proxy.output()[-2000:]}")


@pytest.mark.timeout(45)
async def test_revert_inside_the_window_and_refused_outside_it(
    tmp_path: Path,
    serve: Serve,
) -> None:
    stable, candidate = await versions(serve)
    path = tmp_path / "routes.yaml"
    document = config(path, stable, candidate, window="1h")
    with start_proxy(tmp_path, path) as proxy:
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        async with traffic(proxy):
            await wait_for(proxy, lambda r: r["phase"] == "promoted", "promoted")
        rollout = (await route_view(proxy))["rollout"]
        assert rollout["revert"]["previous_stable"] == [stable]
        moved_on(path, document, candidate)
        await until_reloaded(proxy)
        assert await served_by(proxy, 10) == Counter(candidate=10)  # the file's new stable
        result = await asyncio.to_thread(cli, "revert", ROUTE, "--reason", "pager", *admin)
        assert result.returncode == 0, result.stderr
        assert "reverted" in result.stdout
        assert await served_by(proxy, 20) == Counter(stable=20)  # at once, every request
        view = await route_view(proxy)
        assert view["weight"]["source"] == "revert"
        again = await asyncio.to_thread(cli, "revert", ROUTE, *admin)
        assert again.returncode != 0
        assert "no promotion to revert" in again.stderr

    short = tmp_path / "short"
    short.mkdir()
    path = short / "routes.yaml"
    config(path, stable, candidate, window="1s")
    with start_proxy(short, path) as proxy:
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        async with traffic(proxy):
            await wait_for(proxy, lambda r: r["phase"] == "promoted", "promoted")
        await asyncio.sleep(1.5)
        result = await asyncio.to_thread(cli, "revert", ROUTE, *admin)
        assert result.returncode != 0
        assert "its revert window closed at" in result.stderr
        assert await served_by(proxy, 10) == Counter(candidate=10)
