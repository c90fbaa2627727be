"""The dashboard page on the admin listener: open without the token (it holds no data), served
with a policy that lets no data run as code, and its files shipped inside the package."""

from __future__ import annotations

import zipfile
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

from splitproxy import dashboard
from splitproxy.server import Server
from tests.conftest import StartProxy

ROUTES = {"routes": [{"name": "shop", "stable": "http://127.0.0.1:9", "weight": 0}]}
REPO = Path(__file__).resolve().parents[2]


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.admin_port}"


class Tags(HTMLParser):
    """Every start tag with its attributes, and whether any script has inline code."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


async def test_the_page_and_its_files_need_no_token_but_the_api_does(
    start_proxy: StartProxy,
) -> None:
    server = await start_proxy(ROUTES, admin_token="s3cret")
    async with aiohttp.ClientSession() as session:
        async with session.get(base(server) + "/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp
            assert "script-src 'self'" in csp
            assert "'unsafe-inline'" not in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        for name, kind in [("app.js", "text/javascript"), ("app.css", "text/css")]:
            async with session.get(base(server) + "/dashboard/" + name) as resp:
                assert resp.status == 200
                assert resp.content_type == kind
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert await resp.read() == dashboard.asset(name)
        async with session.get(base(server) + "/api/v1/status") as resp:
            assert resp.status == 401
    assert "/dashboard/app.js" in page


async def test_only_the_dashboard_files_are_served(start_proxy: StartProxy) -> None:
    server = await start_proxy(ROUTES)
    async with aiohttp.ClientSession() as session:
        for path in ["/dashboard/__init__.py", "/dashboard/..%2f__init__.py", "/dashboard/"]:
            async with session.get(base(server) + path) as resp:
                assert resp.status == 404, path


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() -> None:
    parser = Tags()
    parser.feed(dashboard.asset("index.html").decode())
    assert not parser.inline_script
    for tag, attrs in parser.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for key in ("src", "href"):
            url = attrs.get(key)
            if url is not None:
                assert url.startswith("/dashboard/"), url
    scripts = [a["src"] for t, a in parser.tags if t == "script"]
    assert scripts == ["/dashboard/app.js"]


def test_the_dashboard_files_are_package_data() -> None:
    static = resources.files("splitproxy.dashboard").joinpath("static")
    for name in dashboard.ASSETS:
        assert static.joinpath(name).is_file(), name


def test_the_wheel_carries_the_dashboard_files(tmp_path: Path) -> None:
    """Built with the project's own build backend, as `pip install` builds it."""
    builders = pytest.importorskip(
        "hatchling.builders.wheel", reason="hatchling (the build backend) is not installed here"
    )
    builder = builders.WheelBuilder(str(REPO))
    [wheel] = list(builder.build(directory=str(tmp_path), versions=["standard"]))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in dashboard.ASSETS:
        assert f"splitproxy/dashboard/static/{name}" in names
