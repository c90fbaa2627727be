"""``rollout.traffic`` in the routing file, and the marker's pure helpers."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from splitproxy.config import Traffic, parse_routing
from splitproxy.dataplane.synthetic import PROCESS_TOKEN, marker
from splitproxy.errors import ConfigError
from splitproxy.rollout.traffic import TRAFFIC_PHASES, loopback_url, route_host


def config(traffic: Any) -> str:
    route = {
        "name": "shop",
        "stable": "http://a:1",
        "candidate": "http://b:1",
        "rollout": {"steps": [10], "traffic": traffic},
    }
    return yaml.safe_dump({"routes": [route]})


def problems(traffic: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_routing(config(traffic))
    return [str(p) for p in info.value.problems]


def test_defaults() -> None:
    cfg = parse_routing(config({"rate": 5}))
    rollout = cfg.routes[0].rollout
    assert rollout is not None
    assert rollout.traffic == Traffic(rate=5.0)
    t = rollout.traffic
    assert (t.paths, t.method, t.headers, t.judge, t.target) == (
        ("/",),
        "GET",
        {},
        False,
        "candidate",
    )
    assert (t.concurrency, t.timeout, t.body) == (16, 10.0, None)


def test_everything_given() -> None:
    cfg = parse_routing(
        config(
            {
                "rate": 0.5,
                "paths": ["/", "/api/health?deep=1"],
                "headers": {"Host": "shop.example.com", "Authorization": "Bearer x"},
                "method": "POST",
                "body": "{}",
                "judge": True,
                "target": "stable",
                "concurrency": 2,
                "timeout": "1500ms",
            }
        )
    )
    rollout = cfg.routes[0].rollout
    assert rollout is not None
    assert rollout.traffic is not None
    assert rollout.traffic.paths == ("/", "/api/health?deep=1")
    assert rollout.traffic.timeout == 1.5
    assert rollout.traffic.judge is True


@pytest.mark.parametrize(
    ("traffic", "problem"),
    [
        ({"rate": 0}, "routes[0].rollout.traffic.rate: must be > 0"),
        ({"rate": -1}, "routes[0].rollout.traffic.rate: must be > 0"),
        ({"rate": 1001}, "routes[0].rollout.traffic.rate: must be <= 1000"),
        ({"paths": ["/"]}, "routes[0].rollout.traffic.rate: is required"),
        ({"rate": 1, "paths": []}, "routes[0].rollout.traffic.paths: must not be empty"),
        (
            {"rate": 1, "paths": ["/", "api"]},
            "routes[0].rollout.traffic.paths[1]: must be a path starting with '/' "
            "(visible ASCII, no '#')",
        ),
        (
            {"rate": 1, "paths": ["/a b"]},
            "routes[0].rollout.traffic.paths[0]: must be a path starting with '/' "
            "(visible ASCII, no '#')",
        ),
        (
            {"rate": 1, "headers": {"Bad Name": "x"}},
            "routes[0].rollout.traffic.headers.Bad Name: must be a header field name",
        ),
        (
            {"rate": 1, "headers": {"x-splitproxy-synthetic": "1"}},
            "routes[0].rollout.traffic.headers.x-splitproxy-synthetic: is set by the proxy, "
            "not in the routing file",
        ),
        (
            {"rate": 1, "headers": {"Content-Length": "1"}},
            "routes[0].rollout.traffic.headers.Content-Length: is set by the proxy, "
            "not in the routing file",
        ),
        (
            {"rate": 1, "headers": {"X-A": "a\r\nX-B: b"}},
            "routes[0].rollout.traffic.headers.X-A: must be printable ASCII (no line breaks)",
        ),
        (
            {"rate": 1, "target": "both"},
            "routes[0].rollout.traffic.target: must be 'candidate' or 'stable'",
        ),
        ({"rate": 1, "method": "TRACE"}, None),
        ({"rate": 1, "concurrency": 0}, "routes[0].rollout.traffic.concurrency: must be >= 1"),
        (
            {"rate": 1, "timeout": "0s"},
            "routes[0].rollout.traffic.timeout: must be a duration > 0 and <= 5m",
        ),
        ({"rate": 1, "judge": "yes"}, None),
        ({"rate": 1, "rps": 5}, "routes[0].rollout.traffic.rps: unknown key"),
    ],
)
def test_bad_traffic_is_named_with_its_path(traffic: Any, problem: str | None) -> None:
    found = problems(traffic)
    assert len(found) == 1, found
    if problem is not None:
        assert found == [problem]
    else:
        assert found[0].startswith("routes[0].rollout.traffic.")


def test_the_marker_names_route_and_target_with_the_process_token() -> None:
    assert marker("shop", "candidate") == f"{PROCESS_TOKEN} shop candidate"
    assert marker("shop", "stable", "t") == "t shop stable"
    assert len(PROCESS_TOKEN) == 32


def test_helpers() -> None:
    assert loopback_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert loopback_url("::", 8080) == "http://[::1]:8080"
    assert loopback_url("10.0.0.5", 80) == "http://10.0.0.5:80"
    assert route_host(None) is None
    assert route_host("shop.example.com") == "shop.example.com"
    assert route_host("*.example.com") == "synthetic.example.com"
    assert {"progressing", "waiting"} == TRAFFIC_PHASES
