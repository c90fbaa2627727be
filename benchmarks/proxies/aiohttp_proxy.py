#!/usr/bin/env python3
"""Minimal aiohttp reverse proxy: the "plain aiohttp" baseline for splitproxy.

usage: aiohttp_proxy.py --port 18081 --upstream 127.0.0.1:18080 [--loop uvloop|asyncio]
One shared ClientSession (keep-alive pool, no limit, no decompression), body streamed
through a StreamResponse; one process.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    base = "http://" + upstream
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=120),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        )
        yield
        await app[SESSION].close()

    async def handler(req: web.Request) -> web.StreamResponse:
        hdrs = [(k, v) for k, v in req.headers.items() if k.lower() not in HOP]
        resp = None
        try:
            async with app[SESSION].request(
                req.method,
                URL(base + req.raw_path, encoded=True),
                headers=hdrs,
                allow_redirects=False,
                data=req.content if req.body_exists else None,
            ) as up:
                resp = web.StreamResponse(
                    status=up.status,
                    reason=up.reason,
                    headers=[(k, v) for k, v in up.headers.items() if k.lower() not in HOP],
                )
                await resp.prepare(req)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError) as e:
            if resp is not None and resp.prepared:
                raise  # headers already sent: drop the connection
            return web.Response(status=502, text=f"bad gateway: {type(e).__name__}\n")

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args.upstream), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=4096).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="host:port")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
