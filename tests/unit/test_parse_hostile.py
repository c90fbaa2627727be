"""Hostile routing files: each is one clear problem, never a traceback, a hang or a blow-up."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import parse_routing
from splitproxy.config.parse import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES
from splitproxy.errors import ConfigError

BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]',
        *(
            f"{n}: &{n} [{', '.join(['*' + p] * 9)}]"
            for p, n in zip("abcdefg", "bcdefgh", strict=True)
        ),
        "routes: *h",
    ]
)


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_routing(text, "routes.yaml")
    assert len(info.value.problems) == 1, info.value.describe()
    return str(info.value.problems[0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("? [a, b]\n: 1\nroutes: []\n", "a key must be a plain value"),
        ("? {a: 1}\n: 1\nroutes: []\n", "a key must be a plain value"),
        ("routes:\n  - name: a\n    weight: 1" + "0" * 5000 + "\n", "a number of 5001 digits"),
        ("routes: " + "[" * 5000 + "]" * 5000 + "\n", f"nesting deeper than {MAX_DEPTH}"),
        ("routes:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), "nesting deeper"),
        (BILLION_LAUGHS, f"aliases expand to more than {MAX_VALUES} values"),
        ("a: &a [*a]\nroutes: []\n", "invalid YAML"),
        ("routes: []\n" + "#" * (MAX_FILE_BYTES + 1), "larger than 4 MiB"),
    ],
)
def test_a_hostile_file_is_one_clear_problem(text: str, expected: str) -> None:
    assert expected in problem(text)


def test_bounds_leave_room_for_real_files() -> None:
    routes = [
        {"name": f"r{i}", "stable": [f"http://10.0.{i // 250}.{i % 250}:80"] * 3}
        for i in range(2000)
    ]
    text = yaml.safe_dump({"routes": routes})
    assert len(parse_routing(text).routes) == 2000
    shared = "routes:\n  - &b {name: r0, stable: 'http://x:1'}\n" + "".join(
        f"  - {{<<: *b, name: r{i}}}\n" for i in range(1, 300)
    )
    assert len(parse_routing(shared).routes) == 300  # merge keys: own keys win, no "twice"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    problems = None
    try:
        parse_routing(text)
    except ConfigError as exc:
        problems = exc.problems
    assert problems is None or problems


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "routes": st.lists(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "name",
                            "stable",
                            "candidate",
                            "weight",
                            "match",
                            "overrides",
                            "sticky",
                            "rollout",
                        ]
                    ),
                    yaml_values,
                ),
                max_size=3,
            )
        }
    )
)
def test_any_yaml_shaped_like_a_routing_file_is_a_config_or_problems_with_paths(
    data: dict[str, object],
) -> None:
    text = yaml.safe_dump(data)
    problems = None
    try:
        parse_routing(text)
    except ConfigError as exc:
        problems = exc.problems
    assert problems is None or (problems and all(p.message for p in problems))
