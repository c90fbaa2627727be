"""The example routing file shipped in config/ is valid and says what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config import RoutingConfig, parse_routing, summary
from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.dataplane.routing import CompiledRoute, choose, find_route

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "splitproxy.yaml"


@pytest.fixture(scope="module")
def config() -> RoutingConfig:
    return parse_routing(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))


def test_example_is_valid(config: RoutingConfig) -> None:
    assert [r.name for r in config.routes] == ["shop", "api", "checkout"]
    assert summary(config) == (
        "ok: revision example-1, 3 route(s): shop (stable, candidate 10%); "
        "api (stable, candidate 2.5%); checkout (stable, candidate 0%)"
    )


def test_example_shop_route(config: RoutingConfig) -> None:
    shop = config.route("shop")
    assert shop is not None
    assert shop.match.host == "shop.example.com"
    assert shop.stable.urls == ("http://shop-v1:8080",)
    assert shop.candidate is not None
    assert shop.candidate.urls == ("http://shop-v2:8080",)
    assert shop.candidate.revision == "2.4.0"
    assert shop.weight_bp == 1000
    assert [(o.header, o.cookie) for o in shop.overrides] == [("X-Canary", None), (None, "canary")]
    assert shop.sticky is not None
    assert shop.sticky.cookie == "splitproxy_id"


def test_example_api_route(config: RoutingConfig) -> None:
    api = config.route("api")
    assert api is not None
    assert api.stable.urls == ("http://api-v1-a:8080", "http://api-v1-b:8080")
    assert api.weight_bp == 250
    assert api.sticky is not None
    assert api.sticky.header == "X-User-Id"
    assert api.sticky.cookie is None


def test_example_routes_requests_as_documented(config: RoutingConfig) -> None:
    routes = tuple(CompiledRoute.from_model(r) for r in config.routes)
    shop = find_route(routes, "shop.example.com", "/cart")
    api = find_route(routes, "api.example.com", "/v1/orders")
    assert shop is not None
    assert shop.name == "shop"
    assert api is not None
    assert api.name == "api"
    assert find_route(routes, "api.example.com", "/v2/orders") is None
    # The documented overrides work as the comments say.
    assert choose(shop, {b"x-canary": b"always"}, 0).version == CANDIDATE
    assert choose(shop, {b"x-canary": b"never"}, 0).version == STABLE
    assert choose(shop, {b"cookie": b"canary=yes"}, 0).version == CANDIDATE
    assert choose(api, {b"x-group": b"beta"}, 0).version == CANDIDATE


def test_example_api_route_checks_the_health_of_both_versions(config: RoutingConfig) -> None:
    api = config.route("api")
    assert api is not None
    check = api.health_of(CANDIDATE)
    assert check is not None
    assert check == api.health_of(STABLE)
    assert (check.path, check.interval, check.timeout) == ("/healthz", 2.0, 1.0)
    assert (check.unhealthy_after, check.healthy_after) == (3, 2)
    assert 204 in check.expect
    assert 301 not in check.expect


def test_example_checkout_route_is_the_blue_green_its_comments_describe(
    config: RoutingConfig,
) -> None:
    checkout = config.route("checkout")
    assert checkout is not None
    rollout = checkout.rollout
    assert rollout is not None
    assert rollout.bluegreen
    assert (rollout.iterations, rollout.interval, rollout.min_requests) == (2, 60.0, 200)
    assert (rollout.bake, rollout.auto_promote, rollout.failure_limit) == (600.0, True, 1)
    # two test windows at 0 % for the users, then the bake at 100 %
    assert [(s.weight, s.interval) for s in rollout.plan] == [
        (0.0, None),
        (0.0, None),
        (100.0, 600.0),
    ]
    assert rollout.test is not None
    assert rollout.test.command == ("./scripts/smoke.sh", "--suite", "checkout")
    assert (rollout.test.timeout, dict(rollout.test.env)) == (300.0, {"SMOKE_USER": "smoke-bot"})
    assert rollout.traffic is not None
    assert rollout.traffic.paths == ("/", "/cart")
    compares = [c for c in rollout.checks if getattr(c, "compare", None) == "stable"]
    assert [getattr(c, "traffic", None) for c in compares] == ["all", "all"]


def test_the_commented_mirror_example_is_valid() -> None:
    # the example's `mirror:` block is commented out; turned on, it must still be valid
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("    # mirror:")
    end = start
    while end < len(lines) and lines[end].startswith("    # "):
        end += 1
    block = [line.replace("    # ", "    ", 1) for line in lines[start:end]]
    config = parse_routing("\n".join(lines[:start] + block + lines[end:]) + "\n", str(EXAMPLE))
    api = config.route("api")
    assert api is not None
    assert api.mirror is not None
    assert (api.mirror.percent, api.mirror.methods, api.mirror.max_body) == (10.0, ("GET",), 65536)
    assert api.mirror.compare.json_ignore == ("meta.generated_at", "items.*.updated_at")
