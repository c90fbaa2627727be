"""The ``splitproxy`` command line.

``main(argv)`` returns the exit code (tests call it directly); ``python -m splitproxy`` and the
console script exit with it. Admin verbs talk to a running proxy's admin API over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitproxy import __version__
from splitproxy.errors import ConfigError

if TYPE_CHECKING:  # imported when a command needs it: 'check' must stay light
    from splitproxy.settings import Settings

# serve flags that map one to one onto Settings fields
_SERVE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--listen", "listen", str, "proxy address host:port (default 0.0.0.0:8080)"),
    ("--admin", "admin", str, "admin API address host:port (default 127.0.0.1:9901)"),
    (
        "--preview-listen",
        "preview_listen",
        str,
        "preview address host:port: always the candidate (default off)",
    ),
    ("--state-dir", "state_dir", Path, "where rollout state is kept"),
    (
        "--state",
        "state",
        str,
        "rollout state in a Redis shared by replicas: redis://host:6379/0 or rediss:// "
        "(a password belongs in SPLITPROXY_STATE: a flag shows in ps)",
    ),
    ("--state-namespace", "state_namespace", str, "prefix of the Redis keys (default splitproxy)"),
    (
        "--admin-token-file",
        "admin_token_file",
        str,
        "file holding the admin API's bearer token (or SPLITPROXY_ADMIN_TOKEN)",
    ),
    ("--log-format", "log_format", str, "text or json"),
    ("--log-level", "log_level", str, "debug, info, warning or error"),
    ("--connect-timeout", "connect_timeout", float, "upstream connect timeout, seconds"),
    ("--read-timeout", "read_timeout", float, "upstream response timeout, seconds"),
    ("--header-timeout", "header_timeout", float, "client request-header timeout, seconds"),
    ("--body-timeout", "body_timeout", float, "client request-body idle timeout, seconds"),
    (
        "--client-idle-timeout",
        "client_idle_timeout",
        float,
        "client keep-alive idle timeout, seconds",
    ),
    (
        "--tunnel-idle-timeout",
        "tunnel_idle_timeout",
        float,
        "upgraded (WebSocket) connection idle timeout, seconds",
    ),
    (
        "--upstream-idle-timeout",
        "upstream_idle_timeout",
        float,
        "pooled upstream idle timeout, seconds",
    ),
    ("--drain-timeout", "drain_timeout", float, "longest wait for in-flight requests on SIGTERM"),
    (
        "--drain-delay",
        "drain_delay",
        float,
        "seconds /readyz reports 503 before the listener closes",
    ),
    ("--max-header-bytes", "max_header_bytes", int, "request header limit (431 above it)"),
    ("--max-body-bytes", "max_body_bytes", int, "request body limit, 0 for none (413 above it)"),
    ("--max-connections", "max_connections", int, "client connections at once, 0: from fd limit"),
    ("--max-upstream-connections", "max_upstream_connections", int, "per upstream, 0 for none"),
    ("--reload-poll-interval", "reload_poll_interval", float, "poll the routing file, 0 for never"),
    ("--workers", "workers", str, "worker processes on the listener: N or auto (default 1)"),
)


def _admin_url(args: argparse.Namespace) -> str:
    base = args.admin_url or os.environ.get("SPLITPROXY_ADMIN_URL")
    if not base:
        admin = os.environ.get("SPLITPROXY_ADMIN", "127.0.0.1:9901")
        host, _, port = admin.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        base = f"http://{host}:{port}"
    return base.rstrip("/")


class Unreachable(Exception):
    """The admin API did not answer (nothing listening, a timeout)."""


def _client_token(args: argparse.Namespace) -> str | None:
    """The token to send: ``--admin-token-file``, else SPLITPROXY_ADMIN_TOKEN, else
    SPLITPROXY_ADMIN_TOKEN_FILE (never a flag value: it would show in ``ps``)."""
    from splitproxy.settings import read_token_file

    path = args.admin_token_file or os.environ.get("SPLITPROXY_ADMIN_TOKEN_FILE")
    token = os.environ.get("SPLITPROXY_ADMIN_TOKEN") if not args.admin_token_file else None
    if token:
        return token.strip()
    if path:
        try:
            return read_token_file(Path(path))
        except ValueError as exc:
            raise Unreachable(f"admin token: {exc}") from None
    return None


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin API call; returns (status, decoded JSON); raises `Unreachable`."""
    # here, not at the top: urllib.request brings ssl, http.client and email (10 MiB) to every
    # command, `serve` and `check` included, which never call the admin API
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(_admin_url(args) + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    token = _client_token(args)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {
                "error": {"code": "http_error", "message": raw.decode(errors="replace")}
            }
    except (OSError, ValueError) as exc:  # URLError, refused, timeout; or an answer not JSON
        raise Unreachable(f"cannot reach the admin API at {_admin_url(args)}: {exc}") from None


def _fail(payload: Any, status: int) -> int:
    err = payload.get("error", {}) if isinstance(payload, dict) else {}
    print(f"error ({status}): {err.get('message', payload)}", file=sys.stderr)
    return 1


def _settings(**flags: Any) -> Settings | None:
    """The settings (flags over ``SPLITPROXY_*``), or None after printing one line per bad
    setting (exit code 2): a typo in an environment variable is not a traceback."""
    from splitproxy.settings import InvalidSettings, load_settings

    try:
        return load_settings(**flags)
    except InvalidSettings as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    from splitproxy import logs
    from splitproxy.server import serve

    kwargs: dict[str, Any] = {}
    if args.config is not None:
        kwargs["config"] = args.config
    for _, dest, _, _ in _SERVE_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            kwargs[dest] = value
    if args.no_access_log:
        kwargs["access_log"] = False
    if args.no_reload_watch:
        kwargs["reload_watch"] = False
    settings = _settings(**kwargs)
    if settings is None:
        return 2
    logs.configure(settings.log_format, settings.log_level)
    if settings.worker_count > 1:
        from splitproxy.workers.supervisor import supervise

        return supervise(settings, settings.worker_count)
    return serve(settings)


def cmd_check(args: argparse.Namespace) -> int:
    # the config package only: validating a file must not load the proxy
    from splitproxy.config import check_warnings, read_routing_file, summary

    try:
        config, _ = read_routing_file(Path(args.file))
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.file}: {summary(config)}")
    for warning in check_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _get_status(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The status JSON, or None and why it could not be had."""
    try:
        status, payload = _call(args, "GET", "/api/v1/status")
    except Unreachable as exc:
        return None, str(exc)
    if status != 200:
        err = payload.get("error", {}) if isinstance(payload, dict) else {}
        return None, f"error ({status}): {err.get('message', payload)}"
    return payload, None


def cmd_status(args: argparse.Namespace) -> int:
    from splitproxy.console import print_status, watch_status

    if args.wait is not None:
        return wait_for_outcome(args)
    if args.watch and not args.json:
        if args.interval <= 0:
            print("status: --interval must be > 0", file=sys.stderr)
            return 2
        return watch_status(lambda: _get_status(args), args.interval)
    payload, error = _get_status(args)
    if payload is None:
        print(error, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print_status(payload, wide=args.wide)
    return 0


def wait_for_outcome(args: argparse.Namespace) -> int:
    """``status --wait ROUTE``: 0 once promoted, 1 once rolled back (the reason on stderr),
    2 when ``--wait-timeout`` passes first (or the route has no rollout)."""
    from splitproxy.config import parse_duration

    try:
        limit = parse_duration(args.wait_timeout)
    except ValueError as exc:
        print(f"status: --wait-timeout: {exc}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + limit
    last = ""
    while True:
        try:
            status, payload = _call(args, "GET", f"/api/v1/routes/{args.wait}")
        except Unreachable as exc:  # a restarting proxy: keep waiting
            status, payload = 0, {"error": {"message": str(exc)}}
        if status == 200:
            rollout = payload.get("rollout")
            if rollout is None:
                print(f"status: route {args.wait!r} has no rollout", file=sys.stderr)
                return 2
            phase = rollout["phase"]
            if args.revision is not None and rollout.get("revision") != args.revision:
                phase = f"waiting for revision {args.revision} (at {rollout.get('revision')})"
            line = f"{args.wait}: {phase}, step {rollout['step']}/{rollout['steps']}"
            if line != last:
                print(line, flush=True)
                last = line
            if phase == "promoted":
                return 0
            if phase == "rolled_back":
                reasons = [e["message"] for e in rollout["history"] if e["kind"] == "rolled_back"]
                print(
                    f"rolled back: {reasons[-1] if reasons else 'see the ledger'}", file=sys.stderr
                )
                return 1
        elif status in (401, 403, 404):
            _fail(payload, status)
            return 2
        if time.monotonic() >= deadline:
            print(f"status: still {last or 'unknown'} after {args.wait_timeout}", file=sys.stderr)
            return 2
        time.sleep(min(args.interval, max(0.05, deadline - time.monotonic())))


def cmd_events(args: argparse.Namespace) -> int:
    """The decision ledger, oldest first; ``--follow`` keeps printing new events."""
    since: float | None = None
    while True:
        query = {"limit": str(args.limit)}
        if args.route:
            query["route"] = args.route
        if since is not None:
            query["since"] = repr(since)
        status, payload = _call(args, "GET", "/api/v1/events?" + urllib.parse.urlencode(query))
        if status != 200:
            return _fail(payload, status)
        for event in payload["events"]:
            since = max(since or 0.0, event["at"])
            print(json.dumps(event) if args.json else event_line(event), flush=True)
        if not args.follow:
            return 0
        time.sleep(args.interval)


def event_line(e: dict[str, Any]) -> str:
    """One ledger event as a line: when, route, revision, kind, phase, step, weight, message."""
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
    weight = "file" if e.get("weight") is None else f"{e['weight']:g}%"
    return (
        f"{at} {e['route']} {e.get('revision') or '-'} {e['kind']} ({e['phase']}, "
        f"step {e['step']}, {weight}): {e['message']}"
    )


def cmd_weight(args: argparse.Namespace) -> int:
    """Set a runtime weight, or with ``--clear`` drop it (the file's weight serves again)."""
    path = f"/api/v1/routes/{args.route}/weight"
    if args.clear:
        status, payload = _call(args, "DELETE", path)
    else:
        status, payload = _call(args, "PUT", path, {"weight": args.percent})
    if status != 200:
        return _fail(payload, status)
    weight = payload["weight"]
    if args.clear:
        print(
            f"{args.route}: runtime weight cleared; candidate weight {weight['effective']:g}% "
            f"(set by {weight['source']})"
        )
    else:
        print(f"{args.route}: candidate weight {weight['effective']:g}% (runtime override)")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """promote, rollback, pause, resume, retry: one manual command on a route's rollout."""
    body = {"reason": args.reason} if args.reason else None
    status, payload = _call(args, "POST", f"/api/v1/routes/{args.route}/{args.command}", body)
    if status != 200:
        return _fail(payload, status)
    rollout = payload.get("rollout") or {}
    weight = payload["weight"]["effective"]
    if args.command == "revert":
        source = payload["weight"]["source"]
        print(f"{args.route}: reverted: all traffic on the previous stable (set by {source})")
        return 0
    print(
        f"{args.route}: {rollout.get('phase', '?')}, step {rollout.get('step', '?')}"
        f"/{rollout.get('steps', '?')}, candidate weight {weight:g}%"
    )
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    status, payload = _call(args, "POST", "/api/v1/reload")
    if status == 200:
        print(f"loaded: revision {payload['revision']}")
        return 0
    if isinstance(payload, dict) and payload.get("errors"):
        for problem in payload["errors"]:
            print(problem, file=sys.stderr)
        print(f"rejected; still serving revision {payload.get('revision')}", file=sys.stderr)
        return 1
    return _fail(payload, status)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    try:
        status, _ = _call(args, "GET", "/readyz")
    except Unreachable:
        return 1
    return 0 if status == 200 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from splitproxy.demo.story import MIN_RATE, run_demo

    split = args.scenario == "split"
    if not split and (args.requests is not None or args.weight is not None):
        print("demo: --requests and --weight apply to --scenario split", file=sys.stderr)
        return 2
    requests = 400 if args.requests is None else args.requests
    weight = 20.0 if args.weight is None else args.weight
    rate = 200.0 if args.rate is None else args.rate
    if requests < 1 or rate <= 0 or not 0 <= weight <= 100:
        print("demo: --requests >= 1, --rate > 0 and 0 <= --weight <= 100", file=sys.stderr)
        return 2
    if not split and rate < MIN_RATE:
        print(f"demo: a rollout scenario needs --rate >= {MIN_RATE:g}", file=sys.stderr)
        return 2
    # the demo's proxy reads SPLITPROXY_* too (its addresses and access log are its own)
    settings = _settings(listen="127.0.0.1:0", admin="127.0.0.1:0", access_log=False)
    if settings is None:
        return 2
    return run_demo(
        args.scenario, settings, requests=requests, rate=rate, weight=weight, keep=args.keep
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitproxy",
        description="Progressive delivery in one process: stable and candidate behind one proxy.",
    )
    parser.add_argument("--version", action="version", version=f"splitproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument(  # a str: a git+URL must keep its //, which a Path would fold
        "-c", "--config", help="the routing file or git+URL#BRANCH:PATH (or SPLITPROXY_CONFIG)"
    )
    for flag, dest, kind, help_ in _SERVE_FLAGS:
        serve.add_argument(flag, dest=dest, type=kind, default=None, help=help_)
    serve.add_argument("--no-access-log", action="store_true", help="turn the access log off")
    serve.add_argument(
        "--no-reload-watch",
        action="store_true",
        help="don't watch the routing file (polling stays)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a routing file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser(
        "demo",
        help="watch a canary or blue/green rollout of a demo service promote or roll back, live",
    )
    demo.add_argument(
        "--scenario",
        choices=("good", "bad", "slow", "split", "bluegreen", "bluegreen-bad", "ab"),
        default="good",
        help="good: a healthy candidate is promoted; bad: 25%% errors, rolled back; slow: "
        "+200 ms, rolled back by the comparison with stable; split: a burst at a fixed weight "
        "and the measured split; bluegreen: test traffic only, the switch, the bake, promoted; "
        "bluegreen-bad: fails once it has the users, reverted in the bake; ab: an A/B test "
        "of a sign-up page, the better-converting candidate promoted (default: good)",
    )
    demo.add_argument("--rate", type=float, help="requests per second (default 200)")
    demo.add_argument("--requests", type=int, help="split: how many requests (default 400)")
    demo.add_argument("--weight", type=float, help="split: candidate weight (default 20)")
    demo.add_argument("--keep", action="store_true", help="keep running at the end (Ctrl-C stops)")
    demo.set_defaults(func=cmd_demo)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--admin-url", help="admin API base URL (or SPLITPROXY_ADMIN_URL)")
        p.add_argument(
            "--admin-token-file",
            help="file holding the bearer token (or SPLITPROXY_ADMIN_TOKEN[_FILE])",
        )
        p.add_argument("--timeout", type=float, default=5.0, help="seconds")
        return p

    status = client("status", "show routes, weights and backends of a running proxy")
    status.add_argument("--json", action="store_true", help="print the raw JSON (once)")
    status.add_argument(
        "--wide", action="store_true", help="plain lines, never cut (the default when piped)"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="refresh the table and each rollout's checks until Ctrl-C (in a terminal; "
        "otherwise print them once)",
    )
    status.add_argument("--interval", type=float, default=1.0, help="--watch/--wait: seconds")
    status.add_argument(
        "--wait",
        metavar="ROUTE",
        help="for pipelines: wait for ROUTE's rollout to end; exit 0 promoted, 1 rolled back "
        "(the reason on stderr), 2 on timeout",
    )
    status.add_argument("--wait-timeout", default="30m", help="--wait: how long (default 30m)")
    status.add_argument(
        "--revision",
        help="--wait: only this candidate revision's outcome counts (right after a commit the "
        "proxy may still show the previous release's)",
    )
    status.set_defaults(func=cmd_status)

    events = client("events", "print the decision ledger (oldest first)")
    events.add_argument("route", nargs="?", help="only this route's events")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--limit", type=int, default=100, help="events at first (max 1000)")
    events.add_argument("--interval", type=float, default=1.0, help="--follow: seconds")
    events.set_defaults(func=cmd_events)

    weight = client(
        "weight", "set a route's candidate weight at runtime, or --clear it back to the file's"
    )
    weight.add_argument("route")
    which = weight.add_mutually_exclusive_group(required=True)
    which.add_argument("percent", nargs="?", type=float, metavar="PERCENT", help="0 to 100")
    which.add_argument(
        "--clear", action="store_true", help="drop the runtime weight: the file's serves again"
    )
    weight.set_defaults(func=cmd_weight)

    verbs = {
        "promote": "send all traffic to the candidate now (until the file names it stable)",
        "rollback": "send all traffic to stable now (until a new revision or 'retry')",
        "pause": "freeze a rollout at its current weight",
        "resume": "continue a paused rollout, or pass the gate or pause step it waits at",
        "retry": "start a rolled-back revision again from the first step",
        "revert": "after a promotion, send all traffic back to the previous stable at once "
        "(within the rollout's revert_window; the file decides again when it changes the route)",
    }
    for verb, help_ in verbs.items():
        p = client(verb, help_)
        p.add_argument("route")
        p.add_argument("--reason", help="recorded with the decision in the ledger")
        p.set_defaults(func=cmd_rollout)

    reload = client("reload", "re-read the routing file of a running proxy now")
    reload.set_defaults(func=cmd_reload)

    health = client("healthcheck", "exit 0 if the proxy is ready (for container health checks)")
    health.set_defaults(func=cmd_healthcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return 1
    return code
