"""The configs (proxies) the benchmark compares, in the order they are interleaved.

A config is a name plus a function that returns the command line of a proxy that runs in the
foreground, listens on ``127.0.0.1:{ctx.port}`` in front of ``http://{ctx.upstream}`` and exits
on SIGTERM (``command=None``: no proxy, the load goes straight to the upstream). The function
may write generated files into ``ctx.run_dir`` (the proxy's working directory); ``{run_dir}``
in an ``env`` value is replaced by it. To add a config, append to ``CONFIGS``;
``default=False`` keeps it out of a plain run (select it with ``--only``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Every request of every config carries it, so splitproxy's sticky hash runs on each one.
STICKY_COOKIE = "splitproxy_id"
COOKIE_HEADER = f"Cookie: {STICKY_COOKIE}=bench-user-1"
# What a browser sends with a page's request besides Host and the cookie (Chrome's, 13
# lines): ``profile_proxy.py --browser-head`` sends it, where wrk's requests carry two headers.
BROWSER_HEADERS = (
    ("Connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("Upgrade-Insecure-Requests", "1"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
     "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-User", "?1"),
    ("Sec-Fetch-Dest", "document"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
)  # fmt: skip


@dataclass(frozen=True)
class Ctx:
    """What a config's command may use."""

    port: int  # the proxy listens on 127.0.0.1:port
    admin_port: int  # a second port, for proxies with an admin listener
    upstream_port: int  # the upstream nginx on 127.0.0.1
    py: str  # the venv's python (has the project and aiohttp/uvloop)
    run_dir: Path  # scratch dir for generated files (git-ignored)

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.upstream_port}"


@dataclass(frozen=True)
class Config:
    name: str
    command: Callable[[Ctx], list[str]] | None  # None: direct to the upstream
    env: dict[str, str] = field(default_factory=dict)  # added to the proxy's environment
    default: bool = True  # in the default set; otherwise only with --only


def nginx(ctx: Ctx) -> list[str]:
    script = BENCH / "proxies" / "nginx_proxy.sh"
    return ["bash", str(script), str(ctx.port), ctx.upstream, str(ctx.run_dir)]


def aiohttp(ctx: Ctx) -> list[str]:
    script = BENCH / "proxies" / "aiohttp_proxy.py"
    return [ctx.py, str(script), "--port", str(ctx.port), "--upstream", ctx.upstream]


def ceiling(ctx: Ctx) -> list[str]:
    script = BENCH / "proxies" / "ceiling.py"
    return [ctx.py, str(script), "--port", str(ctx.port), "--upstream", ctx.upstream]


ROUTES_YAML = """\
routes:
  - name: bench
    stable: http://{upstream}
    candidate: {{url: http://{upstream}, revision: "b"}}
    weight: 50
    sticky: {{cookie: {cookie}}}
    rollout:  # a canary held at its first step (50 %): the controller ticks and judges
      steps: [50]
      interval: 1h
      min_requests: 100000000
"""


def splitproxy(ctx: Ctx) -> list[str]:
    shutil.rmtree(ctx.run_dir / "splitproxy-state", ignore_errors=True)  # a fresh start per run
    routes = ctx.run_dir / "splitproxy-routes.yaml"
    routes.write_text(ROUTES_YAML.format(upstream=ctx.upstream, cookie=STICKY_COOKIE))
    return [
        ctx.py,
        "-m",
        "splitproxy",
        "serve",
        "-c",
        str(routes),
        "--listen",
        f"127.0.0.1:{ctx.port}",
        "--admin",
        f"127.0.0.1:{ctx.admin_port}",
    ]


def splitproxy_pipe(ctx: Ctx) -> list[str]:
    argv = splitproxy(ctx)
    return [argv[0], str(BENCH / "proxies" / "splitproxy_pipe.py"), *argv[3:]]


def splitproxy_nometrics(ctx: Ctx) -> list[str]:
    argv = splitproxy(ctx)
    return [argv[0], str(BENCH / "proxies" / "splitproxy_nometrics.py"), *argv[3:]]


# what a user gets from `splitproxy serve` (access log on, text, to the proxy's stderr, here a
# file), plus a state directory (a rollout runs)
SPLITPROXY_ENV = {
    "SPLITPROXY_STATE_DIR": "{run_dir}/splitproxy-state",
    "SPLITPROXY_DRAIN_TIMEOUT": "2",  # stop promptly between runs
}

CONFIGS: list[Config] = [
    Config("direct", None),
    Config("nginx", nginx),
    Config("aiohttp", aiohttp),
    # the least a Python proxy on uvloop and httptools does per request (proxies/ceiling.py)
    Config("ceiling", ceiling, default=False),
    Config("splitproxy", splitproxy, env=SPLITPROXY_ENV),  # the defaults
    Config(
        "splitproxy-logoff",
        splitproxy,
        env={**SPLITPROXY_ENV, "SPLITPROXY_ACCESS_LOG": "false"},
        default=False,
    ),
    Config(
        "splitproxy-json",
        splitproxy,
        env={**SPLITPROXY_ENV, "SPLITPROXY_LOG_FORMAT": "json"},
        default=False,
    ),
    # the access log (text) into a pipe that `cat` drains, rather than into a file
    Config("splitproxy-pipe", splitproxy_pipe, env=SPLITPROXY_ENV, default=False),
    Config(
        "splitproxy-json-pipe",
        splitproxy_pipe,
        env={**SPLITPROXY_ENV, "SPLITPROXY_LOG_FORMAT": "json"},
        default=False,
    ),
    Config("splitproxy-nometrics", splitproxy_nometrics, env=SPLITPROXY_ENV, default=False),
]
