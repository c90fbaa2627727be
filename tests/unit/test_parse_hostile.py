"""Hostile routing files: each is one clear problem, never a traceback, a hang or a blow-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import parse, parse_routing
from splitproxy.config.parse import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, read_routing_bytes
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


def test_a_file_of_ten_thousand_routes_loads() -> None:
    route = (
        "  - name: r{i}\n"
        "    match: {{host: h{i}.example, path_prefix: /p{i}}}\n"
        "    stable: http://10.0.0.1:80\n"
        "    candidate: {{url: 'http://10.0.0.2:80', revision: 'c{i}'}}\n"
        "    sticky: {{cookie: splitproxy_id}}\n"
        "    overrides: [{{header: X-Canary}}, {{cookie: beta, value: 'yes'}}]\n"
        "    weight: 10\n"
    )
    text = "routes:\n" + "".join(route.format(i=i) for i in range(10_000))
    assert len(parse_routing(text).routes) == 10_000


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


LOADER_CASES = [
    "routes:\n  - &b {name: r0, stable: 'http://x:1'}\n  - {<<: *b, name: r1}\n",
    "a: [1, 2.5, yes, no, ~, '3', 0x1f, 1e3, .inf, 2001-12-14]\nb: {c: [d, {e: f}]}\n",
    "- !!str 12\n- !!int '7'\n- |\n  two\n  lines\n- >-\n  folded\n  text\n",
    "k: &x [1, 2]\nl: *x\nm: {? a : b}\n",
]


def loaded(text: str, *, reference: bool = False) -> object:
    """What a loader makes of ``text``: the value, or the problem and where."""
    try:
        if reference:  # the pure-Python loader: what users have always been told
            return yaml.load(text, Loader=parse._StrictLoader)
        return parse._load_yaml(text)  # libyaml first, when installed
    except yaml.MarkedYAMLError as exc:
        return f"{exc.problem} at {exc.problem_mark}"


@pytest.mark.parametrize("text", LOADER_CASES)
def test_the_fast_loader_reads_what_the_strict_loader_reads(text: str) -> None:
    assert loaded(text) == loaded(text, reference=True)


@settings(max_examples=200, deadline=None)
@given(yaml_values, st.booleans())
def test_the_fast_loader_agrees_on_any_document(value: object, flow: bool) -> None:
    text = yaml.safe_dump({"v": value}, default_flow_style=flow)
    assert repr(loaded(text)) == repr(loaded(text, reference=True))  # repr: nan == nan


def test_a_bad_file_is_worded_the_same_with_or_without_libyaml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [
        "routes:\n  - name: a\n    stable: http://a\n   bad: x\n",
        "routes: " + "- " * 3 + "x\n",
        "routes:\n" + "".join("  " * i + "- \n" for i in range(1, 80)),
        BILLION_LAUGHS,
        "routes:\n  - name: a\n    name: b\n",
    ]
    with_libyaml = [problem(text) for text in texts]
    monkeypatch.setattr(parse, "_FastLoader", None)
    assert [problem(text) for text in texts] == with_libyaml


def test_a_fifo_a_directory_or_a_huge_file_in_place_of_the_routing_file_is_one_line(
    tmp_path: Path,
) -> None:
    fifo, directory, huge = tmp_path / "fifo.yaml", tmp_path / "dir.yaml", tmp_path / "big.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open would never return
    directory.mkdir()
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 10)
    for path, expected in [
        (fifo, "not a regular file"),
        (directory, "not a regular file"),
        (huge, "the file is larger than 4 MiB"),
    ]:
        with pytest.raises(ConfigError) as caught:
            read_routing_bytes(path)
        assert [p.message for p in caught.value.problems] == [expected], path
