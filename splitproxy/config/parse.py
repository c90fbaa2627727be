"""Reading a routing file: strict YAML, whole-file validation, and problems with paths.

`parse_routing` turns a file's text into a `RoutingConfig` or a `ConfigError` naming every
problem as ``routes[1].weight: must be <= 100``; `read_routing_file` does the same from a
path, with the content hash the reloader compares. Only the file read touches the outside
world: no asyncio, socket or clock, so ``splitproxy check`` loads nothing of the proxy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from splitproxy.config.fields import fmt_number
from splitproxy.config.routes import RoutingConfig
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


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([Problem(where, f"invalid YAML: {exc.problem}")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML: {exc}")], source) from None
    if data is None:
        raise ConfigError([Problem("", "the file is empty; it needs 'routes'")], source)
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the top level must be a mapping with 'routes'")], source)
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
    """The file's text and the sha256 of its bytes; `ConfigError` if it cannot be read."""
    try:
        raw = path.read_bytes()
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
