"""The quick way through a routing file: libyaml composes, one bounded walk builds the values.

`parse._load_yaml` tries this first. libyaml (PyYAML's ``CParser``) scans, parses *and*
composes the document in C; it refuses nesting deeper than its own limit (1,000 levels since
libyaml 0.2.5, so its recursive composer cannot run away), which is why older versions do not
take this path. Then one walk, in Python, checks the bounds the pure loader checks while it
composes (`parse.MAX_DEPTH`, `parse.MAX_VALUES`, a key given twice, a key that is not a plain
value, an integer of too many digits) and builds the values as `yaml.SafeLoader` does.

The walk declines (`Declined`) anything unusual instead of handling it: an alias or anchor
shared by two places, a merge key (``<<``), a tag it does not build itself or through the
safe constructor, any bound crossed. The caller then reads the text with the loaders that
word every problem as users know it, so this path changes only how fast a valid ordinary
file loads, never what a file means or how a problem is told. Measured on a 2 MB,
10,000-route file: ~0.4 s (0.3 s of it to compose), against ~1 s for libyaml's scanner under
the pure-Python composer and constructor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import yaml

try:
    from yaml._yaml import CParser, get_version
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None  # type: ignore[assignment,misc]
    AVAILABLE = False
else:
    # libyaml bounds nesting (its composer recurses in C) from 0.2.5 on
    AVAILABLE = tuple(get_version()) >= (0, 2, 5)

_STR: Final = "tag:yaml.org,2002:str"
_SEQ: Final = "tag:yaml.org,2002:seq"
_MAP: Final = "tag:yaml.org,2002:map"
_INT: Final = "tag:yaml.org,2002:int"
# a ``!`` where a tag can start: the text's start, or after a blank or a flow indicator
_TAG: Final = re.compile(r"(?:^|[\s,\[{])!")


class Declined(Exception):
    """The quick path does not take this text; the careful loaders read it."""


if CParser is not None:

    class _Composer(CParser, yaml.resolver.Resolver):
        """libyaml's composer with the standard tag resolution."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.resolver.Resolver.__init__(self)


def load(
    text: str,
    *,
    max_depth: int,
    max_values: int,
    max_int_digits: int,
    constructor: yaml.constructor.SafeConstructor,
    release: Callable[[yaml.Node], None],
) -> Any:
    """The document in ``text``, or `Declined` (or libyaml's `yaml.YAMLError`).

    ``constructor`` builds the scalars other than strings (booleans, numbers, null,
    timestamps); ``release`` frees the composed nodes once the values are built."""
    if not AVAILABLE:
        raise Declined("libyaml is missing or older than 0.2.5")
    composer = _Composer(text)
    try:
        node = composer.get_single_node()
    finally:
        composer.dispose()
    if node is None:
        return None
    if "!" in text and _TAG.search(text):
        # libyaml and PyYAML's own scanner part ways on the bare ``!`` tag (one builds "", the
        # other null or an error), and routing files have no use for tags: the careful way
        raise Declined("a tag")
    if "?" in text:
        _decline_flow_questions(node)
    walk = _Walk(max_depth, max_values, max_int_digits, constructor, "&" in text)
    try:
        return walk.build(node, 1)
    finally:
        release(node)


_Scalar = yaml.ScalarNode


def _decline_flow_questions(node: yaml.Node) -> None:
    """`Declined` for a plain scalar with a ``?`` inside a flow collection (``{a?: 1}``).

    libyaml reads such a scalar whole; PyYAML's own scanner, which the careful loaders use,
    ends a plain scalar at ``?`` in flow context and then refuses the document. The two must
    never disagree on what a file means, so such a text takes the careful way. Only a text
    with a ``?`` gets this walk (iterative: libyaml bounds the depth, this adds no recursion).
    """
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        item, in_flow = stack.pop()
        if item.__class__ is _Scalar:
            if in_flow and not item.style and "?" in item.value:  # plain: "" or None
                raise Declined("a '?' in a flow collection's plain scalar")
            continue
        if isinstance(item, yaml.MappingNode):
            flow = in_flow or bool(item.flow_style)
            for key, value in item.value:
                stack.append((key, flow))
                stack.append((value, flow))
        elif isinstance(item, yaml.SequenceNode):
            flow = in_flow or bool(item.flow_style)
            stack.extend((child, flow) for child in item.value)


class _Walk:
    """One pass over a composed document: the bounds, then the values. A plain string (most
    of a routing file) is taken where its parent is built, without a call of its own."""

    __slots__ = ("constructor", "count", "max_depth", "max_int_digits", "max_values", "seen")

    def __init__(
        self,
        max_depth: int,
        max_values: int,
        max_int_digits: int,
        constructor: yaml.constructor.SafeConstructor,
        anchors: bool,
    ) -> None:
        self.max_depth = max_depth
        self.max_values = max_values
        self.max_int_digits = max_int_digits
        self.constructor = constructor
        self.count = 1  # values so far: the root, then each collection's children at once
        # ids of the collections built, a second visit being an alias; only a text with an
        # anchor (``&``) can have one (libyaml refuses an alias to an unknown anchor)
        self.seen: set[int] | None = set() if anchors else None

    def build(self, node: yaml.Node, depth: int) -> Any:
        # the recursion is bounded by `max_depth` (checked before descending); a string child
        # sits one level deeper than its parent, within the strict loader's bound
        if depth > self.max_depth - 1:  # a level short of the bound: declining is always safe
            raise Declined("deep nesting")
        tag = node.tag
        if node.__class__ is _Scalar:
            if tag == _STR:
                return node.value
            if tag == _INT and sum(c.isdigit() for c in node.value) > self.max_int_digits:
                raise Declined("a long number")
            return self.constructor.construct_object(node)  # YAMLError for unknown tags
        seen = self.seen
        if seen is not None:
            if id(node) in seen:
                raise Declined("an alias")
            seen.add(id(node))
        value = node.value
        if node.__class__ is yaml.SequenceNode and tag == _SEQ:
            self.count += len(value)
            if self.count > self.max_values:
                raise Declined("too many values")
            deeper = depth + 1
            return [
                child.value
                if child.__class__ is _Scalar and child.tag == _STR
                else self.build(child, deeper)
                for child in value
            ]
        if node.__class__ is yaml.MappingNode and tag == _MAP:
            self.count += 2 * len(value)
            if self.count > self.max_values:
                raise Declined("too many values")
            deeper = depth + 1
            out: dict[Any, Any] = {}
            for key_node, value_node in value:
                if key_node.__class__ is not _Scalar or key_node.tag not in _KEY_TAGS:
                    raise Declined("an unusual key")
                name = key_node.value if key_node.tag == _STR else self.build(key_node, deeper)
                if name in out:
                    raise Declined("a key given twice")
                if value_node.__class__ is _Scalar and value_node.tag == _STR:
                    out[name] = value_node.value
                else:
                    out[name] = self.build(value_node, deeper)
            return out
        raise Declined(f"a {tag} collection")


# keys the walk builds itself; a merge key (``<<``) or a value key (``=``) takes the long way
_KEY_TAGS: Final = frozenset(
    {
        _STR,
        _INT,
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp",
    }
)
