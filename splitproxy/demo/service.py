"""A small demo service that names its version in every answer (the demo's two upstreams).

Run one with ``python -m splitproxy.demo.service --version stable --port 8001``. Besides the
JSON greeting on every path, ``/healthz`` answers 200, and ``--error-rate`` / ``--delay-ms``
make a faulty version for rollback demonstrations. In process, `Faults` can be changed while
the service runs (a version that breaks only once real users reach it).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Faults:
    """What goes wrong with a version: ``error_rate`` of its answers are 500s (0..1), each
    answer waits ``delay_ms`` first. Mutable: a change applies from the next request on."""

    error_rate: float = 0.0
    delay_ms: float = 0.0


VERSION: web.AppKey[str] = web.AppKey("version", str)
FAULTS: web.AppKey[Faults] = web.AppKey("faults", Faults)


async def _greet(request: web.Request) -> web.Response:
    version = request.app[VERSION]
    faults = request.app[FAULTS]
    error_rate, delay_ms = faults.error_rate, faults.delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    if error_rate and random.random() < error_rate:
        return web.json_response({"version": version, "error": "injected failure"}, status=500)
    return web.json_response(
        {
            "version": version,
            "path": request.path,
            "request_id": request.headers.get("X-Request-ID"),
        },
        headers={"X-Served-By": version},
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": request.app[VERSION]})


def create_app(
    version: str, error_rate: float = 0.0, delay_ms: float = 0.0, faults: Faults | None = None
) -> web.Application:
    """The demo service as an aiohttp application; ``faults``, when given, is the one it
    reads on every request (``error_rate`` and ``delay_ms`` are then ignored), for the caller
    to change while it runs."""
    app = web.Application()
    app[VERSION] = version
    app[FAULTS] = faults if faults is not None else Faults(error_rate, delay_ms)
    app.router.add_get("/healthz", _healthz)
    app.router.add_route("*", "/{tail:.*}", _greet)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitproxy.demo.service")
    parser.add_argument(
        "--version", dest="version_name", default="stable", help="name to answer with"
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 500 answers, 0..1")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added latency per request")
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.version_name, args.error_rate, args.delay_ms),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
