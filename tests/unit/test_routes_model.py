"""The routing file's routes (`parse_routing`, `summary`): forms, errors and their paths."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.config import (
    Backend,
    Match,
    Override,
    RoutingConfig,
    Sticky,
    known_routes,
    load_document,
    parse_routing,
    summary,
    validate_routing,
)
from splitproxy.dataplane.routing import BUCKETS
from splitproxy.errors import (
    ConfigError,
    Problem,
)


def parse(text: str) -> RoutingConfig:
    return parse_routing(textwrap.dedent(text), "routes.yaml")


def problems(text: str) -> list[str]:
    """The problems `parse_routing` reports for ``text``, as `splitproxy check` prints them."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


def one_route(**yaml_lines: str) -> str:
    """A one-route file named ``r``: stable on http://s, plus the given keys (YAML flow style)."""
    keys = {"name": "r", "stable": "http://s", **yaml_lines}
    return "routes:\n  - {" + ", ".join(f"{k}: {v}" for k, v in keys.items()) + "}\n"


# --- shorthand forms of stable / candidate ------------------------------------------------


def test_stable_as_one_url() -> None:
    route = parse(one_route(stable="http://shop-v1:8080")).routes[0]
    assert route.stable == Backend(url=("http://shop-v1:8080",))
    assert route.stable.urls == ("http://shop-v1:8080",)
    assert route.stable.revision is None
    assert route.candidate is None
    assert route.weight == 0
    assert route.weight_bp == 0


def test_stable_as_a_list_of_urls_keeps_their_order() -> None:
    route = parse(one_route(stable="[http://b:1, 'http://a:2/', http://c]")).routes[0]
    assert route.stable.urls == ("http://b:1", "http://a:2", "http://c")


def test_candidate_as_mapping_with_url_and_revision() -> None:
    config = parse(
        """
        routes:
          - name: shop
            stable: {url: http://shop-v1:8080, revision: "2.3.1"}
            candidate:
              url: http://shop-v2:8080/
              revision: "2.4.0"
            weight: 10
        """
    )
    route = config.routes[0]
    assert route.stable == Backend(url=("http://shop-v1:8080",), revision="2.3.1")
    assert route.candidate == Backend(url=("http://shop-v2:8080",), revision="2.4.0")
    assert route.weight_bp == 1000


def test_backend_mapping_with_a_list_of_urls() -> None:
    text = one_route(candidate="{url: [http://c1, http://c2], revision: abc}", weight="1")
    candidate = parse(text).routes[0].candidate
    assert candidate == Backend(url=("http://c1", "http://c2"), revision="abc")


def test_candidate_as_one_url_and_as_a_list() -> None:
    assert parse(one_route(candidate="http://c:81")).routes[0].candidate == Backend(
        url=("http://c:81",)
    )
    assert parse(one_route(candidate="[http://c, http://d]")).routes[0].candidate == Backend(
        url=("http://c", "http://d")
    )


# --- match, overrides, sticky, weight -----------------------------------------------------


def test_match_defaults_to_every_request() -> None:
    assert parse(one_route()).routes[0].match == Match(host=None, path_prefix="/")


def test_match_host_is_lower_cased_and_may_be_a_wildcard() -> None:
    route = parse(one_route(match="{host: Shop.Example.COM, path_prefix: /api/}")).routes[0]
    assert route.match == Match(host="shop.example.com", path_prefix="/api/")
    wildcard = parse(one_route(match="{host: '*.example.com'}")).routes[0]
    assert wildcard.match.host == "*.example.com"


def test_overrides_every_form_in_order() -> None:
    config = parse(
        """
        routes:
          - name: shop
            stable: http://s
            candidate: http://c
            overrides:
              - {header: X-Canary}
              - {header: X-Group, value: beta}
              - {cookie: canary, regex: "^(1|yes)$"}
              - {cookie: canary}
        """
    )
    assert config.routes[0].overrides == (
        Override(header="X-Canary"),
        Override(header="X-Group", value="beta"),
        Override(cookie="canary", regex="^(1|yes)$"),
        Override(cookie="canary"),
    )


def test_sticky_by_cookie_or_by_header() -> None:
    by_cookie = parse(one_route(sticky="{cookie: splitproxy_id}")).routes[0].sticky
    assert by_cookie == Sticky(cookie="splitproxy_id", max_age=30 * 24 * 3600)
    by_header = parse(one_route(sticky="{header: X-User-Id, max_age: 60}")).routes[0].sticky
    assert by_header == Sticky(header="X-User-Id", max_age=60)


@pytest.mark.parametrize(
    ("weight", "basis_points"),
    [("0", 0), ("0.01", 1), ("12.5", 1250), ("33.33", 3333), ("99.99", 9999), ("100", BUCKETS)],
)
def test_weight_is_a_percentage_with_two_decimals(weight: str, basis_points: int) -> None:
    route = parse(one_route(candidate="http://c", weight=weight)).routes[0]
    assert route.weight_bp == basis_points


@given(basis_points=st.integers(min_value=0, max_value=BUCKETS))
def test_every_weight_with_two_decimals_is_accepted_exactly(basis_points: int) -> None:
    weight = basis_points / 100
    route = parse(one_route(candidate="http://c", weight=str(weight))).routes[0]
    assert route.weight_bp == basis_points
    assert route.weight == weight


@given(basis_points=st.integers(min_value=0, max_value=BUCKETS - 1))
def test_weight_finer_than_a_hundredth_is_refused(basis_points: int) -> None:
    weight = (basis_points + 0.5) / 100
    assert problems(one_route(candidate="http://c", weight=repr(weight)))[0] == (
        "routes[0].weight: has a resolution of 0.01 percent"
    )


def test_file_revision_and_several_routes() -> None:
    config = parse(
        """
        revision: "2024-06-01"
        routes:
          - {name: shop, stable: http://shop}
          - {name: api, stable: http://api, candidate: http://api2, weight: 50}
        """
    )
    assert config.revision == "2024-06-01"
    assert [r.name for r in config.routes] == ["shop", "api"]
    api = config.route("api")
    assert api is not None
    assert api.weight_bp == 5000
    assert config.route("nope") is None


def test_parsed_config_is_frozen() -> None:
    config = parse(one_route())
    with pytest.raises(ValueError, match="frozen"):
        config.routes[0].weight = 50  # type: ignore[misc]


# --- errors: each names its path ----------------------------------------------------------

ROUTE_OK = "  - {name: ok, stable: http://ok}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "routes:\n" + ROUTE_OK + "  - {name: b, stable: http://b, candidate: http://c, "
            "weight: 150}\n",
            "routes[1].weight: must be <= 100",
            id="weight-above-100",
        ),
        pytest.param(
            one_route(candidate="http://c", weight="-1"),
            "routes[0].weight: must be >= 0",
            id="negative-weight",
        ),
        pytest.param(
            one_route(candidate="http://c", weight="10.005"),
            "routes[0].weight: has a resolution of 0.01 percent",
            id="weight-resolution",
        ),
        pytest.param(one_route(bogus="1"), "routes[0].bogus: unknown key", id="unknown-route-key"),
        pytest.param(
            "routes:\n" + ROUTE_OK + "rotues: []\n", "rotues: unknown key", id="unknown-top-key"
        ),
        pytest.param(
            one_route(stable="{url: http://s, weight: 3}"),
            "routes[0].stable.weight: unknown key",
            id="unknown-backend-key",
        ),
        pytest.param(
            one_route(sticky="{cookie: id, ttl: 3}"),
            "routes[0].sticky.ttl: unknown key",
            id="unknown-sticky-key",
        ),
        pytest.param(
            one_route(match="{host: a.test, path: /}"),
            "routes[0].match.path: unknown key",
            id="unknown-match-key",
        ),
        pytest.param(
            one_route(weight="5"),
            "routes[0]: a weight above 0 needs a 'candidate'",
            id="weight-without-candidate",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{cookie: c, regex: '(a'}]"),
            "routes[0].overrides[0].regex: invalid regular expression: "
            "missing ), unterminated subpattern at position 0",
            id="bad-regex",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{header: X, cookie: y}]"),
            "routes[0].overrides[0]: give exactly one of 'header' or 'cookie'",
            id="override-two-sources",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{value: beta}]"),
            "routes[0].overrides[0]: give exactly one of 'header' or 'cookie'",
            id="override-no-source",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{header: X, value: a, regex: b}]"),
            "routes[0].overrides[0]: give at most one of 'value' or 'regex'",
            id="override-value-and-regex",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{header: 'X Canary'}]"),
            "routes[0].overrides[0].header: must be a header field name",
            id="override-bad-header",
        ),
        pytest.param(
            one_route(candidate="http://c", overrides="[{cookie: 'a;b'}]"),
            "routes[0].overrides[0].cookie: must be a cookie name",
            id="override-bad-cookie",
        ),
        pytest.param(
            one_route(sticky="{cookie: id, header: X-Id}"),
            "routes[0].sticky: give exactly one of 'cookie' or 'header'",
            id="sticky-two-sources",
        ),
        pytest.param(
            one_route(sticky="{}"),
            "routes[0].sticky: give exactly one of 'cookie' or 'header'",
            id="sticky-no-source",
        ),
        pytest.param(
            one_route(sticky="{cookie: id, max_age: 0}"),
            "routes[0].sticky.max_age: must be >= 1",
            id="sticky-max-age",
        ),
        pytest.param(
            one_route(stable="https://s"),
            "routes[0].stable.url[0]: 'https://s': only http:// upstreams are supported",
            id="https-upstream",
        ),
        pytest.param(
            one_route(stable="[http://a, ftp://b]"),
            "routes[0].stable.url[1]: 'ftp://b': only http:// upstreams are supported",
            id="ftp-in-list",
        ),
        pytest.param(
            one_route(candidate="{url: 'shop-v2:8080', revision: x}"),
            "routes[0].candidate.url[0]: 'shop-v2:8080': only http:// upstreams are supported",
            id="url-without-scheme",
        ),
        pytest.param(
            one_route(stable="http://s/api"),
            "routes[0].stable.url[0]: 'http://s/api': "
            "a path, query or fragment on an upstream is not supported",
            id="url-with-path",
        ),
        pytest.param(
            one_route(stable="'http://u:p@s'"),
            "routes[0].stable.url[0]: 'http://u:p@s': "
            "credentials in an upstream URL are not supported",
            id="url-with-credentials",
        ),
        pytest.param(
            one_route(stable="'http://s:99999'"),
            "routes[0].stable.url[0]: 'http://s:99999': invalid port",
            id="url-bad-port",
        ),
        pytest.param(
            one_route(stable="'http://'"),
            "routes[0].stable.url[0]: 'http://': no host",
            id="url-no-host",
        ),
        pytest.param(
            one_route(stable="[]"), "routes[0].stable.url: must not be empty", id="no-url"
        ),
        pytest.param(
            "routes:\n  - {name: r}\n", "routes[0].stable: is required", id="missing-stable"
        ),
        pytest.param(
            one_route(name="'bad name'"),
            "routes[0].name: must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            id="bad-route-name",
        ),
        pytest.param(
            one_route(match="{host: 'shop example'}"),
            "routes[0].match.host: must be a host name without port, or *.domain",
            id="bad-host",
        ),
        pytest.param(
            one_route(match="{path_prefix: api}"),
            "routes[0].match.path_prefix: must start with '/'",
            id="relative-path-prefix",
        ),
        pytest.param("revision: x\n", "routes: is required", id="no-routes"),
        pytest.param("routes: []\n", "routes: must not be empty", id="empty-routes"),
    ],
)
def test_invalid_file_names_the_path_and_the_problem(text: str, expected: str) -> None:
    assert expected in problems(text)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (one_route(candidate="http://c", weight="ten"), "routes[0].weight"),
        (one_route(candidate="{url: http://c, revision: ''}"), "routes[0].candidate.revision"),
        (one_route(candidate="{url: http://c, revision: [1]}"), "routes[0].candidate.revision"),
        (one_route(name="[a]"), "routes[0].name"),
        ("routes: {name: r}\n", "routes"),
        ("routes: [r]\n", "routes[0]"),
    ],
)
def test_wrong_types_name_the_path(text: str, path: str) -> None:
    """Type errors keep pydantic's wording (not pinned here) but always name the field."""
    assert problems(text)[0].startswith(path + ": ")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_weight_must_be_a_finite_number(value: str) -> None:
    found = problems(one_route(candidate="http://c", weight=value))
    assert found[0].startswith("routes[0].weight: must be ")


def test_every_problem_is_reported_at_once() -> None:
    text = one_route(stable="ftp://s", candidate="http://c", weight="101", x="1")
    found = problems(text)
    assert "routes[0].stable.url[0]: 'ftp://s': only http:// upstreams are supported" in found
    assert "routes[0].weight: must be <= 100" in found
    assert "routes[0].x: unknown key" in found


def test_error_message_names_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_routing("routes:\n  - {name: r, stable: http://s, bogus: 1}\n", "conf/routes.yaml")
    assert info.value.source == "conf/routes.yaml"
    assert str(info.value).splitlines()[0] == "conf/routes.yaml: routes[0].bogus: unknown key"


def test_a_bad_route_gives_no_spurious_follow_on_problems() -> None:
    assert problems(one_route(candidate="http://c", weight="101")) == [
        "routes[0].weight: must be <= 100"
    ]
    assert problems(one_route(stable="https://s")) == [
        "routes[0].stable.url[0]: 'https://s': only http:// upstreams are supported"
    ]


def test_duplicate_route_names_are_refused() -> None:
    text = "routes:\n  - {name: b, stable: http://b}\n  - {name: c, stable: http://c}\n"
    text += "  - {name: b, stable: http://d}\n"
    assert any("route name 'b' is used twice" in p for p in problems(text))


def test_duplicate_route_name_problem_names_the_entry() -> None:
    text = "routes:\n  - {name: b, stable: http://b}\n  - {name: c, stable: http://c}\n"
    text += "  - {name: b, stable: http://d}\n"
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert [p.path for p in info.value.problems] == ["routes[2].name"]


@pytest.mark.parametrize("value", ["yes", "true", "on"])
def test_boolean_weight_is_refused(value: str) -> None:
    assert problems(one_route(candidate="http://c", weight=value))[0].startswith(
        "routes[0].weight: "
    )


def test_duplicate_key_in_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse(
            """
            routes:
              - name: shop
                stable: http://shop-v1
                stable: http://shop-v2
            """
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "routes:\n  - name: a\n    stable: http://a\n   bad: x\n",
            Problem(
                "line 4, column 4",
                "invalid YAML: expected <block end>, but found '<block mapping start>'",
            ),
        ),
        (
            "routes:\n\t- name: a\n",
            Problem(
                "line 2, column 1",
                "invalid YAML: found character '\\t' that cannot start any token",
            ),
        ),
        (
            "routes:\n  - {name: a, stable: http://a\n",
            Problem(
                "line 3, column 1", "invalid YAML: expected ',' or '}', but got '<stream end>'"
            ),
        ),
    ],
)
def test_invalid_yaml_reports_line_and_column(text: str, expected: Problem) -> None:
    with pytest.raises(ConfigError) as info:
        parse_routing(text, "routes.yaml")
    assert info.value.problems == [expected]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here yet\n", "---\n"])
def test_empty_file_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_routing(text)
    assert info.value.problems == [Problem("", "the file is empty; it needs 'routes'")]
    assert str(info.value) == "the file is empty; it needs 'routes'"


@pytest.mark.parametrize("text", ["- name: a\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_routing(text)
    assert info.value.problems == [Problem("", "the top level must be a mapping with 'routes'")]


# --- summary ------------------------------------------------------------------------------


def test_summary_of_a_valid_file() -> None:
    config = parse(
        """
        routes:
          - {name: shop, stable: http://s, candidate: http://c, weight: 12.5}
          - {name: api, stable: http://a}
          - {name: idle, stable: http://i, candidate: http://j}
        """
    )
    assert summary(config) == (
        "ok: 3 route(s): shop (stable, candidate 12.5%); api (stable); idle (stable, candidate 0%)"
    )


def test_summary_names_the_file_revision() -> None:
    config = parse('revision: "v7"\nroutes: [{name: api, stable: http://a}]\n')
    assert summary(config) == "ok: revision v7, 1 route(s): api (stable)"


def test_a_host_match_with_a_port_is_refused() -> None:
    # Matching compares the Host without its port, so a port here could never match.
    assert problems(
        "routes:\n  - {name: r, stable: http://s, match: {host: 'shop.example.com:8080'}}\n"
    ) == ["routes[0].match.host: must be a host name without port, or *.domain"]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!x)y"])
def test_regexes_that_cannot_match_in_linear_time_are_refused(pattern: str) -> None:
    text = one_route(candidate="http://c", overrides=f"[{{cookie: c, regex: '{pattern}'}}]")
    (line,) = problems(text)
    assert line.startswith("routes[0].overrides[0].regex: unsupported regular expression")
    assert "linear time" in line


def test_a_catastrophic_pattern_for_backtracking_matches_in_linear_time() -> None:
    from splitproxy.config.patterns import compile_pattern

    # exponential in a backtracking engine: Python's re would not finish within the test's
    # timeout (nor this century) on these 100,000 characters
    pattern = compile_pattern(r"(a+)+b")
    assert pattern.fullmatch("a" * 100_000) is None
    assert pattern.fullmatch("a" * 100_000 + "b") is not None


# --- health checks ------------------------------------------------------------------------


def test_health_defaults_and_the_route_level_default_applies_to_both_versions() -> None:
    route = parse(one_route(candidate="http://c", health="{}")).routes[0]
    check = route.health_of("stable")
    assert check is not None
    assert (check.path, check.interval, check.timeout) == ("/healthz", 2.0, 1.0)
    assert (check.unhealthy_after, check.healthy_after) == (3, 2)
    assert check.expect == tuple(range(200, 300))
    assert route.health_of("candidate") == check


def test_a_backend_health_check_wins_over_the_route_one() -> None:
    text = one_route(
        candidate="{url: http://c, health: {path: /ready, interval: 500ms, timeout: 200ms}}",
        health="{path: /up, expect: [200, '204']}",
    )
    route = parse(text).routes[0]
    cand, stable = route.health_of("candidate"), route.health_of("stable")
    assert cand is not None
    assert stable is not None
    assert (cand.path, cand.interval, cand.timeout) == ("/ready", 0.5, 0.2)
    assert cand.expect == tuple(range(200, 300))
    assert (stable.path, stable.expect) == ("/up", (200, 204))


def test_no_health_anywhere_means_no_active_check() -> None:
    route = parse(one_route(candidate="http://c")).routes[0]
    assert route.health_of("stable") is None
    assert route.health_of("candidate") is None
    assert parse(one_route()).routes[0].health_of("candidate") is None


@pytest.mark.parametrize(
    ("expect", "codes"),
    [("3xx", tuple(range(300, 400))), ("204", (204,)), ("[301, 200, 200]", (200, 301))],
)
def test_health_expect_forms(expect: str, codes: tuple[int, ...]) -> None:
    check = parse(one_route(health=f"{{expect: {expect}}}")).routes[0].health
    assert check is not None
    assert check.expect == codes


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ("{path: healthz}", "routes[0].health.path: must start with '/'"),
        ("{path: '/a b'}", "routes[0].health.path: must be a plain request path"),
        ("{expect: 4xx}", "routes[0].health.expect: '4xx' is not a status code (or 2xx, 3xx)"),
        ("{expect: 700}", "routes[0].health.expect: 700 is not a status code (100-599)"),
        ("{expect: []}", "routes[0].health.expect: give at least one status code"),
        ("{interval: 1s, timeout: 2s}", "routes[0].health: 'timeout' must not be longer"),
        ("{unhealthy_after: 0}", "routes[0].health.unhealthy_after"),
        ("{interval: soon}", "routes[0].health.interval"),
        ("{pth: /x}", "routes[0].health.pth"),
    ],
)
def test_invalid_health_names_the_path(health: str, expected: str) -> None:
    found = problems(one_route(health=health))
    assert any(p.startswith(expected) for p in found), found


def test_a_route_is_found_by_name_in_the_config_and_in_a_copy_with_other_routes() -> None:
    config = parse_routing(
        "routes:\n  - {name: a, stable: 'http://a'}\n  - {name: b, stable: 'http://b'}\n"
    )
    b = config.route("b")
    assert b is not None
    assert b.stable.urls == ("http://b",)
    assert config.route("c") is None
    fewer = config.model_copy(update={"routes": config.routes[:1]})
    assert fewer.route("b") is None  # not the index of the config it was copied from
    assert fewer.route("a") is config.route("a")


KNOWN = "routes:\n  - {name: a, stable: 'http://a', candidate: 'http://a2', weight: 1}\n"


def test_a_route_written_as_before_is_taken_as_it_was_validated() -> None:
    before = load_document(KNOWN)
    known = known_routes(before, validate_routing(before))
    edited = load_document(KNOWN + "  - {name: b, stable: 'http://b'}\n")
    config = validate_routing(edited, known=known)
    assert config.routes[0] is next(iter(known.values()))
    assert config.route("b") is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KNOWN.replace("weight: 1", "weight: true"), "routes[0].weight: Input should be"),
        (KNOWN + "  - {name: a, stable: 'http://b'}\n", "routes[1].name: route name 'a' is used"),
        (KNOWN + "  - {name: b, stable: 'ftp://b'}\n", "routes[1].stable.url[0]: 'ftp://b'"),
    ],
    ids=["same-value-other-type", "duplicate-of-a-known-route", "bad-route-beside-known"],
)
def test_known_routes_change_no_verdict_and_no_wording(text: str, expected: str) -> None:
    before = load_document(KNOWN)
    known = known_routes(before, validate_routing(before))
    with pytest.raises(ConfigError) as fresh:
        validate_routing(load_document(text))
    with pytest.raises(ConfigError) as reusing:
        validate_routing(load_document(text), known=known)
    assert reusing.value.problems == fresh.value.problems
    assert str(fresh.value.problems[0]).startswith(expected)
