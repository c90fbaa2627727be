"""Hot reload of the routing file: every trigger leads to one reload path.

Theory of operation
-------------------
Four triggers ask for a reload; none of them reloads by itself:

- a **directory watch** (watchfiles) on the file's parent directory, filtered by name, so
  editors' rename-on-save, ``mv`` of a temp file and Kubernetes' ``..data`` symlink swap are
  all seen (a watch on the file itself goes deaf after the first atomic save);
- a **stat-and-hash poll** (every ``poll_interval``): a change of ``(st_dev, st_ino,
  st_mtime_ns, st_size)``, seen through symlinks, asks for a reload, and every
  ``full_check_every`` polls the content is hashed anyway (bind mounts, network file systems
  and coarse mtimes lose what inotify and stat would show);
- ``SIGHUP``; ``POST /api/v1/reload``, which waits for the outcome.

Requests are coalesced by one worker task: file events wait ``debounce`` seconds of quiet
(at most ``max_delay`` after the first), an explicit request (signal, admin) goes at once, and
whatever arrives while a reload runs causes exactly one more. The worker reads the file in a
thread, hashes it, and in that thread parses and validates it as a whole
(`config.parse_routing`) and compiles the snapshot (`RuntimeState.prepare`, reusing the compiled
form of every route whose definition did not change); back on the event loop
`RuntimeState.install` applies the weights that carry over and swaps one reference. Content
identical to what serves is a no-op. A bad file is logged with its field paths or YAML line,
counted as a failed reload and shown in status; the last good config keeps serving. Passive
triggers skip content already judged: a bad file is reported once, not once a second.

`PoolJanitor` follows every swap: pools of upstreams no route names any more leave the
registry at once and close after ``grace`` seconds (requests on the previous snapshot finish).

A routing file in git (`gitsource.GitSource`, ``-c git+URL#BRANCH:PATH``) replaces the watch
and the poll by a fetch every ``fetch_interval`` (a passive trigger); errors are named by
commit, the short commit id is in the revision, a failing fetch is told like an unreadable
file, and a commit that leaves the file as it was is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitproxy.config import (
    Route,
    RoutingConfig,
    content_hash,
    known_routes,
    load_document,
    read_routing_bytes,
    validate_routing,
)
from splitproxy.dataplane.pools import PoolRegistry, UpstreamPool
from splitproxy.dataplane.state import Prepared, RuntimeState, Snapshot, upstream_keys
from splitproxy.dataplane.swapdiff import UpstreamKeys
from splitproxy.errors import ConfigError, Problem
from splitproxy.gitsource import GitError, GitSource, short, with_commit
from splitproxy.heap import collector_paused, settle_heap
from splitproxy.reloadseed import known_at_start

logger = logging.getLogger("splitproxy.reload")

# Triggers that ask for a reload explicitly: they always re-read and report, even content
# the worker has judged before. File events (watch, poll) skip content already judged.
EXPLICIT: Final = frozenset({"sighup", "admin", "api"})  # the rest: watch, poll, fetch
# Stands for "the file could not be read" where a content hash is expected.
UNREADABLE: Final = "unreadable"

FileSignature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one pass of the reload path did."""

    loaded: bool  # the file is valid: it was applied, or it equals the serving config
    changed: bool  # a new snapshot was swapped in
    revision: str | None  # the revision serving afterwards
    problems: tuple[str, ...] = ()
    trigger: str = ""


@dataclass(frozen=True, slots=True)
class ReloadOptions:
    """How the reloader watches; the defaults suit a file edited by people and CI."""

    debounce: float = 0.2  # quiet time after a file event before reading (coalesces bursts)
    max_delay: float = 1.0  # longest a stream of events can put a reload off
    poll_interval: float = 1.0  # stat the file this often (0: no poll)
    full_check_every: int = 5  # and hash its content every this many polls
    watch: bool = True  # watch the directory (watchfiles); the poll runs regardless
    read_timeout: float = 10.0  # a read hanging longer (a dead network mount) fails the reload
    pool_grace: float | None = None  # None: the server's connect + read timeouts
    fetch_interval: float = 30.0  # a routing file in git: fetch its branch this often


# -- reading the file ----------------------------------------------------------------------


def file_signature(path: Path) -> FileSignature | None:
    """What the poll compares: identity, mtime and size of the file a path leads to."""
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap's ..data swap changes the inode
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def file_digest(path: Path) -> str:
    try:
        return content_hash(path.read_bytes())
    except OSError:
        return UNREADABLE


# How soon a thread holding the interpreter must hand it back, while a reload's thread runs.
LOOP_SWITCH_INTERVAL: Final = 0.001


@contextlib.contextmanager
def loop_first() -> Iterator[None]:
    """The event loop gets the interpreter back within 1 ms, not 5, while a reload works.

    A busy thread keeps the interpreter until the loop has waited ``sys.getswitchinterval()``
    for it (5 ms by default), and the loop waits again after each of its own waits for the
    network: a proxied request does several, so each took ~20 ms longer while a large file
    was parsed. The reload's thread runs somewhat slower in exchange."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, LOOP_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# -- what changed --------------------------------------------------------------------------


def describe_changes(old: RoutingConfig | None, new: RoutingConfig) -> str:
    """One line for the log: routes added, removed and changed (with weight moves)."""
    if old is None:
        return f"{len(new.routes)} route(s)"
    before = {r.name: r for r in old.routes}
    after = {r.name: r for r in new.routes}
    parts = []
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    changed = []
    for name, route in after.items():
        prev = before.get(name)
        if prev is None or prev == route:
            continue
        if prev.model_copy(update={"weight": route.weight}) == route:
            changed.append(f"{name} (weight {prev.weight:g} -> {route.weight:g})")
        else:
            changed.append(name)
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    if changed:
        parts.append("changed " + ", ".join(changed))
    if [r.name for r in old.routes if r.name in after] != [n for n in after if n in before]:
        parts.append("route order changed")
    return "; ".join(parts) or "no route changed"


# -- the reloader --------------------------------------------------------------------------


class Reloader:
    """Watches the routing file (or fetches its git branch: ``source`` is a `GitSource`)
    and applies its changes through one reload path."""

    def __init__(
        self,
        source: Path | GitSource,
        state: RuntimeState,
        record: Callable[[bool, float], None],
        options: ReloadOptions = ReloadOptions(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.git = source if isinstance(source, GitSource) else None
        # not resolved: the symlink chain is what gets swapped
        self.path = source.absolute() if isinstance(source, Path) else Path(source.spec.path)
        self.fetch_interval = options.fetch_interval
        self.state = state
        self.record = record  # counts each load or rejection (`Recorder.config_reloaded`)
        self.debounce = options.debounce
        self.max_delay = options.max_delay
        self.poll_interval = options.poll_interval
        self.full_check_every = max(1, options.full_check_every)
        self.watch = options.watch
        self.read_timeout = options.read_timeout
        self.clock = clock
        self.last_error: str | None = None
        self.last_problems: tuple[str, ...] = ()
        self.passes = 0  # how many times the reload path has run to its end
        self.watching = False  # the directory watch is up
        self._judged = ""  # the content hash the reload path judged last (good or bad)
        # the routes of the file validated last, by definition as written (`known_routes`):
        # a route is valid or not by its definition alone, so these are taken as they are
        self._known: dict[str, Route] = {}
        self._signature: FileSignature | None = None
        self._wanted = asyncio.Event()
        self._urgent = asyncio.Event()
        self._stop_watch = asyncio.Event()
        self._requested_at = 0.0
        self._triggers: set[str] = set()
        self._waiters: list[asyncio.Future[ReloadOutcome]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, the poll and (if enabled) the directory watch."""
        if self._tasks:
            return
        snapshot = self.state.snapshot
        self._judged = snapshot.content_hash if snapshot is not None else ""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._worker(), name="splitproxy-reload"))
        if self.git is not None:  # no file to watch or stat: the branch is fetched instead
            self._tasks.append(loop.create_task(self._fetches(), name="splitproxy-reload-fetch"))
            return
        self._signature = file_signature(self.path)
        self._tasks.append(loop.create_task(self._seed(), name="splitproxy-reload-seed"))
        if self.poll_interval > 0:
            self._tasks.append(loop.create_task(self._poll(), name="splitproxy-reload-poll"))
        if self.watch:
            self._stop_watch.clear()
            self._tasks.append(loop.create_task(self._watch(), name="splitproxy-reload-watch"))

    async def stop(self) -> None:
        """Stop every task; callers waiting on a reload get a failure outcome."""
        self._stop_watch.set()  # the watch thread sees it within one step (50 ms)
        tasks, self._tasks = self._tasks, []
        watch = [t for t in tasks if t.get_name() == "splitproxy-reload-watch"]
        if watch:
            await asyncio.wait(watch, timeout=1.0)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(self._outcome(False, False, ("the proxy is stopping",), "stop"))

    async def _seed(self) -> None:  # the first reload then validates only what changed
        known = await known_at_start(self.state, self.path)
        if known and not self._known:  # (no reload has set it since)
            self._known = known

    # -- triggers --------------------------------------------------------------------------
    def request(self, trigger: str) -> None:
        """Ask for a reload (safe from signal handlers and callbacks on the loop)."""
        self._triggers.add(trigger)
        self._requested_at = asyncio.get_running_loop().time()
        if trigger in EXPLICIT:
            self._urgent.set()
        self._wanted.set()

    async def reload_now(self, trigger: str = "api") -> ReloadOutcome:
        """Reload at once (through the same path) and return the outcome."""
        if not self._tasks:
            raise RuntimeError("the reloader is not running")
        waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.request(trigger)
        return await waiter

    async def admin_reload(self) -> tuple[bool, list[str]]:
        """`AdminContext.reload`: (the file is valid and serving, its problems)."""
        outcome = await self.reload_now("admin")
        return outcome.loaded, list(outcome.problems)

    # -- the one reload path ---------------------------------------------------------------
    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            first = loop.time()
            while not self._urgent.is_set():  # debounce: quiet for `debounce`, within max_delay
                delay = min(self._requested_at + self.debounce, first + self.max_delay)
                delay -= loop.time()
                if delay <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._urgent.wait()
            self._wanted.clear()
            self._urgent.clear()
            triggers, self._triggers = self._triggers, set()
            waiters, self._waiters = self._waiters, []
            outcome = self._outcome(False, False, ("the proxy is stopping",), "stop")
            try:
                outcome = await self._reload(triggers)
            except Exception as exc:  # a bug must not stop hot reload for good
                logger.exception("reload failed unexpectedly")
                outcome = self._outcome(False, False, (f"internal error: {exc!r}",), "")
            finally:  # also when stopped mid-reload: nobody waits forever
                self.passes += 1
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(outcome)

    async def _reload(self, triggers: set[str]) -> ReloadOutcome:
        trigger = ",".join(sorted(triggers))
        explicit = bool(triggers & EXPLICIT)
        commit: str | None = None
        if self.git is not None:  # git runs as a subprocess: the loop never waits on it
            try:
                fetched = await self.git.fetch()
            except GitError as exc:
                problem = ConfigError([Problem("", str(exc))], str(self.git.spec))
                return self._fail(UNREADABLE, problem, trigger, quiet=not explicit)
            text, digest, commit = fetched.text, fetched.digest, fetched.commit
        else:
            read = await self._read_file(trigger, explicit)
            if isinstance(read, ReloadOutcome):
                return read
            text, digest = read
        current = self.state.snapshot
        if digest == self._judged and not explicit:
            return self._outcome(self.last_error is None, False, self.last_problems, trigger)
        if current is not None and digest == current.content_hash:
            self._judged = digest
            if self.last_error is not None:
                self._succeed()
                logger.info(
                    "routing file is valid again and equal to the serving revision %s",
                    current.revision,
                )
            return self._outcome(True, False, (), trigger)
        with collector_paused():  # until the heap has settled: see `collector_paused`
            try:  # in a thread too: parsing, validating and compiling a large file takes long
                with loop_first():
                    prepared, changes = await asyncio.to_thread(
                        self._prepare, text, digest, current, commit
                    )
            except ConfigError as exc:
                return self._fail(digest, exc, trigger)
            self._judged = digest
            new = self.state.install(prepared, self.clock())  # on the loop: one swap, O(1)-ish
            self._succeed()
            logger.info(
                "routing file loaded (%s): revision %s%s; %s",
                trigger or "start",
                new.revision,
                f" (was {current.revision})" if current is not None else "",
                changes,
            )
            del prepared, current, new  # the old config is garbage now: freed, not walked
            settle_heap()
        return self._outcome(True, True, (), trigger)

    async def _read_file(self, trigger: str, explicit: bool) -> tuple[str, str] | ReloadOutcome:
        """The file's text and hash, or the outcome of a failed read."""
        try:  # in threads: a stat or read on a dead network mount must not block the loop
            async with asyncio.timeout(self.read_timeout):
                self._signature = await asyncio.to_thread(file_signature, self.path)
                return await asyncio.to_thread(read_routing_bytes, self.path)
        except TimeoutError:
            timed_out = ConfigError([Problem("", "reading the file timed out")], str(self.path))
            return self._fail(UNREADABLE, timed_out, trigger)
        except ConfigError as exc:
            return self._fail(UNREADABLE, exc, trigger, quiet=not explicit)

    def _prepare(
        self, text: str, digest: str, current: Snapshot | None, commit: str | None = None
    ) -> tuple[Prepared, str]:
        """In a worker thread: parse, validate and compile the file, and word its changes.
        Routes written exactly as in the file loaded last are not validated again. A file
        from git is named by its commit in errors and in the revision."""
        source = f"commit {short(commit)}" if commit is not None else str(self.path)
        document = load_document(text, source)
        config = validate_routing(document, source, self._known)
        if commit is not None:
            config = with_commit(config, commit)
        prepared = self.state.prepare(config, digest)
        self._known = known_routes(document, config)
        return prepared, describe_changes(current.config if current is not None else None, config)

    def _succeed(self) -> None:
        self.last_error = None
        self.last_problems = ()
        self.record(True, self.clock())

    def _fail(
        self, digest: str, exc: ConfigError, trigger: str, *, quiet: bool = False
    ) -> ReloadOutcome:
        problems = tuple(str(p) for p in exc.problems)
        again = quiet and digest == self._judged and problems == self.last_problems
        self._judged = digest
        self.last_error = exc.describe()
        self.last_problems = problems
        if not again:
            self.record(False, self.clock())
            snapshot = self.state.snapshot
            logger.error(
                "routing file rejected (%s), revision %s keeps serving:\n%s",
                trigger,
                snapshot.revision if snapshot is not None else "(none)",
                exc.describe(),
            )
        return self._outcome(False, False, problems, trigger)

    def _outcome(
        self, loaded: bool, changed: bool, problems: tuple[str, ...], trigger: str
    ) -> ReloadOutcome:
        snapshot = self.state.snapshot
        revision = snapshot.revision if snapshot is not None else None
        return ReloadOutcome(loaded, changed, revision, problems, trigger)

    # -- passive triggers ------------------------------------------------------------------
    async def _fetches(self) -> None:
        """A routing file in git: fetch its branch every ``fetch_interval``."""
        while True:
            await asyncio.sleep(self.fetch_interval)
            self.request("fetch")

    async def _poll(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(self.poll_interval)
            polls += 1
            try:
                async with asyncio.timeout(self.read_timeout):
                    signature = await asyncio.to_thread(file_signature, self.path)
                    if signature != self._signature:
                        self._signature = signature
                        self.request("poll")
                    elif polls % self.full_check_every == 0:
                        digest = await asyncio.to_thread(file_digest, self.path)
                        if digest != self._judged:
                            self.request("poll")
            except TimeoutError:
                logger.warning("checking %s took over %gs", self.path, self.read_timeout)

    def _names(self) -> set[str]:
        """Entry names in the watched directory whose change may change the file's content."""
        names = {self.path.name}
        with contextlib.suppress(OSError):
            real = Path(os.path.realpath(self.path))
            if real.parent == self.path.parent:
                names.add(real.name)
        return names

    def _relevant(self, _change: object, changed: str) -> bool:
        name = os.path.basename(changed)
        # "..data", "..data_tmp", "..2024_..": the entries a Kubernetes volume swaps
        return name.startswith("..") or name in self._names()

    async def _watch(self) -> None:
        try:
            from watchfiles import awatch
        except ImportError:  # pragma: no cover - a dependency; the poll still sees changes
            logger.warning("watchfiles is not installed; polling %s only", self.path)
            return
        failures = 0
        while not self._stop_watch.is_set():
            try:
                async for _ in awatch(
                    self.path.parent,
                    watch_filter=self._relevant,
                    debounce=400,
                    step=50,
                    stop_event=self._stop_watch,
                    rust_timeout=1_000,
                    recursive=False,
                ):
                    self.watching = True
                    failures = 0
                    self.request("watch")
            except Exception as exc:  # no watch: the poll still sees every change
                self.watching = False
                failures += 1
                delay = min(30.0, 2.0**failures)
                logger.warning(
                    "cannot watch %s (%s); polling every %gs, retrying the watch in %gs",
                    self.path.parent, exc, self.poll_interval, delay,
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop_watch.wait()
        self.watching = False


# -- pools of removed upstreams --------------------------------------------------------------


class PoolJanitor:
    """Closes the pools of upstreams no route names any more, ``grace`` seconds after the swap.

    Subscribed to `RuntimeState`: on every swap, pools whose address the new snapshot does not
    name leave the registry (so no new request picks them) and are closed after ``grace``;
    closing is itself gentle (idle connections close, busy ones when their exchange ends).
    A request still running on an older snapshot may open a fresh pool for a removed address
    (a retry, say); the next swap or the next closing pass retires it the same way."""

    def __init__(self, pools: PoolRegistry, state: RuntimeState, grace: float) -> None:
        self.pools = pools
        self.state = state
        self.grace = grace
        self.retiring: dict[UpstreamPool, asyncio.TimerHandle] = {}
        self.closed, self.keys = 0, UpstreamKeys()  # pools closed so far; what routes name

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        self._retire(self.keys.follow(old, new))  # walked anew only if backends changed

    def _retire(self, keep: set[tuple[str, int]]) -> None:
        removed = self.pools.retain_only(keep)
        if not removed:
            return
        loop = asyncio.get_running_loop()
        for pool in removed:
            logger.info(
                "upstream %s:%d is no longer used; its pool closes in %gs",
                pool.host, pool.port, self.grace,
            )  # fmt: skip
            self.retiring[pool] = loop.call_later(self.grace, self._close, pool)

    def _close(self, pool: UpstreamPool) -> None:
        self.retiring.pop(pool, None)
        pool.close()
        self.closed += 1
        snapshot = self.state.snapshot
        if snapshot is not None:  # pools a straggler re-opened since the swap
            self._retire(upstream_keys(snapshot))

    def abort_all(self) -> None:
        """At shutdown: cut what is still retiring."""
        retiring, self.retiring = self.retiring, {}
        for pool, handle in retiring.items():
            handle.cancel()
            pool.abort_all()


# -- the revision as a metric ----------------------------------------------------------------


class ConfigInfoCollector(Collector):
    """``splitproxy_config_info{revision,content_hash} 1``: which config is serving."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "splitproxy_config_info",
            "The routing file revision serving now (the user's revision + a content hash).",
            labels=("revision", "content_hash"),
        )
        snapshot = self.state.snapshot
        if snapshot is not None:
            info.add_metric((snapshot.revision, snapshot.content_hash), 1)
        yield info
