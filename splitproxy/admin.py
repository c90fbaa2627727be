"""The admin listener: health, metrics and the JSON API (aiohttp; loopback by default).

Errors are ``{"error": {"code": ..., "message": ...}}``. When an admin token is set, every
``/api/`` call needs ``Authorization: Bearer <token>`` (compared in constant time); health
checks and ``/metrics`` stay open so probes and scrapers need no secret, and so does the
dashboard page at ``/`` (`splitproxy.dashboard`: static files; it asks for the token itself).

Rollouts: ``POST /api/v1/routes/{name}/{promote|rollback|pause|resume|retry}`` (optional body
``{"reason": "..."}``) carries a manual command out at once and answers with the route view;
a command the rollout's phase does not allow is a 409 ``command_refused`` saying why, a route
without a ``rollout`` a 409 ``no_rollout``. ``PUT /api/v1/routes/{name}/weight`` is a 409
``rollout_active`` while a rollout drives the route. ``GET /api/v1/events`` is the decision
ledger (``?route=``, ``?since=<unix time>``, ``?limit=`` up to 1000, default 100; oldest
first, so the newest is last).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from splitproxy import __version__, dashboard, statuspage
from splitproxy.config import Mirror
from splitproxy.dataplane.health import BackendHealth, HealthBook
from splitproxy.dataplane.routing import BUCKETS, BackendPlan, CompiledRoute
from splitproxy.dataplane.state import RuntimeState, Snapshot, weight_source
from splitproxy.errors import Conflict, InvalidValue, NotReady, RequestRefused, UnknownRoute
from splitproxy.metrics import Recorder
from splitproxy.rollout.controller import COMMANDS, Controller
from splitproxy.rollout.messages import Command
from splitproxy.views import (
    AddressView,
    BackendView,
    EventsView,
    EventView,
    LatencyView,
    MirrorView,
    ReplicaView,
    RolloutsView,
    RolloutView,
    RouteView,
    TrafficView,
    VersionSummary,
)

EVENTS_LIMIT = 1000  # the most events one GET /api/v1/events returns


@dataclass
class AdminContext:
    """What the admin API reads and acts on."""

    state: RuntimeState
    recorder: Recorder
    token: str | None = None
    config_path: str | None = None
    draining: Callable[[], bool] = lambda: False
    started_at: float = field(default_factory=time.time)
    last_error: Callable[[], str | None] = lambda: None
    # re-read the routing file now; returns (loaded, problems)
    reload: Callable[[], Awaitable[tuple[bool, list[str]]]] | None = None
    control: Controller | None = None  # the rollout controller
    # the listener is on a loopback address: only loopback Host names are answered on /api/
    # (a web page that rebinds its own DNS name to 127.0.0.1 must not reach the API)
    loopback_only: bool = False
    health: HealthBook | None = None  # the upstream addresses' health
    # a replica (splitproxy/replicas): has the leader carry out an admin write and returns its
    # (status, body), or None when this process leads and carries it out itself
    forward: Callable[[str, str, dict[str, Any]], Awaitable[tuple[int, Any] | None]] | None = None
    replica: Callable[[], ReplicaView] | None = None  # this replica's part of the status


ADMIN: web.AppKey[AdminContext] = web.AppKey("admin", AdminContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminError(Exception):
    """A refusal of the admin API itself (a bad body or query): its HTTP status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


# The one place domain errors become HTTP status codes.
_STATUS_OF: Final[tuple[tuple[type[RequestRefused], int], ...]] = (
    (NotReady, 503),
    (UnknownRoute, 404),
    (Conflict, 409),
    (InvalidValue, 400),
)


def status_of(exc: RequestRefused) -> int:
    """The HTTP status that answers a refused request."""
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 400


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AdminError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except RequestRefused as exc:
        return error_response(status_of(exc), exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)


# Methods a page can send cross-site without a CORS preflight carry a body: POST (and PUT
# or PATCH, preflighted anyway but held to the same rule). DELETE is always preflighted, and
# this API grants no preflight, so a bodiless DELETE needs no Content-Type.
_MUTATIONS: Final = frozenset({"POST", "PUT", "PATCH"})
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


def loopback_host(host: str) -> bool:
    """Is ``host`` (a Host header: name or address, maybe with a port) a loopback name?"""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a browser could be tricked into sending never reaches the API: a foreign Host
    (DNS rebinding), a cross-site mutation (a form or a no-cors fetch cannot send
    ``Content-Type: application/json`` without a preflight, which this API never grants)."""
    if request.path.startswith("/api/"):
        ctx = request.app[ADMIN]
        if ctx.loopback_only and not loopback_host(request.host):
            return error_response(
                403, "bad_host", "the admin API answers only to a loopback Host on this listener"
            )
        if request.method in _MUTATIONS:
            if request.content_type != "application/json":
                return error_response(
                    415, "unsupported_media_type", "send 'Content-Type: application/json'"
                )
            origin = request.headers.get("Origin")
            if origin is not None and origin.partition("://")[2].rstrip("/") != request.host:
                return error_response(403, "cross_origin", "cross-site requests are refused")
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[ADMIN].token
    if token and request.path.startswith("/api/"):
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(
                401, "unauthorized", "this API needs 'Authorization: Bearer <token>'"
            )
    return await handler(request)


def _percent(bp: int) -> float:
    return round(bp * 100 / BUCKETS, 2)


TRAFFIC_SPAN = 60.0  # seconds of live traffic a route's view summarizes


def covered_span(recorder: Recorder, name: str, now: float) -> float:
    """How much of the last `TRAFFIC_SPAN` seconds the route's live window covers: all of
    it, or, for a window younger than that (the proxy or the route just started), the time
    since its oldest bucket began (at least one bucket's width)."""
    resolution = recorder.windows.resolution
    since = now - TRAFFIC_SPAN
    since -= since % resolution  # as `windows.Windows.summary` aligns it
    if recorder.observations(name, -math.inf, until=since):  # buckets from before the span
        return TRAFFIC_SPAN
    recent = recorder.observations(name, since)
    if not recent:
        return TRAFFIC_SPAN  # no traffic at all: a rate of 0 whatever the span
    return min(TRAFFIC_SPAN, max(resolution, now - recent[0].start))


def traffic_view(recorder: Recorder, route: CompiledRoute, now: float) -> TrafficView:
    """The route's last minute per version: rate, error rate, p50/p95/p99. Rates are per
    second of the span the live window covers (``window_seconds``: a minute, or less right
    after the proxy or the route started)."""
    span = covered_span(recorder, route.name, now)
    summary = recorder.summary(route.name, now, span)
    cand = summary["candidate"]
    return {
        "window_seconds": round(span, 3),
        "stable": version_summary(summary["stable"].as_dict()),
        "candidate": version_summary(cand.as_dict())
        if route.candidate is not None or cand.requests
        else None,
    }


# The rollout layer builds its JSON as plain dicts; these name the shape they have (views.py).
def version_summary(raw: dict[str, object]) -> VersionSummary:
    """`rollout.windows.Summary.as_dict` as the view it is."""
    return cast(VersionSummary, raw)


def rollout_view(raw: dict[str, object] | None) -> RolloutView | None:
    """`Controller.route_status` as the view it is (None: the route has no rollout)."""
    return cast("RolloutView | None", raw)


def _latency_ms(values: Iterable[float]) -> LatencyView:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99)}


def mirror_view(recorder: Recorder, name: str, settings: Mirror) -> MirrorView:
    """The route's mirroring: copies by result, divergence rate, recent latencies of both
    sides (the user's answers to the mirrored requests and the copies'), divergent examples."""
    counts = recorder.mirror_counts(name)
    stats = recorder.mirror_stats(name)
    compared = counts["match"] + counts["diverged"]
    return {
        "percent": settings.percent,
        "methods": list(settings.methods),
        "compare_body": settings.compare.body,
        "requests": {result: n for result, n in counts.items()},
        "divergence_rate": round(counts["diverged"] / compared, 6) if compared else None,
        "latency_ms": {
            "stable": _latency_ms(stats.recent["stable"] if stats else ()),
            "candidate": _latency_ms(stats.recent["candidate"] if stats else ()),
        },
        "examples": [
            {
                "at": at,
                "method": o.method,
                "path": o.path,
                "primary_status": o.primary_status,
                "mirror_status": o.mirror_status,
                "differed": o.differed,
            }
            for at, o in (stats.examples if stats else ())
        ],
    }


def address_views(plan: BackendPlan, health: BackendHealth | None) -> list[AddressView]:
    """Each address of a backend with its health (healthy, never checked, without a book)."""
    views: list[AddressView] = []
    for target in plan.targets:
        a = health.by_url.get(target.url) if health is not None else None
        state = a.state if a is not None else "healthy"
        views.append(
            {
                "url": target.url,
                "state": state,
                "healthy": state == "healthy",
                "ejected": state in ("ejected", "probing"),
                "since": a.since if a is not None else 0.0,
                "consecutive_failures": a.failures if a is not None else 0,
                "ejected_until": a.ejected_until if a is not None else None,
                "last_check": a.last_check if a is not None else None,
                "ready": a.ready if a is not None and health is not None and health.tracked
                else None,
            }
        )  # fmt: skip
    return views


def route_view(
    snapshot: Snapshot,
    route: CompiledRoute,
    recorder: Recorder,
    now: float | None = None,
    control: Controller | None = None,
    health: HealthBook | None = None,
) -> RouteView:
    """A route as status shows it: backends (with each address's health), the weight and
    who set it (``rollout``, ``runtime`` or ``file``), its live traffic (``now``: Unix time,
    default the current time) and its rollout (phase, step, checks with their evidence,
    recent history; null for a route without a ``rollout``)."""
    model = snapshot.config.route(route.name)
    assert model is not None
    override = snapshot.overrides.get(route.name)
    rh = health.route(route.name) if health is not None else None

    def backend(version: str, plan: BackendPlan) -> BackendView:
        bh = (rh.candidate if version == "candidate" else rh.stable) if rh is not None else None
        return {
            "urls": [t.url for t in plan.targets],
            "revision": plan.revision,
            "in_flight": recorder.in_flight(route.name, version),
            "all_down": bh.all_down if bh is not None else False,
            "addresses": address_views(plan, bh),
        }

    return {
        "name": route.name,
        "match": {"host": model.match.host, "path_prefix": model.match.path_prefix},
        "stable": backend("stable", route.stable),
        "candidate": backend("candidate", route.candidate) if route.candidate is not None else None,
        "weight": {
            "effective": _percent(route.weight_bp) if route.candidate else 0.0,
            "file": model.weight,
            "runtime": None
            if override is None
            else {
                "percent": override.percent,
                "set_at": override.set_at,
                "source": override.source,
            },
            "source": weight_source(snapshot, route.name),
        },
        "sticky": model.sticky.model_dump(exclude_none=True) if model.sticky else None,
        "overrides": [o.model_dump(exclude_none=True) for o in model.overrides],
        "traffic": traffic_view(recorder, route, time.time() if now is None else now),
        "rollout": rollout_view(control.route_status(route.name)) if control is not None else None,
        "mirror": mirror_view(recorder, route.name, model.mirror) if model.mirror else None,
    }


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[ADMIN]
    if ctx.draining():
        return web.json_response({"status": "draining"}, status=503)
    if ctx.state.snapshot is None:
        return web.json_response({"status": "not ready", "reason": "no config loaded"}, status=503)
    return web.json_response({"status": "ready"})


def _snapshot(ctx: AdminContext) -> Snapshot:
    snapshot = ctx.state.snapshot
    if snapshot is None:
        raise NotReady("not_ready", "no routing config is loaded yet")
    return snapshot


async def status(request: web.Request) -> web.Response:
    """Everything at a glance; the routes a page at a time (`statuspage`: ``?offset=``,
    ``?limit=``, ``?route=``), built in slices so that a large config never stalls serving."""
    ctx = request.app[ADMIN]
    snapshot = _snapshot(ctx)
    try:
        page = statuspage.page_of(request.query)
    except statuspage.BadPage as exc:
        raise AdminError(400, exc.code, exc.message) from None
    head = {
        "version": __version__,
        "ready": not ctx.draining(),
        "draining": ctx.draining(),
        "uptime_seconds": round(time.time() - ctx.started_at, 3),
        "config": {
            "path": ctx.config_path,
            "revision": snapshot.revision,
            "loaded_at": snapshot.loaded_at,
            "last_reload_successful": ctx.recorder.reloads.last_successful,
            "last_error": ctx.last_error(),
        },
        "rollouts": _rollouts(ctx),
    }

    def view(route: CompiledRoute) -> RouteView:
        return route_view(snapshot, route, ctx.recorder, control=ctx.control, health=ctx.health)

    return await statuspage.respond(head, page, snapshot.routes, view)


def _rollouts(ctx: AdminContext) -> RolloutsView | None:
    if ctx.control is None:
        return None
    view = cast(RolloutsView, ctx.control.summary())
    if ctx.replica is not None:
        view["replica"] = ctx.replica()
    return view


def _route(request: web.Request) -> tuple[Snapshot, CompiledRoute]:
    snapshot = _snapshot(request.app[ADMIN])
    name = request.match_info["name"]
    route = snapshot.route(name)
    if route is None:
        raise UnknownRoute(name)
    return snapshot, route


def _view(ctx: AdminContext, snapshot: Snapshot, name: str) -> RouteView:
    route = snapshot.route(name)
    assert route is not None
    return route_view(snapshot, route, ctx.recorder, control=ctx.control, health=ctx.health)


async def get_route(request: web.Request) -> web.Response:
    snapshot, route = _route(request)
    return web.json_response(_view(request.app[ADMIN], snapshot, route.name))


async def put_weight(request: web.Request) -> web.Response:
    _, route = _route(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError(
            400, "invalid_json", 'the body must be JSON, e.g. {"weight": 25}'
        ) from None
    weight = body.get("weight") if isinstance(body, dict) else None
    return await _write(request, route.name, "weight", {"weight": weight})


async def delete_weight(request: web.Request) -> web.Response:
    _, route = _route(request)
    return await _write(request, route.name, "clear_weight", {})


async def revert(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/routes/{name}/revert``: back to the previous stable, inside the window."""
    return await post_command(request, "revert")


def command_handler(command: Command) -> Handler:
    """``POST /api/v1/routes/{name}/<command>``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await post_command(request, command)

    return handler


async def post_command(request: web.Request, command: Command | Literal["revert"]) -> web.Response:
    """A manual rollout command (or ``revert``): carried out at once, saved, answered with the
    route view."""
    _, route = _route(request)
    reason: object = ""
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AdminError(
                400, "invalid_json", 'the body must be JSON, e.g. {"reason": "..."}'
            ) from None
        reason = body.get("reason", "") if isinstance(body, dict) else None
    return await _write(request, route.name, command, {"reason": reason})


async def _write(
    request: web.Request, name: str, action: str, payload: dict[str, Any]
) -> web.Response:
    """Carry out an admin write here, or (a replica that does not lead) have the leader carry
    it out and answer with the leader's answer."""
    ctx = request.app[ADMIN]
    if ctx.forward is not None:
        answered = await ctx.forward(name, action, payload)
        if answered is not None:
            status, body = answered
            return web.json_response(body, status=status)
    return web.json_response(await carry_out(ctx, name, action, payload))


async def carry_out(
    ctx: AdminContext, name: str, action: str, payload: dict[str, Any]
) -> RouteView:
    """An admin write on route ``name``: ``weight`` (``{"weight": 0..100}``), ``clear_weight``,
    ``revert`` or a rollout command (``{"reason": "..."}``); the route view afterwards. The one
    path for this process's API and for the writes another replica forwards (whose payload is
    checked here again: it came through Redis)."""
    snapshot = _snapshot(ctx)
    if snapshot.route(name) is None:
        raise UnknownRoute(name)
    if action == "weight":
        weight = payload.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise AdminError(400, "invalid_weight", 'the body must be {"weight": <0..100>}')
        snapshot = ctx.state.set_weight(name, float(weight), time.time())
        return _view(ctx, snapshot, name)
    if action == "clear_weight":
        return _view(ctx, ctx.state.clear_weight(name), name)
    reason = payload.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise AdminError(400, "invalid_reason", '"reason" must be a string (500 characters)')
    if action != "revert" and action not in COMMANDS:
        raise AdminError(400, "unknown_action", f"{action!r} is not an admin action")
    if ctx.control is None:
        raise NotReady("not_ready", "the rollout controller is not running")
    if action == "revert":
        ctx.control.revert(name, reason=reason)
    else:
        ctx.control.command(name, cast(Command, action), reason=reason)
    await ctx.control.flush()  # durable before we say it happened
    return _view(ctx, _snapshot(ctx), name)


def refusal_of(exc: Exception) -> tuple[int, dict[str, Any]] | None:
    """The status and error body that answer ``exc`` (None: not a refusal, a bug)."""
    if isinstance(exc, AdminError):
        return exc.status, {"error": {"code": exc.code, "message": exc.message}}
    if isinstance(exc, RequestRefused):
        return status_of(exc), {"error": {"code": exc.code, "message": exc.message}}
    return None


def _number(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AdminError(400, f"invalid_{key}", f"{key!r} must be a finite number")
    return value


async def get_events(request: web.Request) -> web.Response:
    """The decision ledger: every decision with its evidence, oldest first."""
    ctx = request.app[ADMIN]
    _snapshot(ctx)
    route = request.query.get("route") or None
    since = _number(request, "since")
    limit = _number(request, "limit")
    count = 100 if limit is None else int(limit)
    if not 1 <= count <= EVENTS_LIMIT:
        raise AdminError(400, "invalid_limit", f"'limit' must be between 1 and {EVENTS_LIMIT}")
    events = ctx.control.events(route, since, count) if ctx.control is not None else []
    body: EventsView = {"events": cast(list[EventView], events)}
    return web.json_response(body)


async def post_reload(request: web.Request) -> web.Response:
    ctx = request.app[ADMIN]
    if ctx.reload is None:
        raise AdminError(409, "no_config_file", "this proxy was not started from a routing file")
    ok, problems = await ctx.reload()
    snapshot = ctx.state.snapshot
    body = {
        "loaded": ok,
        "revision": snapshot.revision if snapshot is not None else None,
        "errors": problems,
    }
    return web.json_response(body, status=200 if ok else 422)


def create_admin_app(ctx: AdminContext) -> web.Application:
    """The admin application; `server.py` runs it on its own listener."""
    app = web.Application(middlewares=[_errors, _guard, _auth])
    app[ADMIN] = ctx
    dashboard.add_routes(app)  # the page at `/`: static, so open like the health checks
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(ctx.recorder.registry))
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/routes/{name}", get_route)
    app.router.add_put("/api/v1/routes/{name}/weight", put_weight)
    app.router.add_delete("/api/v1/routes/{name}/weight", delete_weight)
    for command in COMMANDS:
        app.router.add_post(f"/api/v1/routes/{{name}}/{command}", command_handler(command))
    app.router.add_post("/api/v1/routes/{name}/revert", revert)
    app.router.add_get("/api/v1/events", get_events)
    app.router.add_post("/api/v1/reload", post_reload)
    return app
