"""``GET /api/v1/status`` for a large config: a page of routes, built in slices between which
the event loop serves.

Status shows each route with its backends, health, weight, traffic and rollout. With 10,000
routes that answer was 11.8 MB, built and serialised in one go on the event loop: 500-650 ms
in which no proxied request moved. Now the routes come in a page (``?offset=``, ``?limit=``,
default `DEFAULT_LIMIT`, so a config of up to that many routes answers exactly as before,
every route included), optionally only those whose name contains ``?route=``; the answer says
how many routes there are (``route_count``) and which page it holds (``page``). Whatever the
page, the route views are built and serialised `SLICE` routes at a time, the loop running
other work in between, so even ``?limit=`` of every route costs serving no more than one
slice at a time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from splitproxy.dataplane.routing import CompiledRoute
from splitproxy.views import PageView, RouteView

DEFAULT_LIMIT: Final = 1000  # routes per answer unless ``?limit=`` says otherwise
SLICE: Final = 100  # route views built (a few ms) between two turns of the event loop


class BadPage(ValueError):
    """A query that names no page: its error code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Page:
    """Which routes an answer holds: ``limit`` from ``offset`` on, of those whose name
    contains ``route`` (all routes when None)."""

    offset: int = 0
    limit: int = DEFAULT_LIMIT
    route: str | None = None

    def select(self, routes: Sequence[CompiledRoute]) -> tuple[list[CompiledRoute], int]:
        """The routes of this page, in the config's order, and how many matched in all."""
        needle = self.route
        matched = list(routes) if needle is None else [r for r in routes if needle in r.name]
        return matched[self.offset : self.offset + self.limit], len(matched)


def page_of(query: Mapping[str, str]) -> Page:
    """The page a status query asks for; `BadPage` for a limit or offset that is not a
    whole number in range."""
    return Page(
        _whole(query, "offset", 0, minimum=0),
        _whole(query, "limit", DEFAULT_LIMIT, minimum=1),
        query.get("route") or None,
    )


def _whole(query: Mapping[str, str], key: str, default: int, *, minimum: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise BadPage(f"invalid_{key}", f"{key!r} must be a whole number >= {minimum}")
    return value


async def respond(
    head: dict[str, Any],
    page: Page,
    routes: Sequence[CompiledRoute],
    view: Callable[[CompiledRoute], RouteView],
) -> web.Response:
    """The status answer: ``head`` (everything but the routes), the route count, the page,
    and the page's route views, built and serialised a slice at a time."""
    chosen, matched = page.select(routes)
    described: PageView = {
        "offset": page.offset,
        "limit": page.limit,
        "route": page.route,
        "matched": matched,
        "returned": len(chosen),
    }
    head = {**head, "route_count": len(routes), "page": described}
    parts: list[str] = []
    for start in range(0, len(chosen), SLICE):
        if start:
            await asyncio.sleep(0)  # let the proxied requests run between two slices
        views = [view(route) for route in chosen[start : start + SLICE]]
        parts.append(json.dumps(views)[1:-1])
    text = json.dumps(head)[:-1] + ', "routes": [' + ", ".join(parts) + "]}"
    return web.Response(text=text, content_type="application/json")
