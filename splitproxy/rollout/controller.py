"""The rollout controller: ticks one analyzer per route with a ``rollout`` and applies its actions.

Theory of operation
-------------------
`Controller` is the only thing that turns the analyzer's decisions into effects. About once a
second (``ControlOptions.tick``; at once after a reload, a manual command or a gate's answer)
it ticks every route's `analyzer.Analyzer` with a `messages.Observation` built from:

- the route's live windows (``stats.py``): the buckets completed since the previous tick,
  each exactly once (``observations(route, last, until=now)``, then ``last`` moves to the
  largest ``end`` returned);
- the candidate the routing file names now (`state.candidate_identity`);
- the answers of gating hooks that came back since the previous tick (`GateResult`);
- the values external checks (Prometheus, web) produced since the previous tick, read in the
  background every ``external_interval`` while the rollout is active;
- a manual command, when `Controller.command` ticks a route out of turn.

and applies what comes back:

- ``SetWeight`` becomes the route's ``rollout`` weight in `state.RuntimeState`, which wins
  over the file's and runtime weights (see ``state.py``); ``None`` hands the route back to the
  file. After every tick the state is reconciled with ``analyzer.weight``, so a resumed
  analyzer's weight is applied too;
- ``CallHook`` POSTs to the route's hooks of that gate (all must answer 2xx); the outcome
  returns as a `GateResult` on the next tick (a failing ``pre-rollout`` or ``step`` hook is a
  failed check; ``confirm-promotion`` keeps waiting). A gate without a hook (removed by a
  reload) passes;
- ``Emit`` goes to the decision ledger (bounded per route, persisted with the state), to the
  log, to the ``event`` hooks, to ``post-rollout`` (promoted or rolled back) and ``rollback``
  hooks, and to the ``splitproxy_rollouts_total`` / duration metrics.

*Config reloads.* When the routing file changes, analyzers are created for routes that gained
a ``rollout`` (resumed from ``state_dir`` when a saved state exists), reconfigured for changed
specs (a changed spec restarts a running rollout from its first step; hooks are not part of
the spec the analyzer sees, so editing a hook does not restart anything), and dropped for
routes that lost theirs: the rollout is abandoned (recorded) and the file's weight applies.

*Durable state.* With ``state_dir`` set, every tick that emitted an event or moved the weight
(and every ``checkpoint`` seconds while a rollout is active, and at shutdown) writes
``{"format": 1, "analyzer": codec.encode(analyzer), "ledger": [...]}`` for the route through
`store.StateStore` (atomic rename) from a background thread, one write at a time, newest
wins. At start the saved state is resumed: a rollout continues at the same step and weight, a
rolled-back revision stays rolled back. Without ``state_dir`` the state lives in memory only,
and the status says so.

*Time.* The analyzer is ticked with wall-clock time (the clock of the live windows), so a
rollout's time survives a restart; the time the proxy was down counts toward a step's
interval and ``max_duration`` (the step still needs its ``min_requests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, cast

import aiohttp

from splitproxy.config import Hook, PrometheusCheck, Rollout, Route, RoutingConfig, WebCheck
from splitproxy.config.vocabulary import GATES, Gate
from splitproxy.dataplane.state import RuntimeState, Snapshot, candidate_identity
from splitproxy.errors import Conflict, NotReady, UnknownRoute
from splitproxy.metrics import Recorder
from splitproxy.rollout.analyzer import ACTIVE, PHASES, TRANSITIONS, Analyzer
from splitproxy.rollout.codec import decode, encode
from splitproxy.rollout.hooks import HookClient, HookResult, slack_text
from splitproxy.rollout.messages import (
    CallHook,
    Command,
    Emit,
    Event,
    GateResult,
    ManualCommand,
    Observation,
    SetWeight,
)
from splitproxy.rollout.samples import path_class_slots, samples_for
from splitproxy.rollout.sources import SourceError, query_prometheus, read_web
from splitproxy.rollout.store import StateStore
from splitproxy.rollout.traffic import SyntheticTraffics, route_host

logger = logging.getLogger("splitproxy.rollout.controller")

COMMANDS: Final[tuple[Command, ...]] = ("promote", "rollback", "pause", "resume", "retry")
STATE_FORMAT: Final = 1
HISTORY_SHOWN: Final = 20  # ledger events in a route's status
NOTIFY_QUEUE: Final = 1000  # notifications waiting to be sent; more are dropped (and logged)

ExternalCheck = PrometheusCheck | WebCheck
# Reads an external check once: its value, None for "no data"; raises SourceError.
ExternalReader = Callable[[ExternalCheck], Awaitable[float | None]]


class HookSender(Protocol):
    """Sends one hook call (`hooks.HookClient` is one)."""

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = ...,
        retries: int = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> HookResult: ...


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """Tuning of the controller (the defaults suit production; tests shorten them)."""

    tick: float = 1.0  # seconds between ticks
    checkpoint: float = 10.0  # save an active rollout's state at least this often
    ledger_size: int = 200  # events kept (and persisted) per route
    # seconds between two reads of an external check; None: half the rollout's interval,
    # between 0.25 s and 30 s (so each step window sees a fresh value)
    external_interval: float | None = None
    notify_drain: float = 2.0  # at shutdown, how long queued notifications may still go out


def analyzer_spec(rollout: Rollout) -> Rollout:
    """The spec the analyzer sees: without hooks, and without synthetic traffic the verdicts
    ignore, so editing either restarts nothing (neither changes the evidence)."""
    update: dict[str, Any] = {}
    if rollout.hooks:
        update["hooks"] = ()
    if rollout.traffic is not None and not rollout.traffic.judge:
        update["traffic"] = None
    return rollout.model_copy(update=update) if update else rollout


def judges_synthetic(route: Route | None) -> bool:
    """Does this route's rollout count its synthetic traffic in the verdicts?"""
    traffic = route.rollout.traffic if route is not None and route.rollout is not None else None
    return traffic is not None and traffic.judge


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no ``Infinity``
    (an unbounded confidence interval or an overwhelming e-value shows as null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def hook_label(hook: Hook, index: int) -> str:
    """How a hook is named in the ledger and the log (never its URL: it may hold a secret)."""
    return f"hook {hook.name!r}" if hook.name else f"{hook.on} hook #{index + 1}"


def refusal(name: str, command: Command, analyzer: Analyzer) -> str:
    """Why ``command`` is refused now, and when it would be accepted."""
    phase = analyzer.phase
    if command == "resume":
        allowed = [p for p in PHASES if "resume" in TRANSITIONS[p] or "proceed" in TRANSITIONS[p]]
    else:
        allowed = [p for p in PHASES if command in TRANSITIONS[p]]
    when = " or ".join(allowed)
    return f"cannot {command} route {name!r}: its rollout is {phase}; {command} applies when {when}"


@dataclass(eq=False)
class _Rollout:
    """One route's analyzer and what the controller keeps beside it."""

    name: str
    rollout: Rollout
    analyzer: Analyzer
    ledger: deque[dict[str, Any]]
    last: float = 0.0  # the end of the newest live-window bucket consumed
    saved_at: float = -math.inf
    gate_results: list[GateResult] = field(default_factory=list)
    gates_in_flight: set[tuple[Gate, int]] = field(default_factory=set)
    external_values: dict[str, float | None] = field(default_factory=dict)
    external_last: dict[str, tuple[float | None, float, str | None]] = field(default_factory=dict)
    external_polled_at: dict[str, float] = field(default_factory=dict)
    external_in_flight: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def configure(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.analyzer.reconfigure(analyzer_spec(rollout))
        self.analyzer.gates = rollout.gates

    def external_checks(self) -> tuple[ExternalCheck, ...]:
        return tuple(c for c in self.rollout.checks if isinstance(c, PrometheusCheck | WebCheck))


class Controller:
    """Ticks the analyzers and applies their actions (see the module docstring)."""

    def __init__(
        self,
        state: RuntimeState,
        recorder: Recorder,
        *,
        store: StateStore | None = None,
        hooks: HookSender | None = None,
        reader: ExternalReader | None = None,
        clock: Callable[[], float] = time.time,
        options: ControlOptions | None = None,
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.store = store
        self.hooks = hooks
        self.reader = reader
        self.clock = clock
        self.options = options or ControlOptions()
        self._routes: dict[str, _Rollout] = {}
        self._ledgers: dict[str, deque[dict[str, Any]]] = {}
        self._config: RoutingConfig | None = None
        self._dirty: dict[str, dict[str, Any]] = {}  # route -> the document to write
        self._retired: dict[str, dict[str, Any]] = {}  # memory only: dropped rollouts' state
        self.persist_error: str | None = None
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._notices: asyncio.Queue[tuple[Hook, dict[str, Any]]] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._traffic_session: aiohttp.ClientSession | None = None
        # synthetic traffic; it starts once the server sets `traffics.base_url` (its listener)
        self.traffics: SyntheticTraffics | None = None
        self.dropped_notices = 0
        state.subscribe(self._on_swap)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume saved rollouts, apply their weights, then tick in the background.

        Call before the proxy accepts traffic: a resumed rollout's weight is in force for the
        first request."""
        if self.hooks is None or self.reader is None:
            self._session = aiohttp.ClientSession()
            if self.hooks is None:
                self.hooks = HookClient(self._session)
            if self.reader is None:
                self.reader = make_reader(self._session)
        # its own session: synthetic requests must never carry the hooks' cookies or limits
        self._traffic_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.traffics = SyntheticTraffics(self._traffic_session)
        self.tick()
        await self.flush()
        loop = asyncio.get_running_loop()
        self._runner = loop.create_task(self._run(), name="splitproxy-control")

    async def stop(self) -> None:
        """Stop ticking, let queued notifications go out (briefly), save every rollout."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for rt in self._routes.values():
            for task in list(rt.tasks):
                task.cancel()
        if self._notices is not None and self._notifier is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notices.join(), self.options.notify_drain)
        if self._notifier is not None:
            self._notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifier
            self._notifier = None
        now = self.clock()
        for rt in self._routes.values():
            self._mark(rt, now)
        await self.flush()
        if self.traffics is not None:
            await self.traffics.close()
            self.traffics = None
        if self._traffic_session is not None:
            await self._traffic_session.close()
            self._traffic_session = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.tick)
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # a bug must not stop rollouts for good
                logger.exception("rollout tick failed")
            await self.flush()

    def _on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        if old is None or old.config is not new.config:
            self._wake.set()  # a reload: follow it now, not within a second

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Tick every rollout once (``now``: Unix time, default the clock's)."""
        now = self.clock() if now is None else now
        snapshot = self.state.snapshot
        if snapshot is None:
            return
        self._reconcile(snapshot, now)
        for rt in list(self._routes.values()):
            try:
                self._step(rt, now)
            except Exception:  # one route's failure must not stop the others
                logger.exception("rollout of route %r: tick failed", rt.name)

    def _step(self, rt: _Rollout, now: float, commands: Sequence[ManualCommand] = ()) -> None:
        snapshot = self.state.snapshot
        assert snapshot is not None
        route = snapshot.config.route(rt.name)
        identity = candidate_identity(route) if route is not None else None
        buckets = self.recorder.observations(rt.name, rt.last, until=now)
        if buckets:
            rt.last = max(rt.last, max(b.end for b in buckets))
        gates, rt.gate_results = rt.gate_results, []
        external, rt.external_values = rt.external_values, {}
        samples = samples_for(buckets, judge_synthetic=judges_synthetic(route))
        observation = Observation(identity, samples, commands, gates, external)
        self._apply(rt, now, rt.analyzer.tick(now, observation))
        self._poll_external(rt, now)
        if self.traffics is not None and route is not None and route.rollout is not None:
            self.traffics.update(
                rt.name,
                route.rollout.traffic,
                rt.analyzer.phase,
                host=route_host(route.match.host),
            )

    def _apply(
        self,
        rt: _Rollout,
        now: float,
        actions: Iterable[SetWeight | CallHook | Emit],
        rewrite: Callable[[Event], Event] | None = None,
    ) -> None:
        changed = False
        for action in actions:
            if isinstance(action, Emit):
                event = rewrite(action.event) if rewrite is not None else action.event
                self._record(rt, event)
                changed = True
            elif isinstance(action, CallHook):
                self._call_gate(rt, action, now)
            else:
                changed = True
        self._sync_weight(rt, now)
        active = rt.analyzer.phase in ACTIVE
        if changed or (active and now - rt.saved_at >= self.options.checkpoint):
            self._mark(rt, now)

    def _sync_weight(self, rt: _Rollout, now: float) -> None:
        """Make the route's rollout weight what the analyzer says (applies ``SetWeight``)."""
        snapshot = self.state.snapshot
        if snapshot is None or snapshot.config.route(rt.name) is None:
            return
        a = rt.analyzer
        have = snapshot.rollout_weights.get(rt.name)
        if a.weight is None or a.revision is None:
            if have is not None:
                self.state.clear_rollout_weight(rt.name)
            return
        want = round(a.weight, 2)
        if have is None or have.percent != want or have.candidate != a.revision:
            self.state.set_rollout_weight(rt.name, want, now, a.revision)

    # --- following the routing file -----------------------------------------------------------

    def _reconcile(self, snapshot: Snapshot, now: float) -> None:
        config = snapshot.config
        if config is self._config:
            return
        self._config = config
        wanted = {r.name: r.rollout for r in config.routes if r.rollout is not None}
        for name in [n for n in self._routes if n not in wanted]:
            self._drop(name, now)
        for name, rollout in wanted.items():
            rt = self._routes.get(name)
            if rt is None:
                self._routes[name] = self._create(name, rollout, now)
            else:
                rt.configure(rollout)

    def _create(self, name: str, rollout: Rollout, now: float) -> _Rollout:
        spec = analyzer_spec(rollout)
        gates = rollout.gates
        ledger = self._ledgers.get(name)
        if ledger is None:
            ledger = self._ledgers[name] = deque(maxlen=self.options.ledger_size)
        analyzer: Analyzer | None = None
        slots = path_class_slots(self.recorder.windows)
        # memory only: what a dropped rollout knew (so finished revisions stay finished)
        store, retired = self.store, self._retired
        data = store.load(name) if store is not None else retired.pop(name, None)
        if data is not None:
            try:
                if data.get("format") != STATE_FORMAT:
                    raise ValueError(f"unknown format {data.get('format')!r}")
                analyzer = decode(name, spec, data["analyzer"], gates=gates, path_class_slots=slots)
                saved = [e for e in data.get("ledger", ()) if isinstance(e, dict)]
                if not ledger:
                    ledger.extend(saved)
            except Exception as exc:  # a damaged or foreign file must never stop the proxy
                if self.store is None:
                    raise
                path = self.store.path(name)
                kept = path.with_name(path.name + ".rejected")
                with contextlib.suppress(OSError):  # keep it for a human; the next save replaces it
                    shutil.copyfile(path, kept)
                logger.error(
                    "cannot resume the rollout state of route %r from %s (%r); starting afresh "
                    "(a copy is kept as %s)",
                    name, path, exc, kept,
                )  # fmt: skip
                analyzer = None
        restored = analyzer is not None
        if analyzer is None:
            analyzer = Analyzer(name, spec, gates=gates, path_class_slots=slots)
        rt = _Rollout(name, rollout, analyzer, ledger)
        if restored:
            a = analyzer
            weight = "the file's weight" if a.weight is None else f"weight {a.weight:g}%"
            where = "from disk" if self.store is not None else "from memory"
            message = f"state restored {where}: {a.phase}, step {a.step_index + 1}, {weight}"
            self._record(rt, self._control_event(rt, now, "state_restored", message))
        return rt

    def _drop(self, name: str, now: float) -> None:
        """The route lost its rollout (or is gone): abandon it; the file's weight applies."""
        rt = self._routes.pop(name)
        for task in list(rt.tasks):
            task.cancel()
        if self.traffics is not None:
            self.traffics.forget(name)

        def removed(event: Event) -> Event:
            if event.kind != "abandoned":
                return event
            return replace(event, message="the rollout was removed from the routing file")

        self._apply(rt, now, rt.analyzer.tick(now, Observation(None)), rewrite=removed)
        self.state.clear_rollout_weight(name)
        self._mark(rt, now)
        if self.store is None:
            self._retired[name] = self._document(rt, now)

    # --- manual commands ----------------------------------------------------------------------

    def command(
        self, name: str, command: Command, *, reason: str = "", source: str = "admin"
    ) -> dict[str, Any]:
        """Carry out a manual command now; the route's rollout status afterwards.

        Raises `NotReady` before a config is loaded, `UnknownRoute`, and `Conflict` for a route
        without a rollout or a command its phase does not allow (with the reason)."""
        snapshot = self.state.snapshot
        if snapshot is None:
            raise NotReady("not_ready", "no routing config is loaded yet")
        now = self.clock()
        self._reconcile(snapshot, now)
        rt = self._routes.get(name)
        if rt is None:
            if snapshot.config.route(name) is None:
                raise UnknownRoute(name)
            raise Conflict("no_rollout", f"route {name!r} has no 'rollout' in the file")
        if not rt.analyzer.accepts(command):
            raise Conflict("command_refused", refusal(name, command, rt.analyzer))
        self._step(rt, now, [ManualCommand(command, source, reason)])
        status = self.route_status(name)
        assert status is not None
        return status

    # --- hooks --------------------------------------------------------------------------------

    def _call_gate(self, rt: _Rollout, call: CallHook, now: float) -> None:
        hooks = [(i, h) for i, h in enumerate(rt.rollout.hooks) if h.on == call.gate]
        if not hooks:
            # the hook was removed by a reload while the analyzer waited for it
            rt.gate_results.append(GateResult(call.gate, call.step, True, "no hook configured"))
            self._wake.set()
            return
        key = (call.gate, call.step)
        if key in rt.gates_in_flight:  # still asking: don't pile calls up
            return
        rt.gates_in_flight.add(key)
        payload = self._payload(rt, call.gate, call.gate, now, f"waiting for the {call.gate} gate")
        payload["gate_step"] = call.step
        self._spawn(rt, self._gate(rt, call, hooks, payload))

    async def _gate(
        self,
        rt: _Rollout,
        call: CallHook,
        hooks: Sequence[tuple[int, Hook]],
        payload: dict[str, Any],
    ) -> None:
        try:
            results = await asyncio.gather(*(self._send(h, payload) for _, h in hooks))
            failed = [
                f"{hook_label(h, i)}: {r.error or 'failed'}"
                for (i, h), r in zip(hooks, results, strict=True)
                if not r.ok
            ]
            rt.gate_results.append(GateResult(call.gate, call.step, not failed, "; ".join(failed)))
        finally:
            rt.gates_in_flight.discard((call.gate, call.step))
        self._wake.set()  # act on the answer now

    async def _send(self, hook: Hook, payload: Mapping[str, Any]) -> HookResult:
        assert self.hooks is not None
        body = slack_text(payload) if hook.format == "slack" else payload
        try:
            return await self.hooks.post(
                hook.url, body, timeout=hook.timeout, retries=hook.retries, headers=hook.headers
            )
        except Exception as exc:  # an unexpected failure is the hook's failure, not ours
            return HookResult(False, None, 1, f"{type(exc).__name__}: {exc}")

    def _notify(self, rt: _Rollout, event: Event, payload: dict[str, Any]) -> None:
        wanted = ["event"]
        if event.kind in ("promoted", "rolled_back"):
            wanted.append("post-rollout")
        if event.kind == "rolled_back":
            wanted.append("rollback")
        for on in wanted:
            for hook in rt.rollout.hooks:
                if hook.on == on:
                    self._enqueue(hook, {**payload, "hook": on})

    def _enqueue(self, hook: Hook, payload: dict[str, Any]) -> None:
        if self._notices is None:
            self._notices = asyncio.Queue(NOTIFY_QUEUE)
        if self._notifier is None:
            self._notifier = asyncio.get_running_loop().create_task(
                self._send_notices(self._notices), name="splitproxy-notify"
            )
        try:
            self._notices.put_nowait((hook, payload))
        except asyncio.QueueFull:
            self.dropped_notices += 1
            logger.warning("rollout notifications are piling up; dropped one (%s)", hook.on)

    async def _send_notices(self, queue: asyncio.Queue[tuple[Hook, dict[str, Any]]]) -> None:
        """Notifications go out one at a time, in order (a chat channel reads like a log)."""
        while True:
            hook, payload = await queue.get()
            try:
                result = await self._send(hook, payload)
                if not result.ok:
                    logger.warning(
                        "rollout %s: the %s hook failed after %d attempt(s): %s",
                        payload.get("route"), hook.on, result.attempts, result.error,
                    )  # fmt: skip
            finally:
                queue.task_done()

    def _payload(
        self, rt: _Rollout, hook: str, kind: str, now: float, message: str
    ) -> dict[str, Any]:
        a = rt.analyzer
        return cast(
            dict[str, Any],
            finite(
                {
                    "hook": hook,
                    "type": kind,
                    "route": rt.name,
                    "revision": a.revision,
                    "phase": a.phase,
                    "step": a.step_index + 1,
                    "weight": a.weight,
                    "message": message,
                    "at": now,
                    "checks": [c.to_dict() for c in a.checks],
                }
            ),
        )

    def _spawn(self, rt: _Rollout, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        rt.tasks.add(task)
        task.add_done_callback(rt.tasks.discard)

    async def settle(self) -> None:
        """Wait for in-flight hook calls, external reads and notifications (tests, shutdown)."""
        while True:
            tasks = [t for rt in self._routes.values() for t in rt.tasks]
            if not tasks:
                break
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._notices is not None and self._notifier is not None:
            await self._notices.join()

    # --- external checks ----------------------------------------------------------------------

    def _poll_external(self, rt: _Rollout, now: float) -> None:
        if rt.analyzer.phase not in ACTIVE or self.reader is None:
            return
        every = self.options.external_interval
        if every is None:
            every = max(0.25, min(30.0, rt.rollout.interval / 2))
        for check in rt.external_checks():
            key = check.key
            due = now - rt.external_polled_at.get(key, -math.inf) >= every
            if due and key not in rt.external_in_flight:
                rt.external_polled_at[key] = now
                rt.external_in_flight.add(key)
                self._spawn(rt, self._read(rt, check))

    async def _read(self, rt: _Rollout, check: ExternalCheck) -> None:
        assert self.reader is not None
        error: str | None = None
        value: float | None = None
        try:
            value = await self.reader(check)
        except SourceError as exc:
            error = str(exc)
        except Exception as exc:  # a reader bug is a failed reading, not a dead controller
            error = f"{type(exc).__name__}: {exc}"
        finally:
            rt.external_in_flight.discard(check.key)
        rt.external_values[check.key] = value
        rt.external_last[check.key] = (value, self.clock(), error)

    # --- the ledger and durable state ---------------------------------------------------------

    def _control_event(self, rt: _Rollout, now: float, kind: str, message: str) -> Event:
        a = rt.analyzer
        return Event(
            at=now,
            route=rt.name,
            kind=kind,
            phase=a.phase,
            previous=a.phase,
            step=a.step_index + 1,
            weight=a.weight,
            revision=a.revision,
            message=message,
            source="control",
        )

    def _record(self, rt: _Rollout, event: Event) -> None:
        entry = event.to_dict()
        rt.ledger.append(entry)
        weight = "file" if event.weight is None else f"{event.weight:g}%"
        logger.info(
            "rollout %s %s: %s (%s, step %d, weight %s): %s",
            rt.name, event.revision or "-", event.kind, event.phase, event.step, weight,
            event.message,
        )  # fmt: skip
        if event.kind in ("promoted", "rolled_back"):
            started = rt.analyzer.started_at
            seconds = event.at - started if started is not None else 0.0
            self.recorder.rollout_ended(rt.name, event.kind, seconds)
        if rt.rollout.hooks:
            # weight_after: the candidate's weight once the tick's decisions are applied (the
            # event's own weight is the one in force when it was decided)
            after = {"type": event.kind, "weight_after": rt.analyzer.weight}
            payload = cast(dict[str, Any], finite({**entry, **after}))
            self._notify(rt, event, payload)

    def _mark(self, rt: _Rollout, now: float) -> None:
        """Queue the route's state for the next `flush`."""
        rt.saved_at = now
        if self.store is not None:
            self._dirty[rt.name] = self._document(rt, now)

    def _document(self, rt: _Rollout, now: float) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "route": rt.name,
            "saved_at": now,
            "analyzer": encode(rt.analyzer),
            "ledger": list(rt.ledger),
        }

    async def flush(self) -> None:
        """Write the queued states (in a thread, one flush at a time, newest state wins)."""
        if self.store is None or not self._dirty:
            return
        async with self._flush_lock:
            docs, self._dirty = self._dirty, {}
            if not docs:
                return
            failed = await asyncio.to_thread(self._write, docs)
            for name, error in failed.items():
                self._dirty.setdefault(name, docs[name])  # try again on the next flush
                if self.persist_error != error:
                    logger.error("cannot save the rollout state of route %r: %s", name, error)
            self.persist_error = next(iter(failed.values()), None)

    def _write(self, docs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        assert self.store is not None
        failed: dict[str, str] = {}
        for name, doc in docs.items():
            try:
                self.store.save(name, doc)
            except (OSError, ValueError) as exc:
                failed[name] = str(exc)
        return failed

    # --- reads --------------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self.store is not None

    def analyzers(self) -> Mapping[str, Analyzer]:
        """The live analyzers by route (`metrics.RolloutSource`)."""
        return {name: rt.analyzer for name, rt in self._routes.items()}

    def summary(self) -> dict[str, Any]:
        """Where rollout state lives, for the top of the status."""
        if self.store is None:
            return {
                "state_dir": None,
                "persistent": False,
                "note": "memory only: rollout state is lost on restart (set --state-dir)",
            }
        return {
            "state_dir": str(self.store.directory),
            "persistent": True,
            "last_error": self.persist_error,
        }

    def route_status(self, name: str) -> dict[str, Any] | None:
        """A route's rollout as the admin API shows it; None for a route without one."""
        rt = self._routes.get(name)
        if rt is None:
            return None
        out = rt.analyzer.status()
        store = self.store
        out["state"] = {
            "persistent": store is not None,
            "file": str(store.path(name)) if store is not None else None,
            "last_error": self.persist_error,
        }
        out["hooks"] = [
            {"on": h.on, "name": h.name, "format": h.format, "gating": h.gating}
            for h in rt.rollout.hooks
        ]
        out["waiting_on_hooks"] = sorted(f"{g} (step {s})" for g, s in rt.gates_in_flight)
        out["external"] = {
            key: {"value": value, "at": at, "error": error}
            for key, (value, at, error) in sorted(rt.external_last.items())
        }
        out["history"] = list(rt.ledger)[-HISTORY_SHOWN:]
        return cast(dict[str, Any], finite(out))

    def events(
        self, route: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The decision ledger, oldest first: the newest ``limit`` events (of ``route``,
        after ``since``)."""
        if route is not None:
            ledgers: Iterable[deque[dict[str, Any]]] = [self._ledgers.get(route, deque())]
        else:
            ledgers = self._ledgers.values()
        merged = [e for ledger in ledgers for e in ledger if since is None or e["at"] > since]
        merged.sort(key=lambda e: e["at"])  # stable: a tick's events keep their order
        return cast(list[dict[str, Any]], finite(merged[-limit:] if limit > 0 else []))


def make_reader(session: aiohttp.ClientSession) -> ExternalReader:
    """Reads external checks on ``session``: a web check without ``json_path`` is 1.0 for a
    2xx answer and 0.0 otherwise (so its bound is ``min: 1``)."""

    async def read(check: ExternalCheck) -> float | None:
        if isinstance(check, PrometheusCheck):
            return await query_prometheus(
                session, check.prometheus, check.query, timeout=check.timeout
            )
        reading = await read_web(
            session,
            check.web,
            field=check.json_path,
            timeout=check.timeout,
            method=check.method,
            headers=check.headers,
            body=check.body,
        )
        if check.json_path is None:
            return 1.0 if 200 <= reading.status < 300 else 0.0
        return reading.value

    return read


__all__ = [
    "COMMANDS",
    "GATES",
    "ControlOptions",
    "Controller",
    "ExternalReader",
    "HookSender",
    "analyzer_spec",
    "finite",
    "make_reader",
]
