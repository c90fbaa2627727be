"""200 MB each way through a proxy running as its own process (``python -m splitproxy serve``):
the bodies stream, so the proxy's peak memory barely moves."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.e2e.proc import LISTENING
from tests.helpers import route

SIZE = 200 * 1024 * 1024
BLOCK = 1024 * 1024
MAX_GROWTH_KB = 50 * 1024
ROOT = Path(__file__).resolve().parents[2]


def blocks() -> Iterator[bytes]:
    """200 MB of varied bytes without holding them: one random block, rotated per step."""
    base = random.Random(200).randbytes(BLOCK)
    for i in range(SIZE // BLOCK):
        k = (i * 7919) % BLOCK
        yield base[k:] + base[:k]


def expected_crc() -> int:
    crc = 0
    for b in blocks():
        crc = zlib.crc32(b, crc)
    return crc


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class ProxyProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_kb(self) -> int:
        return status_kb(self.proc.pid, "VmHWM")


@contextlib.asynccontextmanager
async def proxy_process(tmp_path: Path, upstream: str) -> AsyncIterator[ProxyProcess]:
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(route(upstream)))
    log = tmp_path / "proxy.log"
    # Ports from the proxy's own bind(0), read from its start-up line: a port picked here and
    # closed before the proxy binds it can meanwhile go to another listener (another test's,
    # when tests run side by side), which then answered this test's /livez.
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splitproxy", "serve", "-c", str(config),
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--no-access-log",
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        listening = None
        for _ in range(200):
            assert proc.returncode is None, log.read_text()
            listening = LISTENING.search(log.read_text())
            if listening is not None:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the proxy did not start:\n" + log.read_text())
        port, admin = int(listening.group(1)), int(listening.group(2))
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                assert proc.returncode is None, log.read_text()
                try:
                    async with s.get(f"http://127.0.0.1:{admin}/livez") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the proxy did not start:\n" + log.read_text())
        yield ProxyProcess(proc, port, log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def warm_up(proxy: ProxyProcess) -> None:
    """A few small exchanges both ways, so the baseline includes the code paths' own memory."""
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.post(proxy.url + "/warm", data=b"w" * 300_000) as r:
                assert r.status == 200
                await r.read()
            async with s.get(proxy.url + "/warm") as r:
                await r.read()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_200mb_upload_streams(
    aiohttp_server: AiohttpServer, tmp_path: Path, framing: str
) -> None:
    received: list[tuple[int, int, str | None]] = []

    async def sink(request: web.Request) -> web.StreamResponse:
        n, crc = 0, 0
        async for data in request.content.iter_any():
            n += len(data)
            crc = zlib.crc32(data, crc)
        received.append((n, crc, request.headers.get("Transfer-Encoding")))
        return web.Response(text=str(n))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sink)
    up = await aiohttp_server(app)
    async with proxy_process(tmp_path, f"http://127.0.0.1:{up.port}") as proxy:
        await warm_up(proxy)
        before = proxy.peak_kb()
        received.clear()

        async def body() -> AsyncIterator[bytes]:
            for b in blocks():
                yield b

        headers = {"Content-Length": str(SIZE)} if framing == "content-length" else {}
        async with (
            aiohttp.ClientSession() as s,
            s.post(proxy.url + "/upload", data=body(), headers=headers) as r,
        ):
            assert r.status == 200
            assert await r.text() == str(SIZE)
        growth = proxy.peak_kb() - before
    (n, crc, te) = received[0]
    assert n == SIZE
    assert crc == expected_crc()
    assert te == ("chunked" if framing == "chunked" else None)
    assert growth < MAX_GROWTH_KB, f"proxy peak RSS grew by {growth} kB"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_200mb_download_streams(
    aiohttp_server: AiohttpServer, tmp_path: Path, framing: str
) -> None:
    async def source(request: web.Request) -> web.StreamResponse:
        if request.path == "/warm":
            return web.Response(body=b"w" * 300_000)
        resp = web.StreamResponse()
        if framing == "content-length":
            resp.content_length = SIZE
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        for b in blocks():
            await resp.write(b)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", source)
    up = await aiohttp_server(app)
    async with proxy_process(tmp_path, f"http://127.0.0.1:{up.port}") as proxy:
        await warm_up(proxy)
        before = proxy.peak_kb()
        n, crc = 0, 0
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/download") as r:
            assert r.status == 200
            if framing == "content-length":
                assert r.headers["Content-Length"] == str(SIZE)
            else:
                assert r.headers["Transfer-Encoding"] == "chunked"
            async for data in r.content.iter_any():
                n += len(data)
                crc = zlib.crc32(data, crc)
        growth = proxy.peak_kb() - before
    assert n == SIZE
    assert crc == expected_crc()
    assert growth < MAX_GROWTH_KB, f"proxy peak RSS grew by {growth} kB"


@pytest.mark.timeout(30)
async def test_slow_reader_holds_back_the_upstream(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """A client that does not read makes the proxy stop reading the upstream (back-pressure):
    the upstream can only get a bounded amount ahead."""
    sent = 0
    done = asyncio.Event()

    async def source(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.content_length = SIZE
        await resp.prepare(request)
        try:
            for b in blocks():
                await resp.write(b)
                sent += len(b)
        finally:
            done.set()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", source)
    up = await aiohttp_server(app)
    async with proxy_process(tmp_path, f"http://127.0.0.1:{up.port}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(1.0)
            # kernel socket buffers on three hops plus the proxy's own high-water marks
            assert sent < 64 * 1024 * 1024, sent
            assert proxy.peak_kb() < 200 * 1024
        finally:
            writer.transport.abort()
            writer.close()
        await asyncio.wait_for(done.wait(), 10)
