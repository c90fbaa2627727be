"""Which route serves a request, at a cost that does not grow with the number of routes.

The rule (`routing.find_route`) is the routing file's: the **first** route, in file order,
whose host matches (exact, ``*.suffix``, or any) and whose ``path_prefix`` starts the path. A
scan applies it literally; `RouteTable` gives the same answer from three indexes built once
per config:

* a dict of exact hosts, a dict of wildcard suffixes (``.example.com``, looked up for each
  dot of the request's host), and the routes for any host;
* per host entry, a longest-prefix table: the path prefixes by length, longest first, each
  mapped to the smallest route index among itself and every shorter prefix of it in the
  table. The prefixes of one path that match are prefixes of each other, so the longest one
  that matches already knows the first route in file order among all that match;
* a request consults the any-host table, its exact host's and those of the wildcards its
  host matches (usually one or two tables); the smallest index wins.

The tables a host consults are cached per host (bounded: hosts come from requests). A handful
of routes is scanned: below `SCAN_MAX` the scan is cheaper than any index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from splitproxy.dataplane.routing import CompiledRoute

SCAN_MAX: Final = 4  # routes up to which a linear scan is the cheaper lookup
HOST_CACHE: Final = 4096  # hosts whose tables are remembered (then the cache starts over)


class PrefixTable:
    """Path prefixes (with the route index that owns each) for a longest-prefix lookup."""

    __slots__ = ("best", "lengths")

    def __init__(self, entries: Iterable[tuple[str, int]]) -> None:
        first: dict[str, int] = {}
        for prefix, index in entries:
            if index < first.get(prefix, index + 1):
                first[prefix] = index
        lengths = sorted({len(p) for p in first})
        best: dict[str, int] = {}
        for prefix, index in first.items():
            for n in lengths:  # the shorter prefixes in the table that start this one
                if n >= len(prefix):
                    break
                shorter = first.get(prefix[:n])
                if shorter is not None and shorter < index:
                    index = shorter
            best[prefix] = index
        self.best = best
        self.lengths = tuple(reversed(lengths))

    def first(self, path: str) -> int:
        """The smallest route index whose prefix starts ``path``, or -1."""
        best = self.best
        size = len(path)
        for n in self.lengths:
            if n <= size:  # (a longer prefix cannot start the path)
                index = best.get(path[:n] if n < size else path)
                if index is not None:
                    return index
        return -1


_EMPTY: Final = PrefixTable(())


class RouteTable:
    """The routes of one config, indexed for `find` (same answer as a scan in file order)."""

    __slots__ = ("_any", "_by_host", "_exact", "_suffixes", "routes", "scan")

    def __init__(self, routes: tuple[CompiledRoute, ...]) -> None:
        self.routes = routes
        self.scan = len(routes) <= SCAN_MAX
        exact: dict[str, list[tuple[str, int]]] = {}
        suffixes: dict[str, list[tuple[str, int]]] = {}
        anywhere: list[tuple[str, int]] = []
        for i, route in enumerate(routes):
            entry = (route.path_prefix, i)
            if route.host is not None:
                exact.setdefault(route.host, []).append(entry)
            elif route.host_suffix is not None:
                suffixes.setdefault(route.host_suffix, []).append(entry)
            else:
                anywhere.append(entry)
        self._any = PrefixTable(anywhere) if anywhere else _EMPTY
        self._exact = {host: PrefixTable(entries) for host, entries in exact.items()}
        self._suffixes = {suffix: PrefixTable(entries) for suffix, entries in suffixes.items()}
        self._by_host: dict[str, tuple[PrefixTable, ...]] = {}

    def rebind(self, routes: tuple[CompiledRoute, ...]) -> RouteTable:
        """The same indexes over ``routes``: the compiled routes of the same config in the
        same order (only their weights or backends differ), so no index is built again: a
        weight change on a config of 10,000 routes costs a few attribute copies."""
        assert len(routes) == len(self.routes), "rebind needs the same config's routes"
        new = RouteTable.__new__(RouteTable)
        new.routes, new.scan = routes, self.scan
        new._any, new._exact, new._suffixes = self._any, self._exact, self._suffixes
        new._by_host = self._by_host  # derived from the indexes alone: shared
        return new

    def _tables(self, host: str) -> tuple[PrefixTable, ...]:
        tables = [self._any] if self._any is not _EMPTY else []
        mine = self._exact.get(host)
        if mine is not None:
            tables.append(mine)
        suffixes = self._suffixes
        if suffixes:
            dot = host.find(".")
            while dot >= 0:
                table = suffixes.get(host[dot:])
                if table is not None:
                    tables.append(table)
                dot = host.find(".", dot + 1)
        found = tuple(tables)
        cache = self._by_host
        if len(cache) >= HOST_CACHE:
            cache.clear()
        cache[host] = found
        return found

    def find(self, host: str, path: str) -> CompiledRoute | None:
        """The first route (in file order) that serves ``host`` (lower-cased, no port) and
        ``path``, or None."""
        if self.scan:
            for route in self.routes:
                if route.matches(host, path):
                    return route
            return None
        tables = self._by_host.get(host)
        if tables is None:
            tables = self._tables(host)
        if len(tables) == 1:
            index = tables[0].first(path)
        elif not tables:
            return None
        else:
            index = -1
            for table in tables:
                i = table.first(path)
                if i >= 0 and (index < 0 or i < index):
                    index = i
        return self.routes[index] if index >= 0 else None
