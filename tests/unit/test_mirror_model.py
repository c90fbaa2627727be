"""``mirror:`` on a route in the routing file, and what ``splitproxy check`` says about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from splitproxy.cli import main
from splitproxy.config import Mirror, MirrorCompare, check_warnings, parse_routing
from splitproxy.errors import ConfigError


def config(mirror: Any, candidate: bool = True) -> str:
    route: dict[str, Any] = {"name": "shop", "stable": "http://a:1", "mirror": mirror}
    if candidate:
        route["candidate"] = "http://b:1"
    return yaml.safe_dump({"routes": [route]})


def problems(mirror: Any, candidate: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_routing(config(mirror, candidate))
    return [str(p) for p in info.value.problems]


def test_defaults() -> None:
    route = parse_routing(config({"percent": 10})).routes[0]
    assert route.mirror == Mirror(percent=10.0)
    m = route.mirror
    assert (m.methods, m.max_body, m.timeout, m.concurrency, m.queue, m.headers) == (
        ("GET", "HEAD"), 65536, 5.0, 16, 64, {},
    )  # fmt: skip
    assert m.compare == MirrorCompare(body="none", json_ignore=())
    assert check_warnings(parse_routing(config({"percent": 10}))) == []


def test_everything_given() -> None:
    m = (
        parse_routing(
            config(
                {
                    "percent": 2.5,
                    "methods": ["get", "POST"],
                    "max_body": "1MB",
                    "headers": {"X-Shadow": "yes"},
                    "timeout": "750ms",
                    "concurrency": 4,
                    "queue": 8,
                    "compare": {"body": "hash", "json_ignore": ["meta.ts", "items.*.updated"]},
                }
            )
        )
        .routes[0]
        .mirror
    )
    assert m is not None
    assert (m.percent, m.methods, m.max_body, m.timeout) == (2.5, ("GET", "POST"), 1 << 20, 0.75)
    assert (m.concurrency, m.queue, m.headers) == (4, 8, {"X-Shadow": "yes"})
    assert m.compare.json_ignore == ("meta.ts", "items.*.updated")


@pytest.mark.parametrize(
    ("size", "expected"), [(0, 0), (100, 100), ("512B", 512), ("64KB", 65536), ("64KiB", 65536)]
)
def test_sizes(size: Any, expected: int) -> None:
    m = parse_routing(config({"percent": 1, "max_body": size})).routes[0].mirror
    assert m is not None
    assert m.max_body == expected


def test_a_route_without_a_candidate_cannot_mirror() -> None:
    assert problems({"percent": 10}, candidate=False) == [
        "routes[0]: 'mirror' sends copies to the candidate: it needs a 'candidate'"
    ]


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        ({}, "routes[0].mirror.percent: is required"),
        ({"percent": 0}, "routes[0].mirror.percent: must be > 0"),
        ({"percent": "yes"}, "routes[0].mirror.percent: Input should be a valid number"),
        ({"percent": 0.001}, "routes[0].mirror.percent: has a resolution of 0.01 percent"),
        ({"percent": 1, "methods": ["TRACE"]}, "routes[0].mirror.methods[0]: must be 'GET',"),
        ({"percent": 1, "methods": ["GET", "get"]}, "routes[0].mirror.methods: a method is"),
        ({"percent": 1, "methods": []}, "routes[0].mirror.methods: must not be empty"),
        ({"percent": 1, "max_body": "2MB"}, "routes[0].mirror.max_body: must be <= 1048576"),
        ({"percent": 1, "max_body": "lots"}, "routes[0].mirror.max_body: 'lots' is not a size"),
        ({"percent": 1, "timeout": "2m"}, "routes[0].mirror.timeout: must be a duration > 0"),
        ({"percent": 1, "queue": 0}, "routes[0].mirror.queue: must be >= 1"),
        ({"percent": 1, "concurrency": 1000}, "routes[0].mirror.concurrency: must be <= 256"),
        (
            {"percent": 1, "headers": {"X-Splitproxy-Mirror": "0"}},
            "routes[0].mirror.headers.X-Splitproxy-Mirror: is set by the proxy",
        ),
        (
            {"percent": 1, "headers": {"Transfer-Encoding": "chunked"}},
            "routes[0].mirror.headers.Transfer-Encoding: is set by the proxy",
        ),
        (
            {"percent": 1, "headers": {"X-A": "a\nb"}},
            "routes[0].mirror.headers.X-A: must be printable ASCII",
        ),
        (
            {"percent": 1, "compare": {"json_ignore": ["ts"]}},
            "routes[0].mirror.compare: 'json_ignore' compares bodies: set 'body: hash'",
        ),
        (
            {"percent": 1, "compare": {"body": "hash", "json_ignore": ["a..b"]}},
            "routes[0].mirror.compare.json_ignore[0]: must be a dotted path",
        ),
        ({"percent": 1, "compare": {"body": "md5"}}, "routes[0].mirror.compare.body: must be"),
        ({"percent": 1, "colour": "red"}, "routes[0].mirror.colour: unknown key"),
    ],
)
def test_refusals(mirror: Any, expected: str) -> None:
    found = problems(mirror)
    assert any(p.startswith(expected) for p in found), found


def test_check_warns_about_unsafe_methods_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(config({"percent": 5, "methods": ["GET", "POST", "DELETE"]}))
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "1 route(s)" in out
    assert err.startswith("warning: routes[0].mirror.methods: POST, DELETE mirrored to the ")
    path.write_text(config({"percent": 5, "methods": ["GET", "OPTIONS"]}))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err == ""
