"""docs/reference.md names every routing-file field, setting and metric family.

The page is the one place an operator looks a field up; a field added to a model, a setting
added to `Settings` or a metric family added to a collector without a line there fails here,
so the page cannot silently fall behind the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from splitproxy.config import RoutingConfig
from splitproxy.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference.md"
HEADING = re.compile(r"^(#{1,6}) ", re.MULTILINE)
FAMILY = re.compile(r"MetricFamily\(\s*\"(splitproxy_\w+)\"")


def _models_in(annotation: Any, found: dict[str, type[BaseModel]]) -> None:
    """Every pydantic model an annotation names, through unions, tuples and `Annotated`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ not in found:
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                _models_in(field.annotation, found)
        return
    for arg in get_args(annotation):
        _models_in(arg, found)


def routing_models() -> dict[str, type[BaseModel]]:
    """The models of the routing file, walked from its root: name -> class."""
    found: dict[str, type[BaseModel]] = {}
    _models_in(RoutingConfig, found)
    return found


def section(text: str, model: str) -> str | None:
    """The part of the page under the heading that names ``model`` in backticks, down to the
    next heading of the same or a higher level (None: no such heading)."""
    marks = list(HEADING.finditer(text))
    for i, mark in enumerate(marks):
        line_end = text.find("\n", mark.start())
        if f"`{model}`" not in text[mark.start() : line_end]:
            continue
        level = len(mark.group(1))
        end = len(text)
        for later in marks[i + 1 :]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        return text[mark.start() : end]
    return None


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text("utf-8")


def test_the_walk_reaches_every_part_of_the_file() -> None:
    # a walker that stopped early would let the field test below pass on too few models
    expected = {
        "RoutingConfig", "Route", "Match", "Backend", "HealthCheck", "Override", "Sticky",
        "Rollout", "Step", "MetricCheck", "CompareCheck", "PrometheusCheck", "WebCheck",
        "Guard", "Hook", "Traffic", "TestJob", "Mirror", "MirrorCompare",
    }  # fmt: skip
    assert expected <= set(routing_models())


@pytest.mark.parametrize("name", sorted(routing_models()))
def test_every_field_is_in_its_models_section(page: str, name: str) -> None:
    part = section(page, name)
    assert part is not None, f"docs/reference.md has no heading naming `{name}`"
    missing = [f for f in routing_models()[name].model_fields if f"`{f}`" not in part]
    assert not missing, f"docs/reference.md, section `{name}`, does not describe {missing}"


def test_every_setting_is_on_the_page(page: str) -> None:
    missing = [
        ENV_PREFIX + field.upper()
        for field in Settings.model_fields
        if not re.search(rf"`{ENV_PREFIX}{field.upper()}`", page)
    ]
    assert not missing, f"docs/reference.md does not list the settings {missing}"


def test_every_metric_family_is_on_the_page(page: str) -> None:
    sources = (ROOT / "splitproxy").rglob("*.py")
    families = {name for path in sources for name in FAMILY.findall(path.read_text("utf-8"))}
    assert len(families) >= 20  # the pattern still finds the collectors' families
    # a counter family is exposed with `_total`: either spelling, in backticks, counts
    missing = sorted(f for f in families if not re.search(rf"`{f}(_total)?`", page))
    assert not missing, f"docs/reference.md does not list the metrics {missing}"
