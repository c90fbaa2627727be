#!/usr/bin/env python3
"""How much cyclic garbage does serving leave? What `gc.freeze()` would leak, per connection.

A frozen object is never looked at by the collector again: if it later becomes part of a
reference cycle that nothing else holds, it is never freed. Freezing the heap after every
controller pass would freeze every connection alive at that instant; this measures what each
closed connection leaves to the collector. A `Server` (uvloop, as ``serve`` runs it) proxies to
an upstream in the same process; ``--requests`` requests go each on a new connection, then as
many on one keep-alive connection, directly to the upstream (the client's and the upstream's
own share) and through the proxy; the collector's ``collected`` counts (`gc.callbacks`) are
summed over each run and a final full collection. ``--types`` lists what the proxied run's
garbage is made of. Loopback only, ephemeral ports.

    .venv/bin/python benchmarks/cyclic_garbage.py --requests 2000 --types
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splitproxy.server import Server
from splitproxy.settings import Settings

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUEST = b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n"


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def fresh(port: int, n: int) -> None:
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await reader.readuntil(b"ok")
        writer.close()
        await writer.wait_closed()


async def keep_alive(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(REQUEST)
        await reader.readuntil(b"ok")
    writer.close()
    await writer.wait_closed()


async def freed(run: Callable[[], Awaitable[None]]) -> int:
    """Objects the collector freed (cyclic garbage) during ``run`` and a full collection after."""
    total = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal total
        if phase == "stop":
            total += info["collected"]

    gc.collect()
    gc.callbacks.append(count)
    try:
        await run()
        await asyncio.sleep(0.2)  # the server's side of the last connection closes
        gc.collect()
    finally:
        gc.callbacks.remove(count)
    return total


async def main(args: argparse.Namespace) -> None:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    routes = {
        "routes": [
            {
                "name": "app",
                "stable": f"http://127.0.0.1:{up_port}",
                "candidate": {"url": f"http://127.0.0.1:{up_port}", "revision": "v2"},
                "weight": 50,
            }
        ]
    }
    path = Path(tempfile.mkdtemp()) / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    settings = Settings(
        listen="127.0.0.1:0", admin="127.0.0.1:0", config=path, access_log=False, drain_timeout=1
    )
    server = Server(settings)
    await server.start()
    port = server.listen_port
    n = args.requests
    try:
        await fresh(port, 100)  # warm: pools, caches, first-use objects
        await keep_alive(port, 100)
        for name, target in (("direct to the upstream", up_port), ("through the proxy", port)):
            new = await freed(lambda t=target: fresh(t, n))  # type: ignore[misc]
            kept = await freed(lambda t=target: keep_alive(t, n))  # type: ignore[misc]
            print(
                f"{name}: {new} cyclic objects per {n} new connections "
                f"({new / n:.1f} each), {kept} per {n} requests on one keep-alive connection"
            )
        if args.types:
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            await fresh(port, 200)
            await asyncio.sleep(0.2)
            gc.collect()
            kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
            gc.set_debug(0)
            gc.garbage.clear()
            print("200 proxied connections' garbage:", dict(kinds.most_common(12)))
    finally:
        await server.shutdown()
        up.close()
        await up.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--types", action="store_true", help="what the garbage is made of")
    arguments = parser.parse_args()
    if not 1 <= arguments.requests <= 100_000:
        parser.error("keep it bounded: 1 <= requests <= 100,000")
    uvloop.run(main(arguments))
