"""The hot functions' units of work, for ``instructions.py`` (callgrind) and ``timeit``.

Each factory builds its inputs once and returns a function that does one unit of work:
``access_log(fmt)`` logs 16 finished exchanges and writes them (one event-loop pass of a
loaded proxy); ``access_log_pass(fmt)`` the same as the data path drives it, in a loop pass;
``access_log_sparse(fmt)`` one exchange per loop pass (below saturation), logged to a descriptor;
``recorder()`` counts one exchange (started and finished: the series, the duration
histograms, the live window, its path class and latency sketch) as metrics and the rollout's
windows do for every request; ``lookup(n)`` picks the route of one request among ``n`` routes;
``sticky_choice()`` routes a returning user of a sticky route at 50 % (the benchmark's
request); ``nginx_response_head()`` builds the client's head from nginx's response head.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import yaml

from splitproxy.config import parse_routing
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.heads import response_head
from splitproxy.dataplane.routing import Decision, choose, find_route
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.logs import AccessLog
from splitproxy.metrics import Recorder


class NullStream:
    """A stream that takes text and keeps none of it (no file descriptor: written inline)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


# the benchmark's route: stable and candidate at weight 50 (sticky: a returning user's cookie)
SHOP: dict[str, Any] = {
    "name": "shop",
    "stable": "http://127.0.0.1:28080",
    "candidate": {"url": "http://127.0.0.1:28080", "revision": "b"},
    "weight": 50,
}
STICKY_SHOP: dict[str, Any] = {**SHOP, "sticky": {"cookie": "splitproxy_id"}}


def state_of(routes: list[dict[str, Any]]) -> RuntimeState:
    text = yaml.safe_dump({"revision": "r7", "routes": routes}, sort_keys=False)
    state = RuntimeState()
    state.load(parse_routing(text), content_hash(text), 1_700_000_000.0)
    return state


def finished_exchange(state: RuntimeState) -> Exchange:
    """A request to the candidate of route ``shop``, answered 200, as the data path leaves it."""
    conn = cast(ClientConnection, SimpleNamespace(ctx=None, peer_ip="127.0.0.1", preview=False))
    ex = Exchange(conn)
    snapshot = state.snapshot
    assert snapshot is not None
    ex.snapshot = snapshot
    ex.method, ex.target, ex.request_id = b"GET", b"/1k", b"5f0c2a91e3b4-1a"
    ex.route = snapshot.route("shop")
    ex.decision = Decision("candidate", "sticky")
    ex.version, ex.upstream_url = "candidate", "http://127.0.0.1:28080"
    ex.status = ex.upstream_status = 200
    ex.duration, ex.upstream_duration, ex.bytes_out = 0.000912, 0.000601, 1024
    return ex


def access_log(fmt: str) -> Callable[[], None]:
    ex = finished_exchange(state_of([SHOP]))
    log = AccessLog(fmt, cast(Any, NullStream()))

    def run() -> None:
        # what `AccessLog.log` keeps per request, then the pass's flush (without a running
        # loop, `log` itself would write each line at once)
        pending = log._pending
        for _ in range(16):
            pending.append(log._capture(ex))
        log.flush()

    return run


class NullRecorder:
    """A recorder that counts nothing: what is left is the access log's share."""

    def exchange_started(self, ex: Exchange) -> None:
        pass

    def exchange_finished(self, ex: Exchange) -> None:
        pass

    def attempt_failed(self, ex: Exchange, version: str, kind: str) -> None:
        pass


def access_log_pass(fmt: str) -> Callable[[], None]:
    """One event-loop pass of a loaded proxy with the access log on, as the data path drives
    it: 16 exchanges finish (the recorder, then the log keeps each one's fields; through
    `Observers`, one call more per exchange than the data path's own `ProxyContext.log`),
    then the loop runs the pass's flush (formatting, the hand-over to the writer). asyncio's
    own loop stands in for uvloop (it can run one pass: ``_run_once``)."""
    import asyncio

    from splitproxy.logs import Observers

    ex = finished_exchange(state_of([SHOP]))
    observers = Observers(cast(Any, NullRecorder()), AccessLog(fmt, cast(Any, NullStream())))
    loop = asyncio.new_event_loop()
    asyncio.events._set_running_loop(loop)  # as if the data path ran in it
    finished = observers.exchange_finished
    run_once = cast(Any, loop)._run_once

    def run() -> None:
        for _ in range(16):
            finished(ex)
        run_once()

    return run


def access_log_sparse(fmt: str) -> Callable[[], None]:
    """A proxy below saturation: each event-loop pass finishes one exchange, and the access
    log writes to a descriptor (``/dev/null``, through its writer thread), as ``serve`` does.
    A pass is one iteration of a uvloop loop (``run_forever`` until a ``stop`` called soon),
    with a callback for the pass's I/O; ``fmt="off"``: the pass without the log."""
    import os

    import uvloop

    from splitproxy.logs import Observers

    ex = finished_exchange(state_of([SHOP]))
    stream = open(os.devnull, "w")  # noqa: SIM115 (open while the benchmark runs)
    log = AccessLog(fmt, stream) if fmt != "off" else None
    observers = Observers(cast(Any, NullRecorder()), log)
    loop = uvloop.new_event_loop()
    finished = observers.exchange_finished
    call_soon, stop, run_forever = loop.call_soon, loop.stop, loop.run_forever

    def io() -> None:
        finished(ex)  # (in the loop: the log schedules its hand-over on it)

    def run() -> None:
        call_soon(io)
        call_soon(stop)
        run_forever()

    return run


def recorder(varied: bool = False) -> Callable[[], None]:
    """What the recorder does per request of the benchmark (a returning user of a sticky
    route at 50 %, answered 200 by the candidate), started and finished. ``varied``: each
    request takes its own time (a fixed cycle of 1,009 lognormal durations around 1 ms, 2/3
    within 0.6-1.6 ms, and a time to first byte 2/3 of it), so consecutive latencies fall into
    different sketch bins, as a live proxy's do; otherwise every request takes 0.912 ms."""
    rng = random.Random(17)
    cycle = [rng.lognormvariate(math.log(0.001), 0.5) for _ in range(1009)]
    state = state_of([STICKY_SHOP])
    now = [1_700_000_000.0]
    rec = Recorder(state, clock=lambda: now[0])
    state.subscribe(rec.on_swap)
    assert state.snapshot is not None
    rec.on_swap(None, state.snapshot)
    ex = finished_exchange(state)
    ex.decision = Decision("candidate", "sticky", unit=0x5DEECE66D)
    ex.path, ex.ttfb = "/1k", 0.000588
    started, finished = rec.exchange_started, rec.exchange_finished

    turn = [0]

    def run() -> None:
        now[0] += 0.0001  # 10,000 requests a second: a new window bucket every 10,000 calls
        if varied:
            i = turn[0] = (turn[0] + 1) % len(cycle)
            ex.duration = cycle[i]
            ex.ttfb = cycle[i] * 0.66
        started(ex)
        finished(ex)

    return run


def route_table(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` routes as a big site has them: exact hosts, wildcards, path prefixes."""
    rng = random.Random(seed)
    routes: list[dict[str, Any]] = []
    for i in range(n - 1):
        kind = rng.random()
        match: dict[str, str] = {}
        if kind < 0.6:
            match["host"] = f"svc{i}.example.com"
        elif kind < 0.7:
            match["host"] = f"*.tenant{i}.example.com"
        if kind > 0.4:
            match["path_prefix"] = f"/api/v{i % 7}/svc{i}"
        routes.append({"name": f"r{i}", "match": match, "stable": "http://127.0.0.1:28080"})
    # the route the benchmark's requests take: the last one, after every other
    routes.append({"name": "bench", "stable": "http://127.0.0.1:28080"})
    return routes


def lookup(n: int) -> Callable[[], object]:
    snapshot = state_of(route_table(n)).snapshot
    assert snapshot is not None
    routes = snapshot.routes

    def run() -> object:
        return find_route(routes, "127.0.0.1", "/1k")

    return run


def sticky_choice() -> Callable[[], object]:
    snapshot = state_of([STICKY_SHOP]).snapshot
    assert snapshot is not None
    compiled = snapshot.route("shop")
    assert compiled is not None
    headers = {b"host": b"127.0.0.1:29181", b"cookie": b"splitproxy_id=bench-user-1"}

    def run() -> object:
        return choose(compiled, headers, 0x5DEECE66D)

    return run


# what the benchmark's upstream (nginx) answers to GET /1k
NGINX_HEADERS = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 18:00:00 GMT"),
    (b"Content-Type", b"application/octet-stream"),
    (b"Content-Length", b"1024"),
    (b"Last-Modified", b"Sun, 06 Dec 2026 17:00:00 GMT"),
    (b"Connection", b"keep-alive"),
    (b"ETag", b'"6750e1a0-400"'),
    (b"Accept-Ranges", b"bytes"),
]


def nginx_response_head() -> Callable[[], object]:
    def run() -> object:
        return response_head(
            200, b"OK", NGINX_HEADERS, request_id=b"5f0c2a91e3b4-1a", http11=True,
            no_body=False, closing=False, upgrade=None,
        )  # fmt: skip

    return run
