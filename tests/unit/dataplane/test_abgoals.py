"""A/B tests in the data path (`splitproxy.dataplane.abgoals`): the audience in the routing
decision, users exposed once to their sticky variant, a user's first conversion per goal,
the cap on the table, and the ``ab:`` section's problems as `splitproxy check` names them."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest

from splitproxy.config import Route, parse_routing
from splitproxy.dataplane.abgoals import AbBook
from splitproxy.dataplane.routing import BUCKETS, CompiledRoute, Decision, choose
from splitproxy.errors import ConfigError

AB: dict[str, Any] = {
    "strategy": "ab",
    "ab": {
        "split": 50,
        "audience": [{"header": "X-Plan", "value": "pro"}],
        "goals": [
            {"name": "signup", "method": "POST", "path_prefix": "/signup", "status": "2xx"},
            {"name": "buy", "header": "X-Goal", "value": "buy", "value_header": "X-Goal-Value"},
        ],
    },
}


def ab_route(weight_bp: int = 5000, **ab: Any) -> CompiledRoute:
    rollout = {**AB, "ab": {**AB["ab"], **ab}}
    route = Route.model_validate(
        {
            "name": "shop",
            "stable": "http://v1:80",
            "candidate": {"url": "http://v2:80", "revision": "2"},
            "sticky": {"header": "X-User"},
            "rollout": rollout,
        }
    )
    return dataclasses.replace(CompiledRoute.from_model(route), weight_bp=weight_bp)


@dataclass
class Ex:
    """What the book reads of an exchange."""

    route: CompiledRoute
    decision: Decision
    wanted: dict[bytes, bytes]
    method: bytes = b"GET"
    path: str = "/"
    extra: dict[str, Any] = field(default_factory=dict)


def request(route: CompiledRoute, user: str, plan: str = "pro", **kw: Any) -> Ex:
    headers = {b"x-user": user.encode(), b"x-plan": plan.encode()}
    return Ex(route, choose(route, headers, 0), headers, **kw)


def test_the_audience_alone_takes_part_and_by_its_sticky_bucket() -> None:
    route = ab_route()
    outsiders = [choose(route, {b"x-user": f"u{i}".encode()}, 0) for i in range(200)]
    assert {d.version for d in outsiders} == {"stable"}
    assert {d.reason for d in outsiders} == {"audience"}
    no_key = choose(route, {b"x-plan": b"pro"}, 0)
    assert (no_key.version, no_key.reason) == ("stable", "audience")
    inside = [
        choose(route, {b"x-user": f"u{i}".encode(), b"x-plan": b"pro"}, 0) for i in range(400)
    ]
    share = sum(d.version == "candidate" for d in inside) / len(inside)
    assert {d.reason for d in inside} == {"sticky"}
    assert 0.4 < share < 0.6


def test_the_audience_applies_only_while_the_split_is_partial() -> None:
    promoted = ab_route(weight_bp=BUCKETS)
    assert choose(promoted, {b"x-user": b"u1"}, 0).version == "candidate"


def test_a_user_is_exposed_once_and_converts_once_per_goal() -> None:
    book, route = AbBook(), ab_route()
    users = [f"u{i}" for i in range(100)]
    for _ in range(3):
        for user in users:
            book.exposed(request(route, user))
    counts = book.take("shop")
    assert counts is not None
    assert sum(counts.users) == 100
    candidate = {u for u in users if request(route, u).decision.version == "candidate"}
    assert counts.users == (100 - len(candidate), len(candidate))
    for user in users[:10]:
        for _ in range(2):  # a second sign-up is not a second conversion
            book.response(request(route, user, method=b"POST", path="/signup/x"), 201, [])
        book.response(request(route, user, method=b"POST", path="/signup"), 500, [])
        book.response(
            request(route, user),
            200,
            [(b"X-Goal", b"buy"), (b"X-Goal-Value", b"12.5"), (b"Other", b"1")],
        )
    book.response(request(route, "stranger", method=b"POST", path="/signup"), 200, [])
    counts = book.take("shop")
    assert counts is not None
    assert counts.users == (0, 0)
    converted = sum(u in candidate for u in users[:10])
    assert counts.converted == ((10 - converted, converted), (10 - converted, converted))
    assert counts.values[1] == (12.5 * (10 - converted), 12.5 * converted)


def test_beyond_the_cap_new_users_are_not_counted() -> None:
    book, route = AbBook(), ab_route(max_users=100)
    for i in range(150):
        book.exposed(request(route, f"u{i}"))
    counts = book.take("shop")
    assert counts is not None
    assert sum(counts.users) == 100
    assert counts.untracked == 50
    book.response(request(route, "u149", method=b"POST", path="/signup"), 200, [])
    counts = book.take("shop")
    assert counts is not None
    assert counts.converted[0] == (0, 0)


def test_a_new_test_starts_the_table_afresh() -> None:
    book, route = AbBook(), ab_route()
    book.exposed(request(route, "u1"))
    book.follow("shop", 10.0)
    book.follow("shop", 10.0)
    assert book.size("shop") == 1
    book.follow("shop", 99.0)  # a retry, or a resume after a broken split
    assert book.size("shop") == 0
    book.exposed(request(route, "u1"))
    counts = book.take("shop")
    assert counts is not None
    assert sum(counts.users) == 1


def test_nothing_is_counted_at_weight_zero_or_for_other_routes() -> None:
    book = AbBook()
    book.exposed(request(ab_route(weight_bp=0), "u1"))
    assert book.take("shop") is None


def problems(body: str, sticky: bool = True) -> list[str]:
    text = "routes:\n  - name: shop\n    stable: http://s\n    candidate: http://c\n"
    if sticky:
        text += "    sticky: {cookie: sp}\n"
    text += "    rollout:\n" + textwrap.indent(textwrap.dedent(body).strip(), "      ") + "\n"
    with pytest.raises(ConfigError) as info:
        parse_routing(text, "routes.yaml")
    return [str(p) for p in info.value.problems]


GOOD = """
strategy: ab
ab: {goals: [{name: signup, path_prefix: /signup}]}
"""


def test_check_names_the_field() -> None:
    assert problems(GOOD, sticky=False) == [
        "routes[0].sticky: an A/B test needs a sticky key (cookie or header)"
    ]
    assert problems("strategy: ab") == [
        "routes[0].rollout.ab: strategy: ab needs an 'ab' section with its 'goals'"
    ]
    assert problems(GOOD + "steps: [10]") == [
        "routes[0].rollout.steps: an A/B test has no 'steps' (see 'ab.split')"
    ]
    bad = """
    strategy: ab
    ab:
      split: 100
      audience: [{header: X-Plan, cookie: plan}]
      goals:
        - {name: a}
        - {name: b, value: x}
        - {name: c, path_prefix: /x, path_regex: /y}
        - {name: c, status: 6xx}
      min_duration: 2h
      max_duration: 1h
    """
    assert problems(bad) == [
        "routes[0].rollout.ab.split: must be < 100",
        "routes[0].rollout.ab.audience[0]: give exactly one of 'header' or 'cookie'",
        "routes[0].rollout.ab.goals[0]: a goal is a request (method, path_prefix "
        "or path_regex, status) or a response 'header'",
        "routes[0].rollout.ab.goals[1]: 'value' is the value of a response "
        "'header': give the header",
        "routes[0].rollout.ab.goals[2]: give at most one of 'path_prefix' or 'path_regex'",
        "routes[0].rollout.ab.goals[3].status: '6xx' is not a status class (1xx to 5xx)",
    ]
    assert problems(GOOD + "shadow: {duration: 1m, min_requests: 10}") == [
        "routes[0].rollout.shadow: applies to strategy: canary or bluegreen"
    ]
    assert problems(GOOD + "hooks: [{on: step, url: http://ci/ok}]") == [
        "routes[0].rollout.hooks: an A/B test has no 'step' hooks (it has one step)"
    ]
    assert problems("strategy: canary\nsteps: [5]\nab: {goals: [{name: a, method: GET}]}") == [
        "routes[0].rollout.ab: applies to strategy: ab"
    ]
    assert problems(GOOD.replace("}]}", "}], min_duration: 2h, max_duration: 1h}")) == [
        "routes[0].rollout.ab.min_duration: must not be longer than 'max_duration'"
    ]


def test_audience_rules_all_hold_header_present_cookie_and_regex() -> None:
    rules = [{"header": "X-Beta"}, {"cookie": "plan", "regex": "pro|team"}]
    route = ab_route(audience=rules)
    user = {b"x-user": b"u1", b"x-beta": b"1"}
    for cookie, admitted in (
        (b"plan=team; x=1", True),
        (b"plan=pro", True),
        (b"plan=free", False),
        (b"plan=proper", False),  # a full match, not a prefix
        (None, False),
    ):
        headers = dict(user) if cookie is None else {**user, b"cookie": cookie}
        assert (choose(route, headers, 0).reason != "audience") is admitted, cookie
    assert choose(route, {b"x-user": b"u1", b"cookie": b"plan=pro"}, 0).reason == "audience"
