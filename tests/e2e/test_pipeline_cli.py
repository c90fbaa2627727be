"""The CLI verbs a CI pipeline uses, against a real ``splitproxy serve``: ``status --wait``
exits 0 on promotion, 1 on rollback (the reason on stderr), 2 on timeout; ``events`` prints
the ledger."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.proc import cli
from tests.e2e.test_rollout_cli import (
    ROUTE,
    start_proxy,
    traffic,
    versions,
    write_config,
)


@pytest.mark.timeout(60)
async def test_status_wait_exits_0_promoted_1_rolled_back_2_timeout(
    tmp_path: Path,
    serve: Serve,
) -> None:
    stable, candidate = await versions(serve)
    config = write_config(tmp_path / "routes.yaml", stable, candidate, steps=[50])
    with start_proxy(tmp_path, config) as proxy:
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        idle = await asyncio.to_thread(
            cli, "status", "--wait", ROUTE, "--wait-timeout", "1s", "--interval", "0.2", *admin
        )
        assert idle.returncode == 2, idle  # no traffic: the step cannot pass in a second
        assert "still" in idle.stderr
        async with traffic(proxy):
            done = await asyncio.to_thread(
                cli, "status", "--wait", ROUTE, "--wait-timeout", "25s", "--interval", "0.2",
                "--revision", "1.1", *admin,
            )  # fmt: skip
        assert done.returncode == 0, done
        other = await asyncio.to_thread(
            cli, "status", "--wait", ROUTE, "--revision", "1.2", "--wait-timeout", "1s", *admin
        )
        assert other.returncode == 2, other  # 1.1's promotion is not 1.2's
        assert done.stdout.strip().splitlines()[-1].startswith(f"{ROUTE}: promoted")
        events = await asyncio.to_thread(cli, "events", ROUTE, *admin)
        assert events.returncode == 0, events.stderr
        kinds = [line.split()[4] for line in events.stdout.splitlines()]
        assert kinds[0] == "started", events.stdout
        assert kinds[-1] == "promoted", events.stdout
        as_json = await asyncio.to_thread(cli, "events", ROUTE, "--json", "--limit", "1", *admin)
        assert json.loads(as_json.stdout)["kind"] == "promoted"

    bad = tmp_path / "bad"
    bad.mkdir()
    stable, candidate = await versions(serve, error_rate=0.5)
    config = write_config(bad / "routes.yaml", stable, candidate)
    with start_proxy(bad, config) as proxy:
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        async with traffic(proxy):
            done = await asyncio.to_thread(
                cli, "status", "--wait", ROUTE, "--wait-timeout", "25s", "--interval", "0.2",
                *admin,
            )  # fmt: skip
        assert done.returncode == 1, done
        assert done.stderr.startswith("rolled back: ")
        missing = await asyncio.to_thread(cli, "status", "--wait", "nope", *admin)
        assert missing.returncode == 2
        assert "nope" in missing.stderr
