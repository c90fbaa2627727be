"""The dashboard: one static page on the admin listener (``GET /``) that reads the admin API.

The page, its script and its style ship inside the package (``static/``; no build step, no
CDN). They are public: the page holds no data, it asks ``/api/v1/...`` from the browser,
sending the admin token the user typed in (kept in the tab's ``sessionStorage``). Every
answer here carries a Content-Security-Policy that allows only this origin and no inline
script or style, so data the page shows can never run as code.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from aiohttp import web

# the files served, by name: nothing else under static/ is reachable
ASSETS: Final[dict[str, str]] = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
PREFIX: Final = "/dashboard/"  # where the page's assets live (the page itself is ``/``)

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # small files; a new version of the proxy must not be served the old script
    "Cache-Control": "no-cache",
}


def asset(name: str) -> bytes:
    """The bytes of one of the page's files (``ASSETS``), read from the package."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _response(name: str) -> web.Response:
    charset = None if ASSETS[name].startswith("image/") else "utf-8"
    return web.Response(
        body=asset(name), content_type=ASSETS[name], charset=charset, headers=HEADERS
    )


async def index(request: web.Request) -> web.Response:
    """``GET /``: the page."""
    return _response("index.html")


async def static_file(request: web.Request) -> web.Response:
    """``GET /dashboard/{file}``: the page's script, style and icon."""
    name = request.match_info["file"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text=f"no dashboard file {name!r}")
    return _response(name)


def add_routes(app: web.Application) -> None:
    """Serve the dashboard on ``app`` (the admin application)."""
    app.router.add_get("/", index)
    app.router.add_get(PREFIX + "{file}", static_file)
