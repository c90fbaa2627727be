"""Synthetic traffic: requests the proxy sends to a route while its rollout is analysed.

A `SyntheticTraffic` is an open-loop client: it sends ``spec.rate`` requests per second on a
fixed schedule, whether or not earlier ones have been answered, so a slow candidate does not
slow the traffic that measures it. It goes through the proxy's own listener (loopback), so
each request takes the real data path (routing, pools, retries, metrics, access log), to the
``spec.paths`` in turn, with ``spec.method``, ``spec.headers`` and ``spec.body``, each marked
with ``X-Splitproxy-Synthetic`` (``synthetic.py``): the proxy then sends it to the route and
``spec.target`` the marker names, whatever its Host and path would match, and counts it
apart.

Bounds: at most ``spec.concurrency`` requests in flight (a send due while that many are
waiting is skipped and counted in `SyntheticTraffic.skipped`), each at most ``spec.timeout``;
after a stall of the event loop longer than a second the missed sends are skipped rather
than fired at once; and nothing runs outside ``start()`` ... ``await stop()``, which the
caller (``controller.py``) ties to the rollout's phase: `TRAFFIC_PHASES`. `SyntheticTraffics`
does that bookkeeping for every route.

Each request's response body is read to its end (the proxy records an exchange when its
response ends) and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Final

import aiohttp
from yarl import URL

from splitproxy import __version__
from splitproxy.config import Traffic
from splitproxy.dataplane.synthetic import HEADER, PROCESS_TOKEN, marker
from splitproxy.views import SyntheticGeneratorView

logger = logging.getLogger("splitproxy.rollout.traffic")

# The rollout phases during which a route's synthetic traffic runs: while its steps are being
# judged or wait on a gate. Not while paused (by a human, or an incident on stable), and not
# once the rollout is over.
TRAFFIC_PHASES: Final = frozenset({"progressing", "waiting"})
_MAX_LAG: Final = 1.0  # seconds behind schedule after which missed sends are skipped
_CHUNK: Final = 64 * 1024


def loopback_url(host: str, port: int) -> str:
    """The base URL to reach a proxy listening on ``host:port`` from this process: a
    wildcard address becomes loopback (``0.0.0.0`` -> ``127.0.0.1``, ``::`` -> ``[::1]``)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def route_host(match_host: str | None) -> str | None:
    """The Host header for synthetic requests to a route with ``match.host``: the host itself,
    ``synthetic.example.com`` for ``*.example.com``, None (the listener's) without one."""
    if match_host is None:
        return None
    if match_host.startswith("*."):
        return "synthetic" + match_host[1:]
    return match_host


class SyntheticTraffic:
    """One route's synthetic traffic; see the module docstring.

    ``SyntheticTraffic(session, base_url, route_name, spec)``, then ``start()`` (in a running
    event loop) and ``await stop()``. ``host`` is the Host header to send (see `route_host`)
    unless ``spec.headers`` names one. Counters: `sent` (requests started), `statuses`
    (answers by status code), `failed` (no answer, or a 5xx), `cancelled` (cut by `stop`),
    `skipped` (due but not sent: the concurrency bound, or a stall), `last_error` (the latest
    failure, for status). ``sent == answered + failed-without-answer + cancelled + in_flight``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        route_name: str,
        spec: Traffic,
        *,
        host: str | None = None,
        token: str = PROCESS_TOKEN,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.route_name = route_name
        self.spec = spec
        self.host = host
        headers = {
            "User-Agent": f"splitproxy-synthetic/{__version__}",
            "Accept-Encoding": "identity",
        }
        if host is not None:
            headers["Host"] = host
        for name, value in spec.headers.items():  # the file's headers win, case-insensitively
            for known in [k for k in headers if k.lower() == name.lower()]:
                del headers[known]
            headers[name] = value
        headers[HEADER] = marker(route_name, spec.target, token)
        self._headers = headers
        self._urls = [URL(self.base_url + path, encoded=True) for path in spec.paths]
        self._body = spec.body.encode() if spec.body is not None else None
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._next_path = 0
        self.sent = 0
        self.failed = 0
        self.cancelled = 0
        self.skipped = 0
        self.statuses: dict[int, int] = {}
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        """Start sending (idempotent). Needs a running event loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"synthetic-traffic:{self.route_name}"
            )

    async def stop(self) -> None:
        """Stop sending, cancel the requests in flight and wait for them (idempotent)."""
        pending = self.halt()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def halt(self) -> list[asyncio.Task[None]]:
        """Stop sending and cancel the requests in flight, without waiting (for a caller that
        cannot await): nothing more is sent. Returns the cancelled tasks, to await later."""
        pending = list(self._in_flight)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            pending.append(task)
        for t in self._in_flight:
            t.cancel()
        return pending

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        now = self._clock or loop.time
        interval = 1.0 / self.spec.rate
        due = now()
        while True:
            t = now()
            if due > t:
                await asyncio.sleep(due - t)
                t = now()
            if t - due > _MAX_LAG:  # the loop stalled: do not fire the backlog at once
                missed = int((t - due) / interval)
                self.skipped += missed
                due += missed * interval
            while due <= t:
                self._send()
                due += interval

    def _send(self) -> None:
        if len(self._in_flight) >= self.spec.concurrency:
            self.skipped += 1
            return
        url = self._urls[self._next_path]
        self._next_path = (self._next_path + 1) % len(self._urls)
        task = asyncio.get_running_loop().create_task(self._one(url))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _one(self, url: URL) -> None:
        self.sent += 1  # here, not when scheduled: one cancelled before it ran was never sent
        try:
            async with self.session.request(
                self.spec.method,
                url,
                headers=self._headers,
                data=self._body,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                async for _ in resp.content.iter_chunked(_CHUNK):
                    pass
                status = resp.status
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.debug("synthetic request to %s failed: %s", url, self.last_error)
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.failed += 1
            self.last_error = f"HTTP {status}"

    def status(self) -> SyntheticGeneratorView:
        """JSON for status: the spec's rate and target, and the counters."""
        return {
            "running": self.running,
            "rate": self.spec.rate,
            "target": self.spec.target,
            "judge": self.spec.judge,
            "sent": self.sent,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "skipped": self.skipped,
            "in_flight": self.in_flight,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        return (
            f"<SyntheticTraffic {self.route_name} {self.spec.rate:g}/s -> {self.spec.target} "
            f"sent={self.sent} failed={self.failed}>"
        )


class SyntheticTraffics:
    """Every route's synthetic traffic, kept in line with the rollouts' phases.

    ``controller.py`` calls ``traffics.update(route, spec, phase, host=...)`` on every tick (a
    plain call, in the event loop; ``spec`` is ``route.rollout.traffic`` or None): the route's
    traffic runs while ``phase`` is in `TRAFFIC_PHASES` and a spec is given, restarts when the
    spec (or host) changes, and stops at once otherwise. Nothing runs while `base_url` is None
    (set it once the proxy listens). `retain` stops the routes a reload removed; ``await
    close()`` stops everything and waits for the cancelled requests (at shutdown). `status`
    gives a route's counters, of the running traffic or of its last run.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str | None = None,
        *,
        token: str = PROCESS_TOKEN,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.token = token
        self._running: dict[str, SyntheticTraffic] = {}
        self._stopped: dict[str, SyntheticTraffic] = {}  # each route's last run, for status
        self._stopping: set[asyncio.Task[None]] = set()

    def get(self, route: str) -> SyntheticTraffic | None:
        """``route``'s running traffic, if any."""
        return self._running.get(route)

    def status(self, route: str) -> SyntheticGeneratorView | None:
        """`SyntheticTraffic.status` of ``route``'s running traffic or, when none runs, of
        its last run (``running: false``); None when it never ran (or was discarded)."""
        traffic = self._running.get(route) or self._stopped.get(route)
        return traffic.status() if traffic is not None else None

    def update(
        self, route: str, spec: Traffic | None, phase: str, *, host: str | None = None
    ) -> SyntheticTraffic | None:
        """Start, keep, restart or stop ``route``'s traffic; the one running after, or None."""
        current = self._running.get(route)
        base_url = self.base_url
        wanted = spec is not None and phase in TRAFFIC_PHASES and base_url is not None
        if current is not None and (
            not wanted
            or current.spec != spec
            or current.host != host
            or current.base_url != (base_url or "").rstrip("/")
        ):
            self.forget(route)
            current = None
        if spec is None or base_url is None or not wanted:
            return None
        if current is None:
            current = self._running[route] = SyntheticTraffic(
                self.session, base_url, route, spec, host=host, token=self.token
            )
            current.start()
        return current

    def forget(self, route: str, *, discard: bool = False) -> None:
        """Stop ``route``'s traffic now (its cancelled requests end in the background); its
        counters stay for `status` unless ``discard``."""
        traffic = self._running.pop(route, None)
        if discard:
            self._stopped.pop(route, None)
        elif traffic is not None:
            self._stopped[route] = traffic
        if traffic is not None:
            for task in traffic.halt():
                if not task.done():
                    self._stopping.add(task)
                    task.add_done_callback(self._stopping.discard)

    def retain(self, routes: Iterable[str]) -> None:
        """Stop the traffic of every route not named."""
        keep = set(routes)
        for name in [n for n in {*self._running, *self._stopped} if n not in keep]:
            self.forget(name, discard=True)

    async def close(self) -> None:
        for name in list(self._running):
            self.forget(name)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


__all__ = [
    "TRAFFIC_PHASES",
    "SyntheticTraffic",
    "SyntheticTraffics",
    "loopback_url",
    "route_host",
]
