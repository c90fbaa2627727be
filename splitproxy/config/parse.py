"""Reading a routing file: strict YAML, whole-file validation, and problems with paths.

`parse_routing` turns a file's text into a `RoutingConfig` or a `ConfigError` naming every
problem as ``routes[1].weight: must be <= 100``; `read_routing_file` does the same from a
path, with the content hash the reloader compares. Only the file read touches the outside
world: no asyncio, socket or clock, so ``splitproxy check`` loads nothing of the proxy.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from pydantic import ValidationError

from splitproxy.config import nativeyaml
from splitproxy.config.fields import fmt_number
from splitproxy.config.routes import Route, RoutingConfig
from splitproxy.errors import ConfigError, Problem

# Location parts pydantic adds for a tagged union or a wrapped validator: not the user's keys.
_TAGS = frozenset({"Backend", "MetricCheck", "CompareCheck", "PrometheusCheck", "WebCheck"})


# Short, stable wording for the errors users meet most; pydantic's own text otherwise.
def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "less_than_equal":
        return f"must be <= {fmt_number(ctx['le'])}"
    if kind == "greater_than_equal":
        return f"must be >= {fmt_number(ctx['ge'])}"
    if kind == "less_than":
        return f"must be < {fmt_number(ctx['lt'])}"
    if kind == "greater_than":
        return f"must be > {fmt_number(ctx['gt'])}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "sub_path":
        return str(ctx["message"])
    return str(err["msg"])


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in _TAGS:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from(exc: ValidationError) -> list[Problem]:
    """Turn pydantic's errors into ``path: message`` problems, one per error.

    pydantic checks a list's length on the items that validated, so a list whose only item
    is invalid also reports "too short"; that echo is dropped.
    """
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    out = []
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        sub = (err.get("ctx") or {}).get("sub", "") if err["type"] == "sub_path" else ""
        out.append(Problem(_path(loc) + sub, _message(err)))
    return out


# A routing file is read whole, by a person's hand: these bounds are far above any real one
# and far below what would stall the proxy (a file is parsed off the event loop, but still).
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 64  # nesting of mappings and lists
# values once every alias is expanded (a "billion laughs" file): a 10,000-route file with
# sticky routes, overrides and rollouts holds 300,000-600,000 values (issue 17 wants those to
# load); a million built values costs ~100 MB for the moment of a parse, a bounded cost
MAX_VALUES: Final = 1_000_000
MAX_INT_DIGITS: Final = 30


class _StrictConstruction(yaml.constructor.SafeConstructor):
    """What both loaders check while building values: a key given twice in one mapping
    (PyYAML keeps the last), a key that is a list or a mapping, and integers of more than
    `MAX_INT_DIGITS` digits. Each refusal is a `MarkedYAMLError` with its line."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {digits} digits", node.start_mark
            )
        value: int = super().construct_yaml_int(node)
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base``: merged by the base constructor, own keys win
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                )  # fmt: skip
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.Node) -> Any:
        data = super().construct_document(node)
        _release(node)
        return data


def _release(root: yaml.Node, depth: int = 2) -> None:
    """Drop a composed document's nodes a few at a time, not all at once.

    A 1 MB file composes to about a million node and mark objects; dropping the root frees
    them in one cascade that holds the interpreter for 30-60 ms (a stall for the event loop
    while a reload runs in a thread). Emptying the top ``depth`` levels of collections
    here frees the document one subtree (one route) at a time instead."""
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    while stack:
        node, level = stack.pop()  # rebinding `node` frees the subtree of the one before
        if level < depth and isinstance(node, yaml.CollectionNode):
            value, node.value = node.value, []
            if isinstance(node, yaml.MappingNode):
                stack.extend((part, level + 1) for pair in value for part in pair)
            else:
                stack.extend((child, level + 1) for child in value)
            del value


class _StrictComposition(yaml.composer.Composer):
    """What both loaders check while composing nodes: nesting deeper than `MAX_DEPTH`, and
    more than `MAX_VALUES` values once aliases are expanded (a "billion laughs" file). Each
    refusal is a `ComposerError` with its line."""

    _depth = 0
    _nodes = 0  # composed so far: the expanded size of a document without aliases
    _aliases = False

    if TYPE_CHECKING:  # the parser's side, from `yaml.parser.Parser` or libyaml's `CParser`

        def check_event(self, *choices: Any) -> bool: ...
        def peek_event(self) -> Any: ...

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases = True
        else:
            self._nodes += 1
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                message = f"nesting deeper than {MAX_DEPTH} levels"
                raise yaml.composer.ComposerError(None, None, message, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is None:
            return node
        if self._nodes > MAX_VALUES:
            message = f"more than {MAX_VALUES} values"
            raise yaml.composer.ComposerError(None, None, message, node.start_mark)
        if self._aliases and _expanded_size(node) > MAX_VALUES:
            message = f"aliases expand to more than {MAX_VALUES} values"
            raise yaml.composer.ComposerError(None, None, message, node.start_mark)
        return node


class _StrictLoader(_StrictConstruction, _StrictComposition, yaml.SafeLoader):
    """A safe loader for hostile input, in pure Python, with every check of
    `_StrictConstruction` and `_StrictComposition`. It words every problem as users know it."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    assert isinstance(loader, _StrictConstruction)
    return loader.construct_yaml_int(node)


try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None  # type: ignore[assignment,misc]
_FastLoader: type[Any] | None = None
if _CParser is not None:

    class _FastStrictLoader(
        _StrictConstruction,
        _StrictComposition,
        _CParser,
        yaml.resolver.Resolver,
    ):
        """`_StrictLoader` with libyaml's scanner and parser underneath (the composer and
        constructor, and so every check, are the same): a 1 MB file in 0.4 s rather than
        2.5 s. libyaml words syntax errors its own way (see `_load_yaml`)."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.composer.Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _FastStrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    _FastLoader = _FastStrictLoader

_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _load_yaml(text: str) -> Any:
    """The YAML document in ``text``, through libyaml when it is there: composed in C and
    built by one bounded walk (`nativeyaml`, an ordinary file), else parsed in C and composed
    in Python (a file with aliases or merge keys). A file either refuses is read again by the
    pure-Python loader, so every problem is worded (and placed) the same with or without
    libyaml; only valid files take the fast paths."""
    if _FastLoader is not None:
        try:
            return nativeyaml.load(
                text,
                max_depth=MAX_DEPTH,
                max_values=MAX_VALUES,
                max_int_digits=MAX_INT_DIGITS,
                constructor=yaml.constructor.SafeConstructor(),
                release=_release,
            )
        except (nativeyaml.Declined, yaml.YAMLError, RecursionError):
            pass
        try:
            return yaml.load(text, Loader=_FastLoader)
        except (yaml.YAMLError, RecursionError):
            pass
    return yaml.load(text, Loader=_StrictLoader)


def _expanded_size(root: yaml.Node) -> int:
    """How many values ``root`` holds once its aliases are expanded (shared nodes counted
    at each use), computed without expanding them; stops counting past `MAX_VALUES`."""
    sizes: dict[int, int] = {}
    # iterative post-order walk: the graph is acyclic only if no alias points to an ancestor,
    # and a recursive alias is counted as too big
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, MAX_VALUES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return MAX_VALUES + 1  # an alias to its own ancestor: endless
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _duplicate_names(data: dict[str, Any]) -> list[Problem]:
    routes = data.get("routes")
    if not isinstance(routes, list):
        return []
    seen: set[str] = set()
    problems = []
    for i, route in enumerate(routes):
        name = route.get("name") if isinstance(route, dict) else None
        if isinstance(name, str):
            if name in seen:
                problems.append(Problem(f"routes[{i}].name", f"route name {name!r} is used twice"))
            seen.add(name)
    return problems


def parse_routing(text: str, source: str = "") -> RoutingConfig:
    """Parse and validate a routing file's YAML text; raise `ConfigError` naming every problem."""
    return validate_routing(load_document(text, source), source)


def load_document(text: str, source: str = "") -> dict[str, Any]:
    """The first half of `parse_routing`: the YAML document in ``text``, a mapping, or a
    `ConfigError` with the line of the problem. The reloader runs the two halves apart, to
    pause the garbage collector over this one (see `reload.Reloader`)."""
    if len(text) > MAX_FILE_BYTES:
        message = f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB"
        raise ConfigError([Problem("", message)], source)
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([Problem(where, f"invalid YAML: {exc.problem}")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML: {exc}")], source) from None
    except RecursionError:  # a bound above should stop it first; never a traceback
        raise ConfigError(
            [Problem("", f"nesting deeper than {MAX_DEPTH} levels")], source
        ) from None
    if data is None:
        raise ConfigError([Problem("", "the file is empty; it needs 'routes'")], source)
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the top level must be a mapping with 'routes'")], source)
    return data


def validate_routing(
    data: dict[str, Any], source: str = "", known: Mapping[str, Route] | None = None
) -> RoutingConfig:
    """The second half of `parse_routing`: the whole file validated at once (one bad route
    rejects it), every problem named with its path (``routes[1].weight``).

    ``known`` (see `known_routes`) holds routes validated before: a route written exactly
    as one of them is taken as it is, so editing one route of a large file validates one
    route and leaves the others' objects (and compiled forms) alone. Problems are always
    worded from the file as written, as a whole."""
    routes = data.get("routes")
    if known and isinstance(routes, list):
        reused = [known.get(route_key(r), r) if isinstance(r, dict) else r for r in routes]
        try:
            return _validate({**data, "routes": reused}, source)
        except ConfigError:
            pass  # the problems, worded from the file itself below
    return _validate(data, source)


def route_key(raw: dict[str, Any]) -> str:
    """A route's definition as written, for `validate_routing`'s ``known``: its repr, in
    which ``1``, ``1.0`` and ``true`` differ as they do to validation."""
    return repr(raw)


def known_routes(data: dict[str, Any], config: RoutingConfig) -> dict[str, Route]:
    """`route_key` of each route of the document ``config`` was validated from -> its model."""
    raw = data["routes"]
    return {route_key(r): route for r, route in zip(raw, config.routes, strict=True)}


def _validate(data: dict[str, Any], source: str) -> RoutingConfig:
    duplicates = _duplicate_names(data)
    try:
        config = RoutingConfig.model_validate(data)
    except ValidationError as exc:
        problems = [p for p in problems_from(exc) if "is used twice" not in p.message]
        raise ConfigError(problems + duplicates, source) from None
    if duplicates:  # pragma: no cover - the model's own check catches these first
        raise ConfigError(duplicates, source)
    return config


def summary(config: RoutingConfig) -> str:
    """One line describing a valid config, as `splitproxy check` prints it."""
    parts = []
    for r in config.routes:
        cand = f", candidate {r.weight:g}%" if r.candidate else ""
        parts.append(f"{r.name} (stable{cand})")
    rev = f" revision {config.revision}," if config.revision else ""
    return f"ok:{rev} {len(config.routes)} route(s): " + "; ".join(parts)


def content_hash(text: str | bytes) -> str:
    """The sha256 of a routing file's bytes: what the reloader compares and status shows."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def read_routing_bytes(path: Path) -> tuple[str, str]:
    """The file's text and the sha256 of its bytes; `ConfigError` if it cannot be read.

    Only a regular file is read (opened without blocking, so a FIFO or a device put in its
    place is refused instead of hanging the reload), and no more than just over
    `MAX_FILE_BYTES` (the parser refuses larger files with their size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError([Problem("", "not a regular file")], str(path))
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_FILE_BYTES:
            message = f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB"
            raise ConfigError([Problem("", message)], str(path))
    except OSError as exc:
        raise ConfigError(
            [Problem("", f"cannot read the file: {exc.strerror or exc}")], str(path)
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem("", "the file is not UTF-8 text")], str(path)) from None
    return text, content_hash(raw)


def read_routing_file(path: Path) -> tuple[RoutingConfig, str]:
    """Read and validate a routing file; `ConfigError` names every problem."""
    text, digest = read_routing_bytes(path)
    return parse_routing(text, str(path)), digest
