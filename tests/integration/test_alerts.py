"""The alert rules (config/prometheus/alerts.yml) and the Grafana dashboard
(config/grafana/splitproxy.json), held to real Prometheus tools.

- ``promtool check rules`` and ``check config``: the files the compose stack mounts load.
- ``promtool test rules``: on made-up series, each alert fires when it should and stays quiet
  when it should not (the `for:` durations included).
- A real Prometheus, with the compose stack's prometheus.yml (its target and intervals made
  local) and so the alert rules, scrapes a real proxy that runs a rollout and serves traffic:
  every rule evaluates without error, the candidate-errors and reload-failure alerts go
  pending on the real metrics, and every dashboard query returns data.

Prometheus and promtool come from Debian's ``prometheus`` package, installed as in
``test_prometheus.py`` (skipped only where it cannot be).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy
from tests.integration.test_prometheus import (  # noqa: F401  (fixtures, used by name)
    Prometheus,
    Prometheuses,
    prometheus_binary,
)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = REPO / "config" / "grafana" / "splitproxy.json"


@pytest.fixture(scope="session")
def promtool(prometheus_binary: str) -> str:  # noqa: F811
    tool = Path(prometheus_binary).with_name("promtool")
    if not tool.exists():
        pytest.skip(f"no promtool beside {prometheus_binary}")
    return str(tool)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    found: list[dict[str, Any]] = group["rules"]
    return found


def test_promtool_accepts_the_rules_and_the_prometheus_config(promtool: str) -> None:
    checked = run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    config = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout


def test_every_rule_is_an_alert_with_a_severity_and_a_summary() -> None:
    for rule in rules():
        assert rule["alert"].startswith("Splitproxy"), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{text}}}", "values": values}


def requests(route: str, version: str, code: int, values: str, traffic: str = "user") -> Any:
    return series(
        "splitproxy_requests_total", values, route=route, version=version, code=str(code),
        traffic=traffic,
    )  # fmt: skip


def expect(alert: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": dict(found)} for found in labels],
    }


PROXY = {"job": "splitproxy", "instance": "splitproxy:9901"}
WARN = {"severity": "warning"}
CRIT = {"severity": "critical"}

# Made-up series, one minute apart, and which alerts they must (and must not) raise when.
CASES: list[dict[str, Any]] = [
    {  # the proxy stops answering scrapes at 1m: pending for a minute, then firing
        "input_series": [series("up", "1 0 0 0", **PROXY)],
        "alert_rule_test": [
            expect("SplitproxyDown", "1m"),
            expect("SplitproxyDown", "2m", {**PROXY, **CRIT}),
        ],
    },
    {  # a rollback at 2m: firing at once, resolved 15 minutes on
        "input_series": [
            series("splitproxy_rollouts_total", "0 0 1x30", route="app", result="rolled_back"),
            series("splitproxy_rollouts_total", "0 0 0x30", route="app", result="promoted"),
        ],
        "alert_rule_test": [
            expect("SplitproxyRolloutRolledBack", "1m"),
            expect(
                "SplitproxyRolloutRolledBack",
                "3m",
                {"route": "app", "result": "rolled_back", **WARN},
            ),
            expect("SplitproxyRolloutRolledBack", "20m"),
        ],
    },
    {  # "app" waits from 0m, "db" is paused from 0m; "web" progresses for 2 hours
        "input_series": [
            series("splitproxy_rollout_phase", "1x130", route="app", phase="waiting"),
            series("splitproxy_rollout_phase", "1x130", route="db", phase="paused"),
            series("splitproxy_rollout_phase", "1x130", route="web", phase="progressing"),
            series("splitproxy_rollout_phase", "0x130", route="web", phase="waiting"),
            series("splitproxy_rollout_phase", "0x130", route="web", phase="paused"),
        ],
        "alert_rule_test": [
            expect("SplitproxyRolloutWaitingTooLong", "29m"),
            expect("SplitproxyRolloutWaitingTooLong", "30m", {"route": "app", **WARN}),
            expect("SplitproxyRolloutPausedTooLong", "59m"),
            expect("SplitproxyRolloutPausedTooLong", "60m", {"route": "db", **WARN}),
        ],
    },
    {  # per minute: "app"'s candidate fails 10 % of 100, stable 1 % of 909; "close"'s
        # candidate fails 1.5 % (stable 1 %); "quiet"'s fails 50 % but of 10 requests in
        # 5 minutes; "preview"'s candidate fails only preview requests; "clean"'s candidate
        # fails 5 %, its stable never did (it has no 5xx series)
        "input_series": [
            requests("clean", "candidate", 200, "0+95x12"),
            requests("clean", "candidate", 502, "0+5x12"),
            requests("clean", "stable", 200, "0+1000x12"),
            requests("app", "candidate", 200, "0+90x12"),
            requests("app", "candidate", 500, "0+10x12"),
            requests("app", "stable", 200, "0+900x12"),
            requests("app", "stable", 503, "0+9x12"),
            requests("close", "candidate", 200, "0+985x12"),
            requests("close", "candidate", 500, "0+15x12"),
            requests("close", "stable", 200, "0+990x12"),
            requests("close", "stable", 500, "0+10x12"),
            requests("quiet", "candidate", 200, "0+1x12"),
            requests("quiet", "candidate", 500, "0+1x12"),
            requests("quiet", "stable", 200, "0+100x12"),
            requests("preview", "candidate", 200, "0+100x12"),
            requests("preview", "candidate", 500, "0+100x12", traffic="preview"),
            requests("preview", "stable", 200, "0+100x12"),
        ],
        "alert_rule_test": [
            expect("SplitproxyCandidateErrorsAboveStable", "2m"),  # 2m of data: pending
            expect(
                "SplitproxyCandidateErrorsAboveStable",
                "4m",
                {"route": "app", **WARN},
                {"route": "clean", **WARN},
            ),
            expect(
                "SplitproxyCandidateErrorsAboveStable",
                "10m",
                {"route": "app", **WARN},
                {"route": "clean", **WARN},
            ),
        ],
    },
    {  # the routing file on disk is rejected from 1m
        "input_series": [series("splitproxy_config_last_reload_successful", "1 0 0 0 0", **PROXY)],
        "alert_rule_test": [
            expect("SplitproxyConfigReloadFailing", "2m"),
            expect("SplitproxyConfigReloadFailing", "3m", {**PROXY, **WARN}),
        ],
    },
    {  # one of two stable addresses out from 1m, the other from 4m
        "input_series": [
            series(
                "splitproxy_upstream_healthy",
                "1 0x10",
                route="app",
                version="stable",
                upstream="http://a:8000",
            ),
            series(
                "splitproxy_upstream_healthy",
                "1 1 1 1 0x10",
                route="app",
                version="stable",
                upstream="http://b:8000",
            ),
        ],
        "alert_rule_test": [
            expect("SplitproxyUpstreamUnhealthy", "2m"),
            expect(
                "SplitproxyUpstreamUnhealthy",
                "3m",
                {"route": "app", "version": "stable", "upstream": "http://a:8000", **WARN},
            ),
            expect("SplitproxyStableDown", "4m"),
            expect("SplitproxyStableDown", "5m", {"route": "app", **CRIT}),
        ],
    },
]


def test_each_alert_fires_when_it_should_and_only_then(promtool: str, tmp_path: Path) -> None:
    # annotations are templates checked by `check rules` above; without them the cases
    # compare what decides: the expression, `for:` and the labels
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "alerts.yml"
    bare.write_text(yaml.safe_dump(document, sort_keys=False))
    tested = {case["alertname"] for case_ in CASES for case in case_["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in rules()}  # every rule has a case
    cases = {
        "rule_files": [str(bare)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", **case} for case in CASES],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    done = run(promtool, "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# -- a real Prometheus with the compose stack's configuration ---------------------------------

StartPrometheus = Callable[[int], Awaitable[Prometheus]]


@pytest.fixture
async def compose_prometheus(
    prometheus_binary: str,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[StartPrometheus]:
    """``await compose_prometheus(admin_port)``: Prometheus with config/prometheus/ (the alert
    rules loaded), scraping and evaluating every second, its one target on loopback."""
    servers = Prometheuses(prometheus_binary, tmp_path)

    async def start(admin_port: int) -> Prometheus:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{admin_port}"]}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return await servers.launch(path)

    try:
        yield start
    finally:
        await servers.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query = (
                target["expr"]
                .replace("$route", "app")
                .replace("$__rate_interval", "15s")
                .replace("$__range", "5m")
            )
            assert "$" not in query, query  # a variable the test does not know
            found.append((panel["title"], query))
    return found


def test_the_dashboard_is_grafana_json_with_the_panels_promised() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "splitproxy"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["route"]["definition"] == "label_values(splitproxy_route_weight, route)"
    titles = " / ".join(p["title"] for p in dashboard["panels"])
    for wanted in ("Requests per second", "Error rate", "p99 latency", "Weight", "Rollout phase"):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}


async def _upstream(handler: Callable[[web.Request], Awaitable[web.Response]]) -> TestServer:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _alerts(prom: Prometheus) -> list[dict[str, Any]]:
    async with prom.session.get(f"{prom.url}/api/v1/alerts") as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    found: list[dict[str, Any]] = body["data"]["alerts"]
    return found


async def _until_alert(prom: Prometheus, name: str, within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = await _alerts(prom)
        for alert in seen:
            if alert["labels"]["alertname"] == name:
                return alert
        await asyncio.sleep(0.3)
    raise AssertionError(f"{name} never went pending; alerts: {seen}")


@pytest.mark.timeout(300)
async def test_a_real_prometheus_evaluates_the_rules_and_the_dashboard_on_a_real_proxy(
    start_proxy: StartProxy, compose_prometheus: StartPrometheus
) -> None:
    served = {"candidate": 0}

    async def stable(request: web.Request) -> web.Response:
        return web.Response(text="stable")

    async def candidate(request: web.Request) -> web.Response:
        served["candidate"] += 1
        if served["candidate"] % 2:
            return web.Response(status=500, text="boom")  # every other request fails
        return web.Response(text="candidate")

    ups = [await _upstream(stable), await _upstream(candidate)]
    try:
        routes = {
            "routes": [
                {
                    "name": "app",
                    "stable": f"http://127.0.0.1:{ups[0].port}",
                    "candidate": {"url": f"http://127.0.0.1:{ups[1].port}", "revision": "2"},
                    "overrides": [{"header": "X-Canary"}],
                    # a rollout that holds its first step for the whole test: never judged
                    "rollout": {
                        "steps": [50],
                        "interval": "10m",
                        "min_requests": 100000,
                        "guard": False,
                        "checks": [{"metric": "error_rate", "max": "99%"}],
                    },
                }
            ]
        }
        server = await start_proxy(routes)
        admin = f"http://127.0.0.1:{server.admin_port}"
        prom = await compose_prometheus(server.admin_port)
        await prom.until('up{job="splitproxy"}', 1)
        await prom.until('splitproxy_rollout_phase{route="app",phase="progressing"}', 1)

        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            sem = asyncio.Semaphore(10)

            async def one(canary: str) -> None:
                async with (
                    sem,
                    session.get(
                        f"http://127.0.0.1:{server.listen_port}/", headers={"X-Canary": canary}
                    ) as resp,
                ):
                    await resp.read()

            async def burst(n: int) -> None:
                await asyncio.gather(
                    *(one("always") for _ in range(n)), *(one("never") for _ in range(n))
                )

            total = 'sum(splitproxy_requests_total{route="app",traffic="user"})'
            # a series per status code appears with its first request, and rate() sees
            # increases from a series' second sample on: a first burst creates them
            await burst(10)
            await prom.until(total, 20)
            await asyncio.sleep(1.5)  # a scrape or two with these values
            await burst(150)
            await prom.until(total, 320)

        # every rule evaluates on the real series without an error
        async with prom.session.get(f"{prom.url}/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        (group,) = groups
        assert {r["name"] for r in group["rules"]} == {r["alert"] for r in rules()}
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule

        # the candidate fails half its requests, stable none: pending (for: 2m)
        errors = await _until_alert(prom, "SplitproxyCandidateErrorsAboveStable")
        assert errors["state"] == "pending"
        assert errors["labels"]["route"] == "app"
        assert float(errors["value"]) == pytest.approx(0.5, abs=0.05)
        assert "route app" in errors["annotations"]["summary"]

        # every dashboard query is valid PromQL and has data
        for title, query in dashboard_queries():
            assert await prom.query(query), f"{title}: {query}"
        async with prom.session.get(
            f"{prom.url}/api/v1/label/route/values",
            params={"match[]": "splitproxy_route_weight"},
        ) as resp:
            assert (await resp.json())["data"] == ["app"]  # the dashboard's route variable

        # a routing file that does not load: the last good one serves, the alert is pending
        config = server.settings.config
        assert config is not None
        config.write_text("routes: [{name: app}]\n")
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{admin}/api/v1/reload", json={}) as resp,
        ):
            assert resp.status in (200, 400, 422), await resp.text()
        await prom.until("splitproxy_config_last_reload_successful", 0)
        reload = await _until_alert(prom, "SplitproxyConfigReloadFailing")
        assert reload["state"] == "pending"
        assert re.search(r"rejects its routing file", reload["annotations"]["summary"])
    finally:
        for up in ups:
            await up.close()
