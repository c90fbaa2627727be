"""The quick YAML path builds exactly what the strict loader builds, or declines."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import nativeyaml, parse

pytestmark = pytest.mark.skipif(not nativeyaml.AVAILABLE, reason="needs libyaml >= 0.2.5")


def native(text: str) -> Any:
    return nativeyaml.load(
        text,
        max_depth=parse.MAX_DEPTH,
        max_values=parse.MAX_VALUES,
        max_int_digits=parse.MAX_INT_DIGITS,
        constructor=yaml.constructor.SafeConstructor(),
        release=parse._release,
    )


def strict(text: str) -> Any:
    return yaml.load(text, Loader=parse._StrictLoader)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["yes", "off", "~", "0x1f", "1e3", ".inf", "2001-12-14", "=", "<<", "0o17"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans(), st.booleans())
def test_what_the_quick_path_builds_is_what_the_strict_loader_builds(
    value: object, flow: bool, raw_strings: bool
) -> None:
    text = yaml.safe_dump({"v": value}, default_flow_style=flow)
    if raw_strings:  # plain scalars as written, resolved to bools, numbers, dates by YAML
        text = text.replace("'", "")
    try:
        expected = repr(strict(text))
    except yaml.YAMLError:
        with pytest.raises((yaml.YAMLError, nativeyaml.Declined)):
            native(text)
        return
    try:
        got = repr(native(text))  # repr: nan == nan
    except nativeyaml.Declined:
        return  # the careful loaders read it
    assert got == expected


def test_an_ordinary_routing_file_takes_the_quick_path() -> None:
    text = "".join(
        f"  - name: r{i}\n    match: {{host: h{i}.example}}\n    stable: http://10.0.0.1:80\n"
        f"    candidate: {{url: 'http://10.0.0.2:80', revision: c{i}}}\n    weight: {i % 100}\n"
        for i in range(50)
    )
    text = "revision: '7'\nroutes:\n" + text
    assert native(text) == strict(text)


@pytest.mark.parametrize(
    "text",
    [
        "k: &x [1, 2]\nl: *x\n",  # an alias
        "routes:\n  - &b {name: r0}\n  - {<<: *b, name: r1}\n",  # a merge key
        "a: 1\na: 2\n",  # a key given twice
        "? [a]\n: 1\n",  # a key that is a list
        "v: " + "[" * (parse.MAX_DEPTH + 5) + "]" * (parse.MAX_DEPTH + 5) + "\n",
        "v: 1" + "0" * 40 + "\n",  # a number over the digits bound
        "v: !!set {a, b}\n",  # a collection tag the walk does not build
        "v: !custom x\n",  # a tag nobody builds
    ],
)
def test_what_the_strict_loader_checks_or_words_is_left_to_it(text: str) -> None:
    with pytest.raises((nativeyaml.Declined, yaml.YAMLError)):
        native(text)


def test_the_value_bound_holds_without_aliases() -> None:
    text = "v: [" + ", ".join("1" for _ in range(200)) + "]\n"
    with pytest.raises(nativeyaml.Declined):
        nativeyaml.load(
            text, max_depth=64, max_values=100, max_int_digits=30,
            constructor=yaml.constructor.SafeConstructor(), release=parse._release,
        )  # fmt: skip


@pytest.mark.parametrize("text", ["{v: {0?: null}}\n", "v: [a?b, c]\n", "v: [x, {y: z?}]\n"])
def test_a_question_mark_in_a_flow_plain_scalar_takes_the_careful_way(text: str) -> None:
    # libyaml reads `0?` whole where PyYAML's scanner refuses the document: never disagree
    with pytest.raises(yaml.YAMLError):
        strict(text)
    with pytest.raises(nativeyaml.Declined, match=r"'\?'"):
        native(text)


def test_a_question_mark_outside_flow_or_quoted_still_takes_the_quick_path() -> None:
    text = "v:\n  0?: null\nw: {'a?': 1}\nurl: http://h/x?y=1\n"
    assert (
        native(text) == strict(text) == {"v": {"0?": None}, "w": {"a?": 1}, "url": "http://h/x?y=1"}
    )


@pytest.mark.parametrize("text", ["v:\n- !\n", "{v: [{'': !, '0': null}]}\n", "v: !!str 5\n"])
def test_a_tag_takes_the_careful_way(text: str) -> None:
    # the bare `!` is read as "" by libyaml and as null (or refused) by PyYAML's scanner
    with pytest.raises(nativeyaml.Declined, match="a tag"):
        native(text)


def test_an_exclamation_mark_inside_a_value_is_no_tag() -> None:
    text = "v: a!b\nw: 'x!y'\n"
    assert native(text) == strict(text) == {"v": "a!b", "w": "x!y"}
