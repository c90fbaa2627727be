"""The composition root: reads the settings, builds every part, runs and drains them.

Lifecycle, in order:
start:    load the routing file (an invalid one stops start-up with its errors), start the
          health prober (active checks; a follower worker follows the leader's instead) and
          the rollout controller (it resumes saved
          rollouts from ``state_dir`` and applies their weights), open the admin listener,
          then the proxy listener, then the preview listener (``preview_listen``, when set),
          then the sweeper (timeouts, idle pools, the end of upstream ejections).
          A routing file in git (``-c git+URL#BRANCH:PATH``) is fetched first; a remote that
          cannot be reached, an unknown branch or a missing file stop start-up in one line.
reload:   a watch of the routing file's directory (or a fetch of its git branch every
          ``git_interval``), a stat-and-hash poll, SIGHUP and
          POST /api/v1/reload all ask `reload.Reloader` for a reload; its one worker reads,
          validates and swaps, and a bad file keeps the last good config serving. Pools of
          upstreams no route names any more close after a grace period (`PoolJanitor`).
SIGTERM:  1. /readyz answers 503 (``drain_delay`` while the listener still accepts);
          2. the listeners close (proxy and preview); idle keep-alive connections close, busy
             ones after their response; 3. wait for in-flight exchanges, at most ``drain_timeout``;
          4. cut what is left, close the pools and the admin listener; exit 0.
          (The reloader and the rollout controller stop first: no config or weight changes
          while draining; the controller saves every rollout's state as it stops.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from aiohttp import web

from splitproxy.admin import AdminContext, create_admin_app, loopback_host
from splitproxy.config import content_hash, parse_routing, read_routing_file
from splitproxy.dataplane.client import ClientConnection
from splitproxy.dataplane.context import CoarseClock, ProxyContext
from splitproxy.dataplane.health import HealthBook
from splitproxy.dataplane.mirror import Mirror
from splitproxy.dataplane.pools import PoolRegistry
from splitproxy.dataplane.probes import Prober
from splitproxy.dataplane.state import RuntimeState
from splitproxy.errors import ConfigError, Problem
from splitproxy.gitsource import Fetched, GitSource, with_commit
from splitproxy.logs import AccessLog
from splitproxy.metrics import AccessLogCollector, HealthCollector, Recorder
from splitproxy.reload import (
    ConfigInfoCollector,
    PoolJanitor,
    Reloader,
    ReloadOptions,
    ReloadOutcome,
)
from splitproxy.rollout.controller import Controller, ControlOptions
from splitproxy.rollout.store import StateBackend, StateStore
from splitproxy.rollout.traffic import loopback_url
from splitproxy.settings import Settings

if TYPE_CHECKING:
    from splitproxy.replicas.link import ReplicaLink
    from splitproxy.workers.link import WorkerLink

logger = logging.getLogger("splitproxy.server")

__all__ = ["Server", "serve"]


class Server:
    """splitproxy's process: the proxy listener, the admin listener and their shared state."""

    def __init__(
        self,
        settings: Settings,
        routing_text: str | None = None,
        *,
        reload_options: ReloadOptions | None = None,
        control_options: ControlOptions | None = None,
        worker: WorkerLink | None = None,
    ) -> None:
        self.settings = settings
        # one of several worker processes (splitproxy/workers): only the leader runs the
        # controller and the admin API; None: a process alone
        self.worker = worker
        self.control_options = control_options or ControlOptions()
        self._routing_text = routing_text  # an embedded config (the demo) instead of a file
        self.state = RuntimeState()
        # one of several replicas sharing a Redis state store (splitproxy/replicas): the
        # leader decides, every replica serves and pools its observations
        self.replica = self._replica_link()
        if self.replica is not None:  # a takeover re-judges what came after the last save
            self.control_options = replace(
                self.control_options, checkpoint=min(self.control_options.checkpoint, 2.0)
            )
        source = worker if worker is not None else self.replica
        self.recorder = source.recorder(self.state) if source is not None else Recorder(self.state)
        self.clock = CoarseClock(0.0)
        self.pools = PoolRegistry(
            self.clock,
            connect_timeout=settings.connect_timeout,
            idle_timeout=settings.upstream_idle_timeout,
            max_connections=settings.max_upstream_connections,
        )
        self.recorder.registry.register(ConfigInfoCollector(self.state))
        # which upstream addresses take traffic: passive ejection always, active checks
        # for backends with `health:` (and a rollout's candidate, for its readiness)
        self.health = HealthBook()
        self.prober = Prober(self.health)
        self.recorder.registry.register(HealthCollector(self.health))
        self.mirror = Mirror(self.recorder, self.clock)  # copies of user requests to candidates
        self.reload_options = reload_options or ReloadOptions(
            watch=settings.reload_watch,
            poll_interval=settings.reload_poll_interval,
            fetch_interval=settings.git_interval,
        )
        grace = self.reload_options.pool_grace
        if grace is None:  # a request picks its pool, then connects and waits for the head
            grace = settings.connect_timeout + settings.read_timeout
        self.janitor = PoolJanitor(self.pools, self.state, grace)
        self.reloader: Reloader | None = None
        self.git: GitSource | None = None  # the routing file's git branch (-c git+URL#...)
        self.control: Controller | None = None
        self.draining = False
        self._proxy_server: asyncio.Server | None = None
        self._preview_server: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.ctx: ProxyContext | None = None
        self.access_log: AccessLog | None = None
        self.recorder.registry.register(
            AccessLogCollector(lambda: self.access_log.dropped if self.access_log else 0)
        )
        self.listen_port = 0
        self.preview_port = 0  # 0: no preview listener
        self.admin_port = 0

    def _replica_link(self) -> ReplicaLink | None:
        url = getattr(self.settings, "state", None)
        if url is None or self.worker is not None:
            return None
        from splitproxy.replicas.link import ReplicaLink

        return ReplicaLink(url, self.settings.state_namespace)

    # -- config -----------------------------------------------------------------------------
    def _load_initial(self, fetched: Fetched | None = None) -> None:
        if self.worker is not None and not self.worker.leader:
            self.worker.adopt_first(self.state)  # the leader's config and weights
            self.recorder.config_reloaded(True, time.time())
            return
        if fetched is not None:
            config = with_commit(parse_routing(fetched.text, fetched.source), fetched.commit)
            digest = fetched.digest
        elif self._routing_text is not None:
            config = parse_routing(self._routing_text, "<embedded>")
            digest = content_hash(self._routing_text)
        elif self.settings.config is not None:
            config, digest = read_routing_file(self.settings.config)
        else:
            raise ConfigError(
                [Problem("config", "no routing file given (-c FILE or SPLITPROXY_CONFIG)")]
            )
        self.state.load(config, digest, time.time())
        self.recorder.config_reloaded(True, time.time())

    @property
    def last_error(self) -> str | None:
        """The problems of the routing file on disk when it is invalid (status shows them)."""
        return self.reloader.last_error if self.reloader is not None else None

    async def reload(self, trigger: str = "api") -> ReloadOutcome:
        """Reload the routing file now, through the one reload path; a bad file keeps the
        last good config serving. Without a routing file (an embedded config) nothing to do."""
        if self.reloader is None:
            snapshot = self.state.snapshot
            problem = "this proxy was not started from a routing file"
            revision = snapshot.revision if snapshot is not None else None
            return ReloadOutcome(False, False, revision, (problem,), trigger)
        return await self.reloader.reload_now(trigger)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        fetched = None
        spec = s.git_spec if self._routing_text is None else None
        if spec is not None:  # a failing first fetch stops start-up, in one line
            self.git = GitSource(spec, s.state_dir)
            fetched = await self.git.open()
        self._load_initial(fetched)
        control = self.control = self._build_control()
        ctx = self.ctx = self._build_context()
        self.health.tick(time.time())
        ctx.mirror = self.mirror
        self._follow_snapshots(control, ctx)
        if self.worker is None or self.worker.leader:  # a follower follows the leader's checks
            self.prober.start()
        source = self.git or (s.config if self._routing_text is None else None)
        if source is not None:
            self.reloader = Reloader(
                source, self.state, self.recorder.config_reloaded, self.reload_options
            )
            self.reloader.start()
        worker = self.worker
        leads = worker is None or worker.leader
        if leads:  # a follower serves the weights its leader's controller sets; no admin API
            store = control.persistence.store
            if self.replica is not None and store is not None:
                await self.replica.begin(self, store)  # type: ignore[arg-type]
            await control.start()
            await self._open_admin()
            if self.replica is not None:
                await self.replica.started()
        loop = asyncio.get_running_loop()
        host, port = s.listen_address
        sock = worker.listener("proxy") if worker is not None else None
        if sock is not None:  # the supervisor's socket: every worker accepts from it
            self._proxy_server = await loop.create_server(
                lambda: ClientConnection(ctx), sock=sock, backlog=4096
            )
        else:
            self._proxy_server = await loop.create_server(
                lambda: ClientConnection(ctx), host, port, backlog=4096, reuse_address=True
            )
        self.listen_port = self._proxy_server.sockets[0].getsockname()[1]
        if self.control is not None and self.control.traffics is not None:
            # synthetic traffic enters through the proxy's own listener, on loopback
            self.control.traffics.base_url = loopback_url(host, self.listen_port)
        await self._open_preview(ctx)
        if self.control is not None:  # blue/green test jobs reach the candidate through it
            preview = self.preview_port and loopback_url(self._preview_host(), self.preview_port)
            self.control.listening(preview or None)
        self._tasks.append(loop.create_task(self._sweep(ctx)))
        revision = self.state.snapshot.revision if self.state.snapshot else "?"
        if worker is not None and not worker.leader:
            logger.info("splitproxy worker %d listening on %s:%d, config revision %s",
                        worker.worker, host, self.listen_port, revision)  # fmt: skip
        else:
            logger.info(
                "splitproxy listening on %s:%d (admin on %s:%d), config revision %s",
                host, self.listen_port, s.admin_address[0], self.admin_port, revision,
            )  # fmt: skip

    async def _open_admin(self) -> None:
        s = self.settings
        admin_ctx = AdminContext(
            state=self.state,
            recorder=self.recorder,
            token=s.admin_secret,
            config_path=str(self.git.spec) if self.git else str(s.config) if s.config else None,
            draining=lambda: self.draining,
            last_error=lambda: self.last_error,
            reload=self.reloader.admin_reload if self.reloader is not None else None,
            control=self.control,
            loopback_only=loopback_host(s.admin_address[0]),
            health=self.health,
            forward=self.replica.forward if self.replica is not None else None,
            replica=self.replica.status if self.replica is not None else None,
        )
        if self.replica is not None:
            self.replica.admin = admin_ctx
        runner = self._admin_runner = web.AppRunner(
            create_admin_app(admin_ctx), access_log=None, handle_signals=False
        )
        await runner.setup()
        admin_host, admin_port = s.admin_address
        sock = self.worker.listener("admin") if self.worker is not None else None
        site: web.BaseSite = (  # a leader's: the supervisor keeps it across restarts
            web.SockSite(runner, sock)
            if sock is not None
            else web.TCPSite(runner, admin_host, admin_port, reuse_address=True)
        )
        await site.start()
        self.admin_port = _bound_port(runner)

    def _preview_host(self) -> str:
        address = self.settings.preview_address
        return address[0] if address is not None else "127.0.0.1"

    async def _open_preview(self, ctx: ProxyContext) -> None:
        """The preview listener, when set: the same context (routes, pools, timeouts, drain)
        as the proxy listener, but its connections send every request to the candidate."""
        address = self.settings.preview_address
        if address is None:
            return
        host, port = address
        loop = asyncio.get_running_loop()
        sock = self.worker.listener("preview") if self.worker is not None else None
        if sock is not None:
            self._preview_server = await loop.create_server(
                lambda: ClientConnection(ctx, preview=True), sock=sock
            )
        else:
            self._preview_server = await loop.create_server(
                lambda: ClientConnection(ctx, preview=True), host, port, reuse_address=True
            )
        self.preview_port = self._preview_server.sockets[0].getsockname()[1]
        logger.info("preview listener on %s:%d: always the candidate", host, self.preview_port)

    def _follow_snapshots(self, control: Controller, ctx: ProxyContext) -> None:
        """Subscribe every follower of the config snapshot, in the order a swap reaches them:

        1. the recorder: series (at zero) for the routes' versions, windows of removed routes
           dropped — first, so that everything after it records into series that exist;
        2. the pool janitor: pools of upstreams no route names any more close after a grace;
        3. the health book: addresses that stay keep their health, new ones start healthy,
           a new candidate is not ready until checked; then the prober, which runs the
           checks the book now asks for (before the controller reads the candidate's health);
        4. the rollout controller: a new config wakes its tick, so rollouts follow it at once;
        5. the proxy context: the headers the routes read, the synthetic-traffic markers;
        6. the mirror: a lane (queue, workers) per route that mirrors to its candidate.

        The reloader, the admin API and the controller swap snapshots; they follow none."""
        for follow in (
            self.recorder.on_swap,
            self.janitor.on_swap,
            self.health.on_swap,
            self.prober.on_swap,
            control.on_swap,
            ctx.on_swap,
            self.mirror.on_swap,
        ):
            self.state.subscribe(follow)

    def _build_context(self) -> ProxyContext:
        s = self.settings
        self.clock.now = time.monotonic()
        access_log = self.access_log = AccessLog(s.log_format, None) if s.access_log else None
        ctx = ProxyContext(
            self.state,
            self.pools,
            self.recorder,
            self.clock,
            log=access_log.log if access_log is not None else None,
            header_timeout=s.header_timeout,
            body_timeout=s.body_timeout,
            read_timeout=s.read_timeout,
            client_idle_timeout=s.client_idle_timeout,
            tunnel_idle_timeout=s.tunnel_idle_timeout,
            max_connections=s.max_connections or connections_for_fd_limit(),
            max_header_bytes=s.max_header_bytes,
            max_headers=s.max_headers,
            max_body_bytes=s.max_body_bytes,
            trusted_proxies=s.trusted_proxies,
            via=s.via,
            health=self.health,
        )
        ctx.ab = self.recorder.ab  # one book: the data path counts, the controller takes
        return ctx

    def _build_control(self) -> Controller:
        store: StateBackend | None = None
        leads = self.worker is None or self.worker.leader  # a follower keeps no rollout state
        if self.settings.state is not None and leads:
            from splitproxy.replicas.redisstore import RedisStateStore

            try:  # connects at its first command: the proxy never waits on Redis to start
                store = RedisStateStore(self.settings.state, self.settings.state_namespace)
            except ValueError as exc:
                raise ConfigError([Problem("state", str(exc))]) from None
            logger.info("rollout state in Redis at %s", store.location)
        elif self.settings.state_dir is not None:
            try:
                store = StateStore(self.settings.state_dir)
            except OSError as exc:
                problem = Problem("state_dir", f"cannot use {self.settings.state_dir}: {exc}")
                raise ConfigError([problem]) from None
        elif leads:
            logger.info("no state_dir: rollout state is kept in memory only")
        control = Controller(
            self.state,
            self.recorder,
            store=store,
            options=self.control_options,
            health=self.health.candidate,  # readiness before judgement, unhealthy timeouts
        )
        self.recorder.registry.register(control.metrics)
        return control

    def _tick(self) -> float:
        s = self.settings
        shortest = min(s.header_timeout, s.body_timeout, s.read_timeout, s.client_idle_timeout,
                       s.upstream_idle_timeout)  # fmt: skip
        return max(0.02, min(0.5, shortest / 5))

    async def _sweep(self, ctx: ProxyContext) -> None:
        tick = self._tick()
        while True:
            await asyncio.sleep(tick)
            ctx.sweep(time.monotonic())
            self.health.tick(time.time())  # ejections that are over turn to probing

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reloader.request, "sighup")

    def request_stop(self) -> None:
        if not self.draining:
            logger.info("stopping: draining in-flight requests")
        self.draining = True
        self._stop.set()

    async def stopped(self) -> None:
        """Return when SIGTERM, SIGINT or `request_stop` asked the server to stop."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        s = self.settings
        self.draining = True
        if self.reloader is not None:
            await self.reloader.stop()
        if self.control is not None:
            await self.control.stop()
        if self.replica is not None:  # after the last save: then the lease goes back
            await self.replica.close()
        await self.prober.stop()
        ctx = self.ctx
        if s.drain_delay > 0:
            await asyncio.sleep(s.drain_delay)
        for listener in (self._proxy_server, self._preview_server):
            if listener is not None:
                listener.close()
        if ctx is not None:
            ctx.start_draining()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + s.drain_timeout
            while ctx.connections and loop.time() < deadline:  # noqa: ASYNC110 - polled, few
                await asyncio.sleep(0.02)
            for conn in list(ctx.connections):
                conn.abort()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.mirror.stop()
        if self.access_log is not None:  # the last lines, without blocking the loop on them
            self.access_log.flush()
            await asyncio.to_thread(self.access_log.close)
        self.pools.abort_all()
        self.janitor.abort_all()
        for listener in (self._proxy_server, self._preview_server):
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 1.0)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.git is not None:
            self.git.close()
        logger.info("stopped")


def connections_for_fd_limit() -> int:
    """The default ``max_connections``: what the open-file limit allows, keeping room for
    the listeners, logs and state files, and one upstream connection per client connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, (soft - 128) // 2)


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available (the data path is built for it), asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve(settings: Settings, routing_text: str | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT; the exit code for the CLI."""

    async def main() -> int:
        server = Server(settings, routing_text)
        try:
            await server.start()
        except ConfigError as exc:
            print(exc.describe(), file=sys.stderr)
            await server.shutdown()
            return 1
        except OSError as exc:
            print(f"splitproxy: cannot listen: {exc}", file=sys.stderr)
            await server.shutdown()
            return 1
        server.install_signal_handlers()
        try:
            await server.stopped()
        finally:
            await server.shutdown()
        return 0

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())
