#!/usr/bin/env python3
"""The Python ceiling of this benchmark: the least a Python proxy on uvloop and httptools does.

Benchmark only, not a proxy anyone should run: it trusts the upstream and the client, handles
only what the benchmark sends (GET, no request body, responses with a Content-Length), keeps no
bounds, and answers nothing but the upstream's bytes. Per request it does what any proxy in
front of two versions must: parse the request head (httptools), hash the sticky cookie
(BLAKE2b) to pick a version, count the request in a dict, forward the head to a pooled
keep-alive upstream connection, parse the response head (httptools) and relay head and body
to the client. What splitproxy does beyond this (framing it writes itself, limits, timeouts,
headers it adds and drops, metrics, the rollout's windows, the access log) is the difference
between this row and splitproxy's.

    ceiling.py --port 8081 --upstream 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
from collections import deque
from typing import cast

import httptools
import uvloop

COUNTS: dict[tuple[str, int], int] = {}


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; relays each response to its client."""

    def __init__(self, pool: deque[Upstream]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)  # the upstream's own framing, relayed as it comes
        self.parser.feed_data(data)
        if self.done:
            self.done = False
            self.client = None
            self.pool.append(self)

    def on_message_complete(self) -> None:
        self.done = True


class Client(asyncio.Protocol):
    """One client connection: one request at a time (wrk's keep-alive connections)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.pool: deque[Upstream] = deque()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.head: list[bytes] = []
        self.version = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.head = [b"GET ", url, b" HTTP/1.1\r\n"]

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"cookie":
            key = value.partition(b"=")[2]
            digest = hashlib.blake2b(key, digest_size=8).digest()
            self.version = int.from_bytes(digest, "big") % 10000 < 5000
        self.head += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        self.head.append(b"\r\n")
        key = ("bench", self.version)
        COUNTS[key] = COUNTS.get(key, 0) + 1
        if self.pool:
            self._send(self.pool.popleft())
        else:
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        _, upstream = await self.loop.create_connection(
            lambda: Upstream(self.pool), self.host, self.port
        )
        self._send(upstream)

    def _send(self, upstream: Upstream) -> None:
        upstream.client = self.transport
        assert upstream.transport is not None
        upstream.transport.writelines(self.head)


async def serve(port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    host, _, up_port = upstream.rpartition(":")
    server = await loop.create_server(
        lambda: Client(loop, host, int(up_port)), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port")
    a = ap.parse_args()
    uvloop.run(serve(a.port, a.upstream))


if __name__ == "__main__":
    main()
