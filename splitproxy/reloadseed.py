"""What the reloader knows of the file that serves at start: its routes as written.

The reloader validates only the routes a new file writes differently from the file it
validated last (`config.parse.known_routes`). The file loaded at start is read by the server,
not the reloader, so the first reload used to validate every route again: with 10,000 routes
0.5-1 s more than the next ones. `known_at_start` reads the serving file once more, in a
thread after start, and gives the reloader its routes as written.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from splitproxy.config import Route, RoutingConfig
from splitproxy.config.parse import known_routes, load_document, read_routing_bytes
from splitproxy.dataplane.state import RuntimeState
from splitproxy.errors import ConfigError


async def known_at_start(state: RuntimeState, path: Path) -> dict[str, Route]:
    """`known_of_file` of the serving snapshot's file, read in a thread; empty if a reload
    swapped in another snapshot meanwhile (it knows its own routes)."""
    served = state.snapshot
    if served is None:
        return {}
    known = await asyncio.to_thread(known_of_file, path, served.content_hash, served.config)
    return known if state.snapshot is served else {}


def known_of_file(path: Path, digest: str, config: RoutingConfig) -> dict[str, Route]:
    """`known_routes` of the file at ``path`` if it still holds the text (``digest``, its
    content hash) ``config`` was validated from; empty otherwise (changed, unreadable)."""
    try:
        text, found = read_routing_bytes(path)
        if found != digest:
            return {}  # changed since: the reload it causes validates it in full
        return known_routes(load_document(text, str(path)), config)
    except (ConfigError, ValueError, KeyError):
        return {}
