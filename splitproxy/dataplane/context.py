"""What every client connection shares: the routing state, the pools, the observer, the clock.

`ProxyContext` is built once by the composition root (`server.py`). Besides holding the
settings, it picks the pool for a request's backend (round-robin over its URLs, counters that
follow the routing snapshot), tells whether a peer is a trusted proxy (whose ``X-Forwarded-*``
are extended rather than replaced), and runs the sweeper's pass (timeouts, pool trimming) and
the drain at shutdown. `ExchangeObserver` is what metrics and the access log implement.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from itertools import chain, count
from typing import TYPE_CHECKING, Final, Protocol

from splitproxy.config.vocabulary import FailureKind, Version
from splitproxy.dataplane.abgoals import AbBook
from splitproxy.dataplane.health import BackendHealth, HealthBook
from splitproxy.dataplane.pools import PoolRegistry, UpstreamPool
from splitproxy.dataplane.routing import BackendPlan, Target
from splitproxy.dataplane.state import BASE_WANTED_HEADERS, RuntimeState, Snapshot
from splitproxy.dataplane.synthetic import PROCESS_TOKEN

logger = logging.getLogger("splitproxy.dataplane.context")

# The answer to a connection over `max_connections`: no request is read, nothing is routed.
_OVER_CAPACITY: Final = (
    b'{"error": {"code": "too_many_connections", "message": "the proxy is at max_connections", '
    b'"request_id": "%s"}}\n'
)

if TYPE_CHECKING:
    from splitproxy.dataplane.client import ClientConnection
    from splitproxy.dataplane.exchange import Exchange
    from splitproxy.dataplane.mirror import Mirror


class ExchangeObserver(Protocol):
    """Receives every finished exchange (metrics, access log) and every failed attempt."""

    def exchange_started(self, ex: Exchange) -> None: ...
    def exchange_finished(self, ex: Exchange) -> None: ...
    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None: ...


class CoarseClock:
    """``time.monotonic()`` sampled by the sweeper: enough for timeouts and pool idleness.

    (uvloop's ``loop.time()`` has millisecond resolution, too coarse for latency.)"""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


# The last two hex digits of a count, padded: a count from 256 on is its ``n // 256`` in hex,
# then these (``%x`` of 256 * k + j is ``%x`` of k, then ``%02x`` of j)
_LOW: Final = tuple(b"%02x" % j for j in range(256))


class RequestIds:
    """Request ids unique per process start: a random prefix (or ``prefix``) and a count,
    ``<prefix>-<count in hex>``, from 1.

    ``next()`` is the ``__next__`` of a C-level iterator: the ids come in blocks of 256 that
    share all but their last two hex digits, each block a `map` that appends those digits
    to its start (made once per block), chained over an `itertools.count` of blocks. An id
    costs a bytes concatenation and no Python frame (a method formatting each cost ~2 k
    instructions a request)."""

    __slots__ = ("next",)

    def __init__(self, prefix: bytes | None = None) -> None:
        start = (os.urandom(6).hex().encode() if prefix is None else prefix) + b"-"

        def block(k: int) -> Iterator[bytes]:
            return map((start + b"%x" % k).__add__, _LOW)

        first = map(start.__add__, [b"%x" % j for j in range(1, 256)])  # (no padding)
        blocks = chain.from_iterable(map(block, count(1)))
        self.next: Callable[[], bytes] = chain(first, blocks).__next__


class ProxyContext:
    """What every connection shares. Built by the composition root (`server.py`)."""

    def __init__(
        self,
        state: RuntimeState,
        pools: PoolRegistry,
        observer: ExchangeObserver,
        clock: CoarseClock,
        *,
        header_timeout: float,
        body_timeout: float,
        read_timeout: float,
        client_idle_timeout: float,
        max_header_bytes: int,
        tunnel_idle_timeout: float = 300.0,
        max_connections: int = 0,
        max_headers: int,
        max_body_bytes: int,
        trusted_proxies: tuple[str, ...] = (),
        via: str = "1.1 splitproxy",
        rng: Callable[[int], int] | None = None,
        synthetic_token: str = PROCESS_TOKEN,
        monotonic: Callable[[], float] = time.monotonic,
        health: HealthBook | None = None,
        log: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.state = state
        self.pools = pools
        self.observer = observer
        # Also told of every finished exchange, after the observer: the access log's `log`.
        # (Called by the exchange itself: a fan-out object in between was one more Python
        # call per request.)
        self.log = log
        self.clock = clock
        # the precise clock of latencies (start, first byte, end); tests pass their own
        self.monotonic = monotonic
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.read_timeout = read_timeout
        self.client_idle_timeout = client_idle_timeout
        self.tunnel_idle_timeout = tunnel_idle_timeout
        self.max_connections = max_connections  # client connections at once; 0: no limit
        self.refused_connections = 0
        self.capacity_logged_at = float("-inf")
        self.fd_exhaustions = 0  # upstream connects refused by our own fd limit
        self.fds_logged_at = float("-inf")
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self.via_line = b"Via: " + via.encode("latin-1") + b"\r\n" if via else b""
        self.getrandbits = rng or random.getrandbits
        self.request_ids = RequestIds()
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.wanted_headers: frozenset[bytes] = BASE_WANTED_HEADERS
        self.synthetic_token = synthetic_token
        self.synthetic_token_bytes = synthetic_token.encode("latin-1")
        self._rr: dict[tuple[object, ...], int] = {}
        # which addresses may take traffic (health.py); the composition root shares its book
        self.health = health if health is not None else HealthBook()
        self.in_flight = 0
        self.mirror: Mirror | None = None  # copies to candidates; the composition root sets it
        self.ab = AbBook()  # A/B goals (abgoals.py); the composition root shares the recorder's

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: the headers its routes read, and the round-robin counters of
        the URL lists it still names. (Synthetic markers are read against the snapshot per
        request: see `synthetic.read_marker`; nothing per route is rebuilt here.)"""
        wanted = set(BASE_WANTED_HEADERS)
        for headers in {route.wanted_headers for route in new.routes}:
            wanted |= headers
        self.wanted_headers = frozenset(wanted)
        if self._rr:
            # round-robin counters only for the URL lists this snapshot still names (reloads
            # that keep changing multi-URL backends would otherwise grow the dict for ever)
            live = {
                plan.targets
                for route in new.routes
                for plan in (route.stable, route.candidate)
                if plan is not None and len(plan.targets) > 1
            }
            self._rr = {key: n for key, n in self._rr.items() if key in live}

    def pick_pool(
        self, plan: BackendPlan, health: BackendHealth | None = None, avoid: str = ""
    ) -> tuple[UpstreamPool, str]:
        """The pool for the next request to ``plan``: round-robin over its URLs that may take
        traffic (``health``), other than ``avoid`` (the address a replay just failed on);
        with none left, round-robin over them all (fail open: a clear 502 beats no try)."""
        targets = plan.targets
        if len(targets) == 1:
            target = targets[0]
        else:
            key = targets
            n = self._rr.get(key, 0)
            self._rr[key] = n + 1
            target = targets[n % len(targets)]
            if (health is not None and not health.all_available) or avoid:
                target = self._healthy_turn(targets, n, health, avoid) or target
        if health is not None and not health.clean:
            address = health.by_url.get(target.url)
            if address is not None and address.probing:
                self.health.take_trial(address)  # half-open: this request is its one try
        at = target.key
        pool = self.pools.pools.get(at)  # (`PoolRegistry.get`, inline: a known address)
        return pool if pool is not None else self.pools.get(at), target.url

    @staticmethod
    def _healthy_turn(
        targets: tuple[Target, ...], n: int, health: BackendHealth | None, avoid: str
    ) -> Target | None:
        """From turn ``n`` on, the first target that may take traffic, or None."""
        by_url = health.by_url if health is not None else {}
        count = len(targets)
        for i in range(count):
            target = targets[(n + i) % count]
            address = by_url.get(target.url)
            if target.url != avoid and (address is None or address.available):
                return target
        return None

    def is_trusted(self, peer: str) -> bool:
        """Is ``peer`` (an IP address) one of the trusted proxies?"""
        if not self.trusted or not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def sweep(self, now: float) -> None:
        """Called a few times a second: advance the clock, enforce timeouts, trim pools."""
        self.clock.now = now
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self.pools.sweep()

    def refuse_connection(self, transport: asyncio.Transport) -> None:
        """A client connection over `max_connections`: answered 503 and closed, no request
        read, nothing routed; counted, and logged at most once per 10 s."""
        self.refused_connections += 1
        now = self.clock.now
        if now - self.capacity_logged_at >= 10.0:
            self.capacity_logged_at = now
            logger.warning(
                "at max_connections (%d): refusing new client connections with 503 "
                "(%d so far); raise SPLITPROXY_MAX_CONNECTIONS or the fd limit",
                self.max_connections, self.refused_connections,
            )  # fmt: skip
        request_id = self.request_ids.next()
        body = _OVER_CAPACITY % request_id
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nX-Request-ID: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (request_id, len(body), body)
        )
        transport.close()

    def out_of_fds(self) -> None:
        """An upstream connect failed for lack of file descriptors (EMFILE/ENFILE): counted,
        and logged at most once per 10 s, never as the upstream's failure."""
        self.fd_exhaustions += 1
        now = self.clock.now
        if now - self.fds_logged_at >= 10.0:
            self.fds_logged_at = now
            logger.error(
                "out of file descriptors: %d upstream connects answered 503 so far; raise the "
                "open-file limit or lower SPLITPROXY_MAX_CONNECTIONS",
                self.fd_exhaustions,
            )

    def start_draining(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
