"""The shadow phase end to end through the real CLI: ``splitproxy serve`` in a subprocess with a
``--state-dir``, stable and candidate as small aiohttp apps on 127.0.0.1 that count who asked
them (a user, or the proxy's mirrored copy marked ``X-Splitproxy-Mirror: 1``), and steady user
traffic through the proxy.

What a user would notice: a candidate that answers differently, or fails, is rolled back in
its shadow with not one user request on it (counted at the candidate itself); a healthy one
goes on to its first step; a restart in the middle of the shadow carries on with what the
shadow had seen.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from splitproxy.config.mirror import HEADER
from tests.e2e.conftest import Serve
from tests.e2e.proc import cli
from tests.e2e.test_rollout_cli import (
    ROUTE,
    decision,
    events,
    phase_is,
    route_view,
    start_proxy,
    traffic,
    wait_for,
)


def upstream(
    version: str, *, items: list[int], status: int = 200
) -> tuple[web.Application, Counter[str]]:
    """A JSON service; the counter holds its requests by who sent them (``users``,
    ``mirrored``), health probes left out."""
    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        if request.path != "/healthz":
            seen["mirrored" if request.headers.get(HEADER) == "1" else "users"] += 1
        return web.json_response({"version": version, "items": items}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


async def pair(
    serve: Serve, *, items: list[int], status: int = 200
) -> tuple[str, str, Counter[str]]:
    stable_app, _ = upstream("stable", items=[1, 2, 3])
    candidate_app, seen = upstream("candidate", items=items, status=status)
    return await serve(stable_app), await serve(candidate_app), seen


def write(path: Path, stable: str, candidate: str, *, mirror: Any = None, **rollout: Any) -> Path:
    spec: dict[str, Any] = {
        "steps": [50],
        "interval": "1s",
        "min_requests": 10,
        "failure_limit": 0,
        "shadow": {"duration": "2s", "min_requests": 20},
        "checks": [{"metric": "error_rate", "max": "5%"}],
    }
    spec.update(rollout)
    spec = {k: v for k, v in spec.items() if v is not None}
    route: dict[str, Any] = {
        "name": ROUTE,
        "stable": {"url": stable, "revision": "1.0"},
        "candidate": {"url": candidate, "revision": "1.1"},
        "rollout": spec,
    }
    if mirror is not None:
        route["mirror"] = mirror
    path.write_text(yaml.safe_dump({"routes": [route]}, sort_keys=False))
    return path


DIVERGENCE = {"metric": "mirror_divergence", "max": "1%"}


@pytest.mark.timeout(40)
async def test_a_candidate_answering_differently_is_rolled_back_before_any_user_meets_it(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate, seen = await pair(serve, items=[1, 2, 4])
    # bodies compared as JSON, the version field left out: only the items differ
    mirror = {"percent": 100, "compare": {"body": "hash", "json_ignore": ["version"]}}
    checks = [{"metric": "error_rate", "max": "5%"}, DIVERGENCE]
    config = write(tmp_path / "routes.yaml", stable, candidate, mirror=mirror, checks=checks,
                   shadow={"duration": "30s", "min_requests": 200})  # fmt: skip
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy, rate=50) as users:
            rollout = await wait_for(proxy, phase_is("rolled_back", "promoted"), "finished")
        assert rollout["phase"] == "rolled_back", rollout
        assert rollout["step"] == 0  # before the first step
        assert seen["users"] == 0, seen
        assert seen["mirrored"] > 0, seen
        assert set(users.seen) == {"stable 200"}, users.seen
        rolled = decision(await events(proxy), "rolled_back")
        assert rolled["message"] == (
            "in the shadow, mirrored answers diverge from stable's clearly above 1.00%"
        )
        judged = {c["name"]: c for c in rolled["checks"]}
        assert judged["mirror_divergence_guard"]["verdict"] == "fail"
        assert judged["mirror_divergence"]["sample"] > 0
        shadow = rollout["shadow"]
        assert shadow["stage"] == "rolled_back"
        assert shadow["divergence"] == 1.0
        assert shadow["diverged"] == shadow["compared"] > 0


@pytest.mark.timeout(40)
async def test_a_failing_candidate_is_rolled_back_in_its_shadow_on_a_route_without_mirror(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate, seen = await pair(serve, items=[1, 2, 3], status=503)
    config = write(tmp_path / "routes.yaml", stable, candidate,
                   shadow={"duration": "30s", "min_requests": 200})  # fmt: skip
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy, rate=50) as users:
            rollout = await wait_for(proxy, phase_is("rolled_back", "promoted"), "finished")
        assert rollout["phase"] == "rolled_back", rollout
        assert seen["users"] == 0, seen
        assert seen["mirrored"] > 0, seen  # the shadow's own copies (the route has no mirror:)
        assert set(users.seen) == {"stable 200"}, users.seen
        rolled = decision(await events(proxy), "rolled_back")
        assert rolled["message"] == (
            "in the shadow, the guard tripped: mirrored answers' error rate far above the cap"
        )
        assert (await route_view(proxy))["mirror"] is None  # no mirror: of the route's own


@pytest.mark.timeout(40)
async def test_a_healthy_candidate_passes_its_shadow_and_goes_on_to_the_first_step(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate, seen = await pair(serve, items=[1, 2, 3])
    config = write(tmp_path / "routes.yaml", stable, candidate)
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy, rate=50):
            rollout = await wait_for(proxy, lambda r: r["step"] >= 1, "at the first step")
            users_at_step = seen["users"]
            await wait_for(proxy, phase_is("promoted", "rolled_back"), "finished")
        ledger = await events(proxy)
        said = [(e["kind"], e["message"].partition(" ")[0]) for e in ledger]
        # (a readiness wait may come first) the shadow, its pass, then the first step
        shadow = said.index(("waiting", "shadow:"))
        assert said[shadow + 1 : shadow + 3] == [("proceeded", "shadow"), ("step", "step")]
        passed = ledger[shadow + 1]
        assert passed["message"].startswith("shadow passed after ")
        assert {c["name"]: c["verdict"] for c in passed["checks"]}["error_rate"] == "pass"
        assert rollout["shadow"]["stage"] == "passed"
        assert rollout["shadow"]["mirrored"] >= 20
        assert seen["mirrored"] >= 20
        assert seen["users"] > users_at_step >= 0  # users reach it from the first step on


@pytest.mark.timeout(60)
async def test_a_restart_in_the_middle_of_the_shadow_carries_on(
    tmp_path: Path, serve: Serve
) -> None:
    stable, candidate, seen = await pair(serve, items=[1, 2, 3])
    config = write(tmp_path / "routes.yaml", stable, candidate,
                   shadow={"duration": "1h", "min_requests": 10})  # fmt: skip
    with start_proxy(tmp_path, config) as proxy:
        async with traffic(proxy, rate=50):
            before = await wait_for(
                proxy, lambda r: (r["shadow"] or {}).get("mirrored", 0) >= 10, "mirrored"
            )
    with start_proxy(tmp_path, config, log="again.log") as proxy:
        async with traffic(proxy, rate=50):
            after = await wait_for(
                proxy,
                lambda r: r["shadow"]["mirrored"] > before["shadow"]["mirrored"],
                "mirroring again",
            )
        assert (after["phase"], after["waiting_for"]) == ("waiting", "shadow")
        assert after["shadow"]["started_at"] == before["shadow"]["started_at"]
        assert any(e["kind"] == "state_restored" for e in await events(proxy))
    assert seen["users"] == 0, seen


def test_check_refuses_a_divergence_check_without_copies_and_warns_of_an_unjudged_shadow(
    tmp_path: Path,
) -> None:
    no_copies = write(tmp_path / "bad.yaml", "http://127.0.0.1:1", "http://127.0.0.1:2",
                      shadow=None, checks=[DIVERGENCE])  # fmt: skip
    result = cli("check", str(no_copies))
    assert result.returncode == 1
    assert (
        f"{no_copies}: routes[0].rollout.checks[0]: 'mirror_divergence' judges mirrored copies: "
        "give the route 'mirror:' or the rollout 'shadow:'"
    ) in result.stderr
    unjudged = write(tmp_path / "ok.yaml", "http://127.0.0.1:1", "http://127.0.0.1:2")
    result = cli("check", str(unjudged))
    assert result.returncode == 0, result.stderr
    assert "warning: routes[0].rollout.shadow: no {metric: mirror_divergence} check" in (
        result.stderr
    )
    judged = write(tmp_path / "judged.yaml", "http://127.0.0.1:1", "http://127.0.0.1:2",
                   checks=[DIVERGENCE])  # fmt: skip
    result = cli("check", str(judged))
    assert (result.returncode, result.stderr) == (0, "")
