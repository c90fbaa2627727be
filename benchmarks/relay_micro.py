"""One request relayed through the data path in-process, for ``instructions.py`` (callgrind).

`relay(size)` builds what `profile_proxy.py` drives over sockets, minus the sockets, the event
loop's IO and the observers: a `ProxyContext` with the benchmark's route (sticky cookie, a
candidate at 50 %), one keep-alive client connection and a pooled upstream connection per
version, on transports that only count what is written. Each call sends the benchmark's
request and answers it with nginx's response head and a ``size``-byte body (one read for
1 KB; 64 KB arrives in the reads nginx's writes make on loopback: 16 KB each here; each read
goes through the upstream protocol's buffer, as uvloop reads it: `feed`), so the
count is the data path's own Python work per exchange: parsing, routing, both heads, the
relay and the return to the pool. The heap is frozen after set-up, as the server's is. The
observer does nothing (metrics and the access log are
counted apart, by `profile_proxy.py`).

    .venv/bin/python benchmarks/instructions.py -n 20000 \\
        --setup 'from benchmarks.relay_micro import relay; run = relay(1024)' --stmt 'run()'
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import yaml

from splitproxy.config import parse_routing
from splitproxy.config.vocabulary import FailureKind, Version
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.context import CoarseClock, ProxyContext
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.pools import PoolRegistry
from splitproxy.dataplane.state import RuntimeState, content_hash
from splitproxy.dataplane.upstream import UpstreamConnection

UPSTREAM = "127.0.0.1:30200"
# configs.py's route and cookie (not imported: the benchmarks import it as a top-level module
# and mypy would see the file twice)
COOKIE_HEADER = "Cookie: splitproxy_id=bench-user-1"
ROUTES_YAML = """\
routes:
  - name: bench
    stable: http://{upstream}
    candidate: {{url: http://{upstream}, revision: "b"}}
    weight: 50
    sticky: {{cookie: splitproxy_id}}
    rollout: {{steps: [50], interval: 1h, min_requests: 100000000}}
"""


# configs.BROWSER_HEADERS as lines (copied for the same reason)
BROWSER_LINES = (
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
)


class CountingTransport:
    """A transport that keeps only the number of bytes written."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class NullObserver:
    def exchange_started(self, ex: Exchange) -> None:
        pass

    def exchange_finished(self, ex: Exchange) -> None:
        pass

    def attempt_failed(self, ex: Exchange, version: Version, kind: FailureKind) -> None:
        pass


def response(size: int) -> bytes:
    """nginx's answer to ``GET /1k`` (and kin) as it arrives, head and body."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 18:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Last-Modified: Sun, 06 Dec 2026 17:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "6750e1a0-400"\r\nAccept-Ranges: bytes\r\n\r\n' % size
    ) + b"x" * size


def feed(up: UpstreamConnection, data: bytes) -> None:
    """One read as the loop makes it: into the protocol's buffer (`get_buffer`), then
    `buffer_updated` (the copy stands for the kernel's, which a socket read makes anyway)."""
    buf = up.get_buffer(-1)
    buf[: len(data)] = data
    up.buffer_updated(len(data))


def relay(
    size: int,
    read: int = 16 * 1024,
    unique: bool = False,
    browser: bool = False,
    new_heads: bool = False,
) -> Callable[[], None]:
    """A function that relays one request and its ``size``-byte response (reads of ``read``).
    ``unique``: every response head differs from all before it (an ``X-Seq`` header counts),
    as an upstream's that echo each request's id do: no head is ever seen twice. ``browser``:
    the request carries a browser's 15 headers (`BROWSER_LINES`), not two. ``new_heads``:
    every request head differs from all before it (a header counts), as if each came from a
    new client: none is ever seen twice."""
    routes = ROUTES_YAML.format(upstream=UPSTREAM)
    state = RuntimeState()
    clock = CoarseClock(1000.0)
    pools = PoolRegistry(clock, connect_timeout=1.0, idle_timeout=60.0)
    ctx = ProxyContext(
        state, pools, NullObserver(), clock,
        header_timeout=10.0, body_timeout=60.0, read_timeout=60.0, client_idle_timeout=75.0,
        max_header_bytes=32 * 1024, max_headers=100, max_body_bytes=0,
    )  # fmt: skip
    state.subscribe(ctx.on_swap)
    state.load(parse_routing(yaml.safe_dump(yaml.safe_load(routes))), content_hash(routes), 1000.0)
    host, port = UPSTREAM.split(":")
    pool = pools.get((host, int(port)))
    ups = []
    for _ in range(2):  # (both versions name the same address: one pool)
        up = UpstreamConnection(pool)
        up.connection_made(CountingTransport())  # type: ignore[arg-type]
        pool._open.add(up)
        pool.put_idle(up)
        ups.append(up)

    async def make() -> ClientConnection:
        conn = ClientConnection(ctx)
        conn.connection_made(CountingTransport())  # type: ignore[arg-type]
        return conn

    client = asyncio.new_event_loop().run_until_complete(make())
    request = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:30201\r\n%s%s\r\n\r\n" % (
        b"1k" if size == 1024 else b"%dk" % (size // 1024),
        BROWSER_LINES if browser else b"",
        COOKIE_HEADER.encode(),
    )

    def split(whole: bytes) -> list[bytes]:
        head_end = whole.index(b"\r\n\r\n") + 4
        reads = [whole[: head_end + min(size, read - head_end)]]
        at = len(reads[0])
        while at < len(whole):
            reads.append(whole[at : at + read])
            at += read
        return reads

    whole = response(size)
    reads = split(whole)
    seq = [0]

    def run() -> None:
        if new_heads:
            seq[0] += 1
            client.data_received(request[:-2] + b"X-Client: %d\r\n\r\n" % seq[0])
        else:
            client.data_received(request)
        ex = client.current
        up = ex.up if ex is not None else None
        assert up is not None, "the request did not reach an upstream"
        if unique:
            seq[0] += 1
            first = b"HTTP/1.1 200 OK\r\nX-Seq: %d\r\n" % seq[0] + reads[0][17:]
            feed(up, first)
            for data in reads[1:]:
                feed(up, data)
        else:
            for data in reads:
                feed(up, data)
        assert client.current is None, "the response did not complete"

    run()
    # as the server does after loading its config (`reload.settle_heap`): without it a full
    # collection walking the set-up's objects lands on some runs and not others
    gc.freeze()
    return run
