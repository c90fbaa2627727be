"""Headers through the proxy: hop-by-hop rules, X-Forwarded-*, Via, X-Request-ID, cookies,
and the request target byte for byte."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import StartProxy
from tests.helpers import route
from tests.integration.proxy_support import (
    Seen,
    connect,
    exchange,
    get,
    raw_upstream,
    read_request,
    read_response,
    recording_app,
)

HOP_BY_HOP_REQUEST = (
    "Connection: keep-alive, X-Hop-One, x-hop-two\r\n"
    "Keep-Alive: timeout=5\r\n"
    "TE: trailers\r\n"
    "Upgrade: h2c\r\n"
    "Proxy-Authorization: Basic c2VjcmV0\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "Trailer: X-Checksum\r\n"
    "X-Hop-One: 1\r\n"
    "X-Hop-Two: 2\r\n"
    "X-End-To-End: kept\r\n"
    "Authorization: Bearer abc\r\n"
    "Accept: text/plain\r\n"
    "Cache-Control: no-cache\r\n"
)
STRIPPED = {
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "trailer",
    "x-hop-one",
    "x-hop-two",
    "proxy-authenticate",
}


async def test_hop_by_hop_request_headers_are_stripped(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(proxy.listen_port, get("/h", extra=HOP_BY_HOP_REQUEST))
    assert resp.status == 200
    (req,) = seen
    names = req.names()
    assert not names & STRIPPED, names & STRIPPED
    # the proxy's own framing and Connection handling only
    assert req.all("connection") in ([], ["keep-alive"])
    assert "transfer-encoding" not in names
    assert req.header("X-End-To-End") == "kept"
    assert req.header("Authorization") == "Bearer abc"
    assert req.header("Accept") == "text/plain"
    assert req.header("Cache-Control") == "no-cache"
    assert req.header("Host") == "app.test"


async def test_hop_by_hop_response_headers_are_stripped(
    start_proxy: StartProxy,
) -> None:
    body = b"hello"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                b"Connection: keep-alive, X-Hop-Resp\r\n"
                b"Keep-Alive: timeout=30\r\n"
                b"X-Hop-Resp: secret\r\n"
                b"Proxy-Authenticate: Basic realm=x\r\n"
                b"Proxy-Connection: keep-alive\r\n"
                b"Trailer: X-Sum\r\n"
                b"Upgrade: h2c\r\n"
                b"TE: trailers\r\n"
                b"X-End-To-End: kept\r\n"
                b"Cache-Control: max-age=60\r\n"
                b"Content-Length: 5\r\n\r\n" + body
            )

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(2):
                writer.write(get())
                resp = await read_response(reader)
                assert resp.status == 200
                assert resp.body == body
                names = resp.names()
                assert not names & STRIPPED, names & STRIPPED
                assert "x-hop-resp" not in names
                assert resp.all("connection") == []
                assert resp.header("X-End-To-End") == "kept"
                assert resp.header("Cache-Control") == "max-age=60"
                assert resp.header("Content-Length") == "5"
        assert up.accepted == 1


async def test_chunked_response_trailers_do_not_leak_into_the_next_response(
    start_proxy: StartProxy,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            await read_request(reader)
            n += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Sum: %d\r\n\r\n" % n
            )

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        async with connect(proxy.listen_port) as (reader, writer):
            for _ in range(3):
                writer.write(get())
                resp = await asyncio.wait_for(read_response(reader), 5)
                assert resp.status == 200
                assert resp.body == b"abc"
                assert "x-sum" not in resp.names()
        assert up.accepted == 1


async def test_repeated_set_cookie_headers_are_kept(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        resp.headers.add("Set-Cookie", "c=3, with comma; Path=/")
        resp.headers.add("X-Multi", "one")
        resp.headers.add("X-Multi", "two")
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    up = await aiohttp_server(app)
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(proxy.listen_port, get("/"))
    assert resp.all("Set-Cookie") == [
        "a=1; Path=/",
        "b=2; Path=/; HttpOnly",
        "c=3, with comma; Path=/",
    ]
    assert resp.all("X-Multi") == ["one", "two"]


async def test_cookie_and_repeated_request_headers_pass_verbatim(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    extra = "Cookie: a=1; b=2\r\nCookie: c=3\r\nX-Multi: one\r\nX-Multi: two\r\n"
    resp = await exchange(proxy.listen_port, get("/", extra=extra))
    assert resp.status == 200
    assert seen[0].all("Cookie") == ["a=1; b=2", "c=3"]
    assert seen[0].all("X-Multi") == ["one", "two"]


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/%7Euser?x=%3A&y='",
        "/p%20q/%2e%2E/r?q=a+b&q=%2B&empty=&=x#",
        "//double//slash/?",
        "/unicode/%C3%BC%E2%82%AC?k=%E2%9C%93",
        "/brackets/[x]/{y}/|?a[]=1&b={2}",
        "/semi;param=1/x;y?z",
        "/*",
    ],
)
async def test_request_target_arrives_byte_exact(start_proxy: StartProxy, target: str) -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        got.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(handler) as up:
        proxy = await start_proxy(route(up.url))
        resp = await exchange(proxy.listen_port, get(target))
        assert resp.status == 200
    assert got == [f"GET {target} HTTP/1.1".encode("latin-1")]


async def test_absolute_form_target_becomes_origin_form(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(
        proxy.listen_port,
        b"GET http://other.test:8080/x%2Fy?q=%3A HTTP/1.1\r\nHost: ignored.test\r\n\r\n",
    )
    assert resp.status == 200
    assert seen[0].raw_path == "/x%2Fy?q=%3A"
    assert seen[0].all("Host") == ["other.test:8080"]


async def test_forwarded_headers_are_overwritten_for_untrusted_peers(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    extra = (
        "X-Forwarded-For: 6.6.6.6\r\n"
        "X-Forwarded-Proto: https\r\n"
        "X-Forwarded-Host: evil.test\r\n"
        "X-Forwarded-For: 7.7.7.7\r\n"
    )
    resp = await exchange(proxy.listen_port, get("/", host="shop.test:8080", extra=extra))
    assert resp.status == 200
    req = seen[0]
    assert req.all("X-Forwarded-For") == ["127.0.0.1"]
    assert req.all("X-Forwarded-Proto") == ["http"]
    assert req.all("X-Forwarded-Host") == ["shop.test:8080"]
    assert req.all("Via") == ["1.1 splitproxy"]


async def test_forwarded_headers_are_appended_for_trusted_peers(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(
        route(f"http://127.0.0.1:{up.port}"), trusted_proxies=("127.0.0.0/8",)
    )
    extra = (
        "X-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n"
        "X-Forwarded-Proto: https\r\n"
        "X-Forwarded-Host: shop.example.com\r\n"
        "Via: 1.1 edge\r\n"
    )
    await exchange(proxy.listen_port, get("/", extra=extra))
    # without prior headers, the trusted peer still gets its own values
    await exchange(proxy.listen_port, get("/"))
    first, second = seen
    assert first.all("X-Forwarded-For") == ["6.6.6.6, 10.0.0.1, 127.0.0.1"]
    assert first.all("X-Forwarded-Proto") == ["https"]
    assert first.all("X-Forwarded-Host") == ["shop.example.com"]
    assert ", ".join(first.all("Via")) == "1.1 edge, 1.1 splitproxy"
    assert second.all("X-Forwarded-For") == ["127.0.0.1"]
    assert second.all("X-Forwarded-Proto") == ["http"]
    assert second.all("X-Forwarded-Host") == ["app.test"]


async def test_via_can_be_changed_and_suppressed(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"), via="")
    await exchange(proxy.listen_port, get("/"))
    assert "via" not in seen[0].names()


async def test_request_id_is_kept_when_valid_and_echoed(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(proxy.listen_port, get("/", extra="X-Request-ID: abc-123_XYZ.9\r\n"))
    assert resp.all("X-Request-ID") == ["abc-123_XYZ.9"]
    assert seen[0].all("X-Request-ID") == ["abc-123_XYZ.9"]


@pytest.mark.parametrize("given", ["", "has space", "x" * 201, "tab\there", "ümlaut"])
async def test_request_id_is_generated_when_missing_or_invalid(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer, given: str
) -> None:
    seen: list[Seen] = []
    up = await aiohttp_server(recording_app(seen))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    extra = f"X-Request-ID: {given}\r\n" if given else ""
    resp = await exchange(proxy.listen_port, get("/", extra=extra))
    rid = resp.header("X-Request-ID")
    assert rid
    assert rid != given.strip()
    assert len(resp.all("X-Request-ID")) == 1
    assert seen[0].all("X-Request-ID") == [rid]
    other = await exchange(proxy.listen_port, get("/"))
    assert other.header("X-Request-ID") not in (None, rid)


async def test_upstream_request_id_is_echoed_once(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok", headers={"X-Request-ID": request.headers["X-Request-ID"]})

    up = await aiohttp_server(recording_app([], echo))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    resp = await exchange(proxy.listen_port, get("/", extra="X-Request-ID: rid-1\r\n"))
    assert resp.all("X-Request-ID") == ["rid-1"]
    resp = await exchange(proxy.listen_port, get("/"))
    assert len(resp.all("X-Request-ID")) == 1


async def test_request_id_in_the_proxy_error_body(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {"routes": [{"name": "app", "match": {"host": "only.test"}, "stable": "http://x:1"}]}
    )
    resp = await exchange(proxy.listen_port, get("/", host="other.test"))
    assert resp.status == 404
    rid = resp.header("X-Request-ID")
    assert rid
    assert f'"request_id": "{rid}"' in resp.body.decode()
    resp = await exchange(
        proxy.listen_port, get("/", host="other.test", extra="X-Request-ID: r-9\r\n")
    )
    assert resp.header("X-Request-ID") == "r-9"
    assert '"request_id": "r-9"' in resp.body.decode()


async def test_end_to_end_headers_reach_the_client_through_aiohttp(
    start_proxy: StartProxy, aiohttp_server: AiohttpServer
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=b"{}",
            headers={
                "Content-Type": "application/json",
                "ETag": '"v1"',
                "X-Up": request.headers.get("X-Down", ""),
            },
        )

    up = await aiohttp_server(recording_app([], handler))
    proxy = await start_proxy(route(f"http://127.0.0.1:{up.port}"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.listen_port}/", headers={"X-Down": "d"}) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["ETag"] == '"v1"'
        assert r.headers["X-Up"] == "d"
        assert await r.read() == b"{}"
