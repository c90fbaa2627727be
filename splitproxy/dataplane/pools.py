"""Keep-alive pools of upstream connections, one per upstream address.

An `UpstreamPool` hands out the most recently used idle connection (warm, and the one least
likely to have been closed by the upstream), closes idle ones before the upstream would
(``idle_timeout``), forgets any that the upstream closes while idle, and bounds how many
connections one address gets (``max_connections``: `PoolExhausted` past it). `PoolRegistry`
keeps one pool per address for every route that names it, and detaches the pools of
addresses a reload removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from splitproxy.dataplane.upstream import CLOSED, UpstreamConnection


class Clock(Protocol):
    """A coarse clock the pool and connections stamp activity with."""

    now: float


class PoolExhausted(Exception):
    """The upstream's connection limit is reached and no idle connection is free."""


class UpstreamPool:
    """Keep-alive connections to one upstream address."""

    def __init__(
        self,
        host: str,
        port: int,
        clock: Clock,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_connections: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._connecting = 0
        self.closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used live idle connection, or None."""
        idle = self._idle
        deadline = self.clock.now - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.state is CLOSED:  # (`conn.closed`, without the property's call)
                continue
            if conn.idle_since < deadline:
                conn.close()
                continue
            return conn
        return None

    def at_limit(self) -> bool:
        return 0 < self.max_connections <= len(self._open) + self._connecting

    async def connect(self) -> UpstreamConnection:
        """Open a new connection; raises OSError, TimeoutError or PoolExhausted."""
        if self.at_limit():
            raise PoolExhausted(f"{self.host}:{self.port}")
        loop = asyncio.get_running_loop()
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(factory, self.host, self.port)
        finally:
            self._connecting -= 1
        if self.closed:
            conn.close()
            raise ConnectionAbortedError("pool closed")
        self._open.add(conn)
        return conn

    def put_idle(self, conn: UpstreamConnection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.clock.now
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        # A connection the upstream closed while idle is skipped by take_idle (conn.closed).

    def sweep(self) -> None:
        """Close idle connections that have waited longer than ``idle_timeout``."""
        deadline = self.clock.now - self.idle_timeout
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.idle_since < deadline:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        """Close every connection: idle ones now, busy ones as they finish."""
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle = []

    def abort_all(self) -> None:
        self.close()
        for conn in list(self._open):
            conn.abort()

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.host}:{self.port} open={self.open_count} idle={self.idle_count}>"
        )


class PoolRegistry:
    """One pool per upstream address, shared by every route that names it."""

    def __init__(
        self,
        clock: Clock,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_connections: int = 0,
    ) -> None:
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.pools: dict[tuple[str, int], UpstreamPool] = {}

    def get(self, key: tuple[str, int]) -> UpstreamPool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                key[0],
                key[1],
                self.clock,
                connect_timeout=self.connect_timeout,
                idle_timeout=self.idle_timeout,
                max_connections=self.max_connections,
            )
        return pool

    def retain_only(self, keys: set[tuple[str, int]]) -> list[UpstreamPool]:
        """Detach pools whose address no route names any more; the caller closes them
        after a grace period so requests still using them can finish."""
        removed = [pool for key, pool in self.pools.items() if key not in keys]
        for pool in removed:
            del self.pools[(pool.host, pool.port)]
        return removed

    def sweep(self) -> None:
        for pool in self.pools.values():
            pool.sweep()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def abort_all(self) -> None:
        for pool in self.pools.values():
            pool.abort_all()
