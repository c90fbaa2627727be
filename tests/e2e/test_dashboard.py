"""The dashboard in a real headless Chromium, against ``splitproxy serve`` with a running rollout.

The browser is driven over the DevTools protocol (a websocket, aiohttp's client): the page is
loaded from the admin listener, asks for the admin token (the API answers 401), gets it through
its form, shows the route and its phase, and its rollback button rolls the rollout back, which
the admin API confirms. Console errors and uncaught exceptions fail the test. The browser and
the proxy are stopped at the end whatever happens (SIGKILL at worst).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.proc import Proxy, serving
from tests.e2e.test_rollout_cli import ROUTE, versions, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "dashboard-test-token"

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it as root)"
    ),
    pytest.mark.timeout(90),
]


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[int]:
    """A headless Chromium with DevTools on a free loopback port; yields the port."""
    assert CHROMIUM is not None
    log = (profile.parent / "chromium.log").open("w")
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
         "--no-sandbox",  # the tests may run as root, where the sandbox refuses to start
         "--no-first-run", "--no-default-browser-check", "--disable-gpu",
         "--disable-extensions", "--disable-background-networking", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-component-update", "--mute-audio",
         "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its helper processes go with it
    )  # fmt: skip
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if active.exists() and active.read_text().strip():
                break
            time.sleep(0.05)
        else:
            raise AssertionError(
                f"chromium did not start:\n{(profile.parent / 'chromium.log').read_text()}"
            )
        yield int(active.read_text().split()[0])
    finally:
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Page:
    """One tab over the DevTools protocol: commands, and the console problems it reported."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.problems: list[str] = []
        self.network_errors: list[str] = []
        # requests held by ``Fetch.enable`` (its ``Fetch.requestPaused`` events), in order
        self.paused: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data["method"], data.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Fetch.requestPaused":
            self.paused.put_nowait(params)
        elif method == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.problems.append(f"console.{params['type']}: {params['args']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # Chromium logs every HTTP error answer to a fetch as a console error of source
            # "network"; the page's own 401 (before the token is given) is expected
            if entry.get("source") == "network":
                self.network_errors.append(entry["text"])
            else:
                self.problems.append(f"log: {entry['text']}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 15)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def js(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in reply, reply
        return reply["result"].get("value")

    async def until(self, expression: str, what: str, timeout: float = 20.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. An exception counts as "not
        yet" (on a busy machine the page may still be loading: an element is not there)."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(guarded)
            if value:
                return value
            await asyncio.sleep(0.1)
        body = await self.js("document.body.innerText")
        raise AssertionError(f"the page did not show {what} within {timeout:g}s:\n{body}")

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def page(session: aiohttp.ClientSession, port: int) -> AsyncIterator[Page]:
    async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
        targets = await resp.json()
    [target] = [t for t in targets if t["type"] == "page"]
    ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
    tab = Page(ws)
    try:
        for domain in ("Runtime", "Log", "Page"):
            await tab.send(f"{domain}.enable")
        yield tab
    finally:
        await tab.close()


async def api(proxy: Proxy, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{proxy.admin_port}{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def progressing(proxy: Proxy) -> None:
    """Wait (bounded) until the rollout left its readiness wait for its first step."""
    deadline = time.monotonic() + 20
    phase = None
    while time.monotonic() < deadline:
        phase = (await api(proxy, f"/api/v1/routes/{ROUTE}"))["rollout"]["phase"]
        if phase == "progressing":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the rollout is {phase}, not progressing:\n{proxy.output()[-2000:]}")


ROUTE_CARD = f"document.querySelector('section.route[data-route=\"{ROUTE}\"]')"


async def held_rollout(
    tmp_path: Path, serve: Callable[[Any], Awaitable[str]]
) -> contextlib.AbstractContextManager[Proxy]:
    """``splitproxy serve`` (to enter) with the two versions and a canary rollout that stays at
    its first step until rolled back (long steps, a high request floor), behind the admin
    token ``TOKEN``."""
    stable, candidate = await versions(serve)
    config = write_config(
        tmp_path / "routes.yaml", stable, candidate, interval="60s", min_requests=100000
    )
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return serving(
        config,
        tmp_path / "proxy.log",
        "--state-dir",
        str(tmp_path / "state"),
        "--no-access-log",
        "--drain-delay",
        "0",
        "--drain-timeout",
        "2",
        env={"SPLITPROXY_ADMIN_TOKEN_FILE": str(token)},
    )  # fmt: skip


async def test_the_dashboard_shows_the_rollout_and_rolls_it_back(
    tmp_path: Path, serve: Callable[[Any], Awaitable[str]]
) -> None:
    with await held_rollout(tmp_path, serve) as proxy, chromium(tmp_path / "profile") as port:
        await progressing(proxy)
        async with aiohttp.ClientSession() as session, page(session, port) as tab:
            url = f"http://127.0.0.1:{proxy.admin_port}/"
            await tab.send("Page.navigate", url=url)  # answers before the page has loaded
            await tab.until(
                f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
                "the loaded page",
            )
            await tab.until("!document.getElementById('auth').hidden", "the token form")
            await tab.js(
                f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                "document.getElementById('auth').requestSubmit(); true"
            )
            phase = await tab.until(
                f"{ROUTE_CARD}?.querySelector('.phase')?.textContent", "the route's phase"
            )
            assert phase == "progressing"
            # one route fits on a page: no paging bar in the way
            assert await tab.js("document.getElementById('routes-bar').hidden") is True
            card = await tab.js(f"{ROUTE_CARD}.innerText")
            assert "canary" in card
            assert "rollout" in card  # who set the weight
            assert "1 of 2" in card  # the step of the plan
            assert await tab.js("sessionStorage.getItem('splitproxy.adminToken')") == TOKEN

            await tab.js(f"{ROUTE_CARD}.querySelector('button[data-command=rollback]').click()")
            await tab.until(
                f"{ROUTE_CARD}.querySelector('.phase').textContent === 'rolled_back'",
                "rolled_back",
            )
            view = await api(proxy, f"/api/v1/routes/{ROUTE}")
            assert view["rollout"]["phase"] == "rolled_back"
            assert view["weight"]["effective"] == 0.0
            # the ledger shows the manual rollback
            await tab.until(
                "[...document.querySelectorAll('#ledger tbody tr.event')]"
                ".some(r => r.innerText.includes('rolled_back'))",
                "the rollback in the ledger",
            )
            assert tab.problems == []
            assert all("401" in text for text in tab.network_errors), tab.network_errors


async def test_a_late_refusal_of_a_request_sent_before_the_token_keeps_the_token(
    tmp_path: Path, serve: Callable[[Any], Awaitable[str]]
) -> None:
    """The page's poll sends two requests at once. Before the token is given both are refused,
    and the second refusal may come back after the user submitted the token: it refuses no
    token, so the page keeps the one given (it used to wipe it and ask again, "That token was
    refused."). The browser holds that second request until the token is in, then lets it go."""
    with await held_rollout(tmp_path, serve) as proxy, chromium(tmp_path / "profile") as port:
        async with aiohttp.ClientSession() as session, page(session, port) as tab:
            await tab.send("Fetch.enable", patterns=[{"urlPattern": "*/api/v1/events*"}])
            await tab.send("Page.navigate", url=f"http://127.0.0.1:{proxy.admin_port}/")
            held = await asyncio.wait_for(tab.paused.get(), 20)  # the first poll's, no token
            assert "Authorization" not in held["request"]["headers"]
            await tab.until("!document.getElementById('auth').hidden", "the token form")

            async def let_go() -> None:  # every later events request goes on at once
                while True:
                    later = await tab.paused.get()
                    await tab.send("Fetch.continueRequest", requestId=later["requestId"])

            releaser = asyncio.get_running_loop().create_task(let_go())
            try:
                await tab.js(
                    f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                    "document.getElementById('auth').requestSubmit(); true"
                )
                await tab.until(
                    f"{ROUTE_CARD}?.querySelector('.phase')?.textContent", "the route's phase"
                )
                refused = len(tab.network_errors)
                await tab.send("Fetch.continueRequest", requestId=held["requestId"])
                # its 401 reached the page (Chromium logs it), then the page polled again
                deadline = time.monotonic() + 20
                while len(tab.network_errors) == refused and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert len(tab.network_errors) > refused, "the held request never came back"
                await asyncio.sleep(2)  # the page has read it, and polled again (every 1.5 s)
                assert await tab.js("document.getElementById('auth').hidden") is True
                stored = await tab.js("sessionStorage.getItem('splitproxy.adminToken')")
                assert stored == TOKEN
                assert await tab.js("document.getElementById('conn').className") == "conn ok"
            finally:
                releaser.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await releaser
            assert tab.problems == []
            assert all("401" in text for text in tab.network_errors), tab.network_errors


CARDS = "document.querySelectorAll('section.route').length"
PAGE_INFO = "document.getElementById('page-info').textContent"


async def test_a_large_config_is_paged_and_filtered_not_cut_silently(
    tmp_path: Path, serve: Callable[[Any], Awaitable[str]]
) -> None:
    stable, _ = await versions(serve)
    routes = [
        {"name": f"route-{i}", "match": {"path_prefix": f"/r{i}/"}, "stable": stable}
        for i in range(130)
    ]
    config = tmp_path / "routes.yaml"
    config.write_text(json.dumps({"routes": routes}))  # JSON is YAML
    with (
        serving(config, tmp_path / "proxy.log", "--no-access-log") as proxy,
        chromium(tmp_path / "profile") as port,
    ):
        async with aiohttp.ClientSession() as session, page(session, port) as tab:
            url = f"http://127.0.0.1:{proxy.admin_port}/"
            await tab.send("Page.navigate", url=url)
            await tab.until(f"{PAGE_INFO} === 'routes 1–100 of 130'", "the first page")
            assert await tab.js(CARDS) == 100
            assert await tab.js("document.getElementById('page-prev').disabled") is True

            await tab.js("document.getElementById('page-next').click()")
            await tab.until(f"{PAGE_INFO} === 'routes 101–130 of 130'", "the second page")
            await tab.until(f"{CARDS} === 30", "the second page's 30 cards")
            assert await tab.js("document.getElementById('page-next').disabled") is True
            assert await tab.js(
                "document.querySelector('section.route').dataset.route"
            ) == "route-100"  # fmt: skip

            # a filter starts from its first page: route-12 and route-120 … route-129
            await tab.js(
                "const box = document.getElementById('route-filter');"
                "box.value = 'route-12'; box.dispatchEvent(new Event('input')); true"
            )
            await tab.until(
                f"{PAGE_INFO} === 'routes 1–11 of 11 matching (130 in all)'", "the filtered page"
            )
            await tab.until(f"{CARDS} === 11", "the 11 matching cards")
            names = await tab.js(
                "[...document.querySelectorAll('section.route')].map(c => c.dataset.route)"
            )
            assert names == ["route-12", *(f"route-{i}" for i in range(120, 130))]
            assert tab.problems == []
