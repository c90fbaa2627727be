"""The rollout controller: ticks one analyzer per route with a ``rollout`` and applies its actions.

Theory of operation
-------------------
`Controller` is the only thing that turns the analyzer's decisions into effects. About once a
second (``ControlOptions.tick``; at once after a reload, a manual command or a gate's answer)
it ticks every route's `analyzer.Analyzer` with a `messages.Observation` built from:

- the route's live windows (``windows.py``): the buckets completed since the previous tick,
  each exactly once (``observations(route, last, until=now)``, then ``last`` moves to the
  largest ``end`` returned);
- the candidate the routing file names now (`state.candidate_identity`);
- the candidate's answers to mirrored copies since the previous tick (`Recorder.mirror_take`,
  passed on while copies go to it: the route's ``mirror:`` or the shadow phase);
- the answers of gating hooks that came back since the previous tick (`GateResult`, from the
  hook dispatcher; asked, as the external values and test jobs' results below, only of a
  route the three added to ``_pending``: nearly every route-tick has none of them);
- the values external checks (Prometheus, web) produced since the previous tick, read in the
  background every ``external_interval`` while the rollout is active (by the poller);
- a manual command, when `Controller.command` ticks a route out of turn.

and applies what comes back: ``SetWeight`` becomes the route's ``rollout`` weight in
`state.RuntimeState` (it wins over the file's and runtime weights; ``None`` hands the route back
to the file; after every tick the state is reconciled with ``analyzer.weight``, and marked
``shadow`` while the rollout is in its shadow phase, which the mirror follows); ``CallHook``
goes to the hook dispatcher, whose answer returns as a `GateResult` on the next tick;
``RunTest`` to the test job runner, whose outcome returns as a `TestOutcome`; ``Emit`` to the
decision ledger (bounded per route, persisted), the log, the notification hooks and the
rollout metrics. It also keeps each route's synthetic traffic in step with the phase.

*The parts*, each owning its asyncio tasks: `persistence.Persistence` (state, ledger and
verdict writes), `dispatch.HookDispatcher` (gate calls, ordered notifications),
`external.ExternalPoller` (external checks), `testjob.TestJobRunner` (blue/green test jobs)
and `revert.RevertWindows` (the previous stable kept warm after a promotion). The metric
families are `metrics.RolloutMetrics`.

*Config reloads* create analyzers for routes that gained a ``rollout`` (resumed from
``state_dir`` when a trusted saved state exists), reconfigure changed specs (a changed spec
restarts a running rollout; hooks are not part of the analyzer's spec) and abandon the
rollouts of routes that lost theirs (the file's weight applies). *Durable state*: every tick
that emitted an event or moved the weight (and every ``checkpoint`` seconds while active, and
at shutdown) queues the route's state for a background, atomic write.

*Time.* The analyzer is ticked with wall-clock time (the clock of the live windows), so a
rollout's time survives a restart; the time the proxy was down counts toward a step's
interval and ``max_duration`` (the step still needs its ``min_requests``).

*Pacing.* The background loop steps the routes in slices of a few ms with a turn of the event
loop between two, so serving never waits for a whole tick (`pacing`: the rules for reloads,
commands, leadership and ``stop`` mid-pass), and settles the heap after each pass (`heap`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from splitproxy.config import Rollout, Route, RoutingConfig
from splitproxy.config.vocabulary import GATES
from splitproxy.dataplane.health import CandidateHealth
from splitproxy.dataplane.state import RuntimeState, Snapshot, candidate_identity
from splitproxy.errors import Conflict, NotReady, UnknownRoute
from splitproxy.heap import Settler
from splitproxy.metrics import Recorder
from splitproxy.rollout import ledger, shadow
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.dispatch import HookDispatcher, HookSender
from splitproxy.rollout.external import ExternalPoller, ExternalReader
from splitproxy.rollout.ledger import RouteRollout as _Rollout
from splitproxy.rollout.messages import (
    Action,
    CallHook,
    Command,
    Emit,
    Event,
    GateResult,
    ManualCommand,
    Observation,
    RunTest,
    TestOutcome,
)
from splitproxy.rollout.metrics import RolloutMetrics
from splitproxy.rollout.options import COMMANDS, ControlOptions
from splitproxy.rollout.pacing import Pass, Ticker, make_paced, run_paced
from splitproxy.rollout.persistence import Persistence, Rejected, Restored, adopt_verdicts
from splitproxy.rollout.phases import ACTIVE
from splitproxy.rollout.reports import finite, gate_payload, merged_events, refusal, rollout_status
from splitproxy.rollout.revert import RevertWindows
from splitproxy.rollout.samples import (
    analyzer_spec,
    judges_synthetic,
    path_class_slots,
    window_feed,
)
from splitproxy.rollout.store import StateBackend
from splitproxy.rollout.testjob import TestJobRunner
from splitproxy.rollout.traffic import SyntheticTraffics, route_host
from splitproxy.rollout.weightsync import sync_weight

logger = logging.getLogger("splitproxy.rollout.controller")
_NOTHING: tuple[Any, ...] = ()
_NO_VALUES: Mapping[str, float | None] = Observation._field_defaults["external"]  # read only
_new = tuple.__new__


class Controller:
    """Ticks the analyzers and applies their actions (see the module docstring).

    ``store``: where rollout state is saved (None: memory only); ``hooks`` and ``reader``
    replace the hook client and the external-check reader (tests); ``health`` tells a route's
    candidate's readiness and availability each tick (None: unknown); without the first two the
    dispatcher and the poller open aiohttp sessions of their own at `start`."""

    def __init__(
        self,
        state: RuntimeState,
        recorder: Recorder,
        *,
        store: StateBackend | None = None,
        hooks: HookSender | None = None,
        reader: ExternalReader | None = None,
        health: Callable[[str], CandidateHealth] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        options: ControlOptions | None = None,
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.clock = clock
        self.monotonic = monotonic  # measures a slice of a pass (see `pacing`)
        self.health = health  # route -> its candidate's health; None: unknown (ready, healthy)
        self.options = options or ControlOptions()
        self.metrics = RolloutMetrics(self)
        self.ticker = Ticker(self.paced_tick, self.options.tick, after=Settler())
        self.persistence = Persistence(store, retry=self.options.tick)
        # routes a gate answer, an external value or a test job's result waits for (the three
        # parts add to it; `_step` takes from it: see the module docstring)
        self._pending: set[str] = set()
        self.dispatcher = HookDispatcher(
            hooks,
            on_answer=self.ticker.wake,
            metrics=self.metrics,
            drain=self.options.notify_drain,
            pending=self._pending,
        )
        self.poller = ExternalPoller(reader, clock, pending=self._pending)
        self.tests = TestJobRunner(clock, on_done=self.ticker.wake, pending=self._pending)
        self.reverts = RevertWindows(state)
        self._routes: dict[str, _Rollout] = {}
        self._ledgers: dict[str, deque[dict[str, Any]]] = {}
        self._config: RoutingConfig | None = None
        self._pass: Pass | None = None  # the background loop's pass in progress
        self._traffic_session: aiohttp.ClientSession | None = None
        # synthetic traffic; it starts once the server sets `traffics.base_url` (its listener)
        self.traffics: SyntheticTraffics | None = None
        # False on a replica that follows another's decisions (splitproxy/replicas): it keeps
        # its routes' rollouts in step with its routing file and adopts the leader's saved
        # states (`adopt`), but ticks no analyzer and sets no weight (the leader's do)
        self.leading = True

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume saved rollouts, apply their weights, then tick in the background.

        Call before the proxy accepts traffic: a resumed rollout's weight is in force for the
        first request."""
        await self.dispatcher.start()
        await self.poller.start()
        # its own session: synthetic requests must never carry the hooks' cookies or limits
        self._traffic_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.traffics = SyntheticTraffics(self._traffic_session)
        self.tick()
        await self.persistence.flush()
        self.persistence.start()
        self.ticker.start()

    async def stop(self) -> None:
        """Stop ticking, let queued notifications go out (briefly), save every rollout."""
        await self.ticker.stop()  # a pass in progress ends between two routes (see `pacing`)
        await self.poller.close()
        await self.dispatcher.close()
        await self.tests.close()
        now = self.clock()
        for rt in self._routes.values():
            self._mark(rt, now)
        await self.persistence.close()
        if self.traffics is not None:
            await self.traffics.close()
            self.traffics = None
        if self._traffic_session is not None:
            await self._traffic_session.close()
            self._traffic_session = None

    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: a new config wakes the tick, so rollouts follow it now."""
        if old is None or old.config is not new.config:
            self.ticker.wake()  # a reload: follow it now, not within a second

    async def flush(self) -> None:
        """Write the queued rollout states now (see `persistence.Persistence.flush`)."""
        await self.persistence.flush()

    async def settle(self) -> None:
        """Wait for in-flight hook calls, external reads and notifications (tests, shutdown)."""
        await self.poller.settle()
        await self.dispatcher.settle()

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Tick every rollout once (``now``: Unix time, default the clock's), all at once."""
        now = self.clock() if now is None else now
        for rt in self._begin(now):
            self._tick_route(rt, now)

    async def paced_tick(self, now: float | None = None) -> bool:
        """`tick`, in slices with a turn of the event loop between two (the background loop's
        pass; see `pacing` for its rules). False when it ended early (a new config, or
        leadership lost: the rest of the routes wait for the next pass)."""
        now = self.clock() if now is None else now
        await self._create_paced(now)
        routes = self._begin(now)
        this = self._pass = Pass(self._config)

        def step(rt: _Rollout) -> None:
            if rt.name not in this.stepped:  # stepped later than ``now`` by a command
                self._tick_route(rt, now)

        def proceed() -> bool:
            snapshot = self.state.snapshot
            return this.holds(snapshot.config if snapshot else None, self.leading)

        budget, clock = self.options.slice_budget, self.monotonic
        try:
            return await run_paced(routes, step, budget=budget, clock=clock, proceed=proceed)
        finally:
            self._pass = None

    def _begin(self, now: float) -> list[_Rollout]:
        """A pass's start (reconcile, expired revert windows); the routes to step, if leading."""
        snapshot = self.state.snapshot
        if snapshot is None:
            return []
        self._reconcile(snapshot, now)
        if not self.leading:
            return []
        for warm in self.reverts.expire(now):
            logger.info("route %s: the revert window of %s closed", warm.route, warm.promoted)
        return list(self._routes.values())

    def _tick_route(self, rt: _Rollout, now: float) -> None:
        try:
            self._step(rt, now)
        except Exception:  # one route's failure must not stop the others
            logger.exception("rollout of route %r: tick failed", rt.name)

    def _out_of_turn(self, rt: _Rollout, now: float, command: ManualCommand) -> None:
        """Step ``rt`` now with a manual command; a pass in progress leaves it out."""
        if self._pass is not None:
            self._pass.stepped.add(rt.name)
        self._step(rt, now, [command])

    def _step(self, rt: _Rollout, now: float, commands: Sequence[ManualCommand] = ()) -> None:
        snapshot = self.state.snapshot
        assert snapshot is not None
        route, identity, judge = rt.follow(snapshot.config)
        # = samples_for(recorder.observations(name, last, until=now)), as the buckets (`tally`)
        name = rt.name
        samples, end = window_feed(self.recorder.windows, name, rt.last, now, judge_synthetic=judge)
        if end is not None:
            rt.last = max(rt.last, end)
        gates: Sequence[GateResult] = _NOTHING
        external: Mapping[str, float | None] = _NO_VALUES
        tests: Sequence[TestOutcome] = _NOTHING
        pending = self._pending
        if name in pending:  # (else none of the three has anything for the route)
            pending.discard(name)
            gates = self.dispatcher.answers(name)
            external = self.poller.values(name)
            finished = self.tests.results(name)
            if finished:
                tests = [TestOutcome(attempt, r.passed, r.summary()) for attempt, r in finished]
        health = self.health(name) if self.health is not None else None
        taken = self.recorder.mirror_take(rt.name)  # (`shadow.observed`: none without copies)
        mirror = None if taken is None else shadow.observed(route, rt.analyzer, taken)
        counts = self.recorder.ab.take(rt.name)  # an A/B test's users and conversions (ab.py)
        # (the named tuple's own ``__new__`` is a Python function: one call per route and tick)
        observation = _new(
            Observation,
            (identity, samples, commands, gates, external, health, tests, mirror, counts),
        )
        self._apply(rt, now, rt.analyzer.tick(now, observation))
        a = rt.analyzer
        if a.ab_state is not None:  # (following no test changes nothing: most routes, every tick)
            self.recorder.ab.follow(rt.name, a.ab_state.started)  # (`ab.test_started`)
        switched = a.spec.strategy == "bluegreen" and a.step_index >= a.spec.switch_index
        if (a.phase not in ACTIVE or a.test_passed or switched) and self.tests.running(rt.name):
            self.tests.forget(rt.name)  # the job's verdict can no longer change anything
        if rt.analyzer.phase in ACTIVE:
            checks = rt.external_checks()
            if checks:  # (polling none starts nothing)
                every = self.options.external_interval
                if every is None:
                    every = max(0.25, min(30.0, rt.rollout.interval / 2))
                self.poller.poll(rt.name, checks, every, now)
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
        actions: Iterable[Action],
        rewrite: Callable[[Event], Event] | None = None,
    ) -> None:
        changed = False
        for action in actions:
            if isinstance(action, Emit):
                event = rewrite(action.event) if rewrite is not None else action.event
                self._record(rt, event)
                changed = True
            elif isinstance(action, RunTest):
                self._run_test(rt, action)
            elif isinstance(action, CallHook):
                message = f"waiting for the {action.gate} gate"
                payload = gate_payload(rt.analyzer, action.gate, now, message)
                payload["gate_step"] = action.step
                self.dispatcher.gate(rt.name, rt.rollout.hooks, action, payload)
            else:
                changed = True
        if self.leading:  # (`_sync_weight`)
            sync_weight(self.state, rt, now)
        active = rt.analyzer.phase in ACTIVE
        if changed or (active and now - rt.saved_at >= self.options.checkpoint):
            self._mark(rt, now)

    def listening(self, preview_url: str | None) -> None:
        """The proxy listens (``preview_url``: its preview listener, if any): test jobs may
        start (those asked for earlier start now)."""
        self.tests.listening(preview_url)

    def _run_test(self, rt: _Rollout, action: RunTest) -> None:
        """Ask for the route's test job against its candidate (blue/green, before the switch)."""
        job = rt.rollout.test
        snapshot = self.state.snapshot
        route = snapshot.config.route(rt.name) if snapshot is not None else None
        if job is not None and route is not None and route.candidate is not None:
            revision = rt.analyzer.revision or ""
            self.tests.ask(rt.name, action.attempt, job, route.candidate.urls[0], revision)

    def _sync_weight(self, rt: _Rollout, now: float) -> None:
        """Make the route's rollout weight what the analyzer says (`weightsync`), as leader."""
        if self.leading:
            sync_weight(self.state, rt, now)

    # --- following the routing file -----------------------------------------------------------

    async def _create_paced(self, now: float) -> None:
        """Before a paced pass's reconcile: the rollouts a new config adds, made in slices at
        ``now`` (each reads its saved state: 1,000 at once held the loop 56 ms, without files),
        as the reconcile would make them, which then finds them made (`pacing.make_paced`)."""

        def create(route: Route) -> None:
            if route.rollout is not None and route.name not in self._routes:  # (or a command)
                self._routes[route.name] = self._create(route.name, route.rollout, now)

        def missing(config: RoutingConfig) -> list[Route]:
            return [
                r for r in config.routes if r.rollout is not None and r.name not in self._routes
            ]

        state, budget = self.state, self.options.slice_budget
        await make_paced(
            lambda: state.snapshot.config if state.snapshot is not None else None,
            lambda: self._config, missing, create, budget=budget, clock=self.monotonic,
        )  # fmt: skip

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
        """A route gained a rollout: resume its saved state if it can be trusted; hold it on
        stable, paused, if it cannot; and in every case keep the verdicts on record (a
        revision rolled back stays rolled back whatever became of its state file)."""
        spec = analyzer_spec(rollout)
        gates = rollout.gates
        ledger = self._ledgers.get(name)
        if ledger is None:
            ledger = self._ledgers[name] = deque(maxlen=self.options.ledger_size)
        slots = path_class_slots(self.recorder.windows)
        restored = self.persistence.restore(name, spec, gates, slots)
        verdicts = self.persistence.verdicts(name)
        fresh = Analyzer(name, spec, gates=gates, path_class_slots=slots)
        adopt_verdicts(fresh, verdicts)
        rt = _Rollout(name, rollout, fresh, ledger)
        if isinstance(restored, Restored):
            if not ledger:
                ledger.extend(restored.ledger)
            if restored.warm is not None:
                self.reverts.keep(restored.warm, now)
            a = restored.analyzer
            if adopt_verdicts(a, verdicts):
                ended = verdicts[a.revision or ""]
                message = f"saved state ({a.phase}) is older than the verdict on record: {ended}"
                self._record(rt, self._control_event(rt, now, "state_superseded", message))
                return rt
            rt.analyzer = a
            weight = "the file's weight" if a.weight is None else f"weight {a.weight:g}%"
            message = (
                f"state restored {restored.where}: {a.phase}, step {a.step_index + 1}, {weight}"
            )
            self._record(rt, self._control_event(rt, now, "state_restored", message))
        elif isinstance(restored, Rejected):
            route = self.state.snapshot.config.route(name) if self.state.snapshot else None
            identity = candidate_identity(route) if route is not None else None
            kept = f"; kept as {restored.kept}" if restored.kept else ""
            message = f"saved state rejected ({restored.reason}){kept}"
            if identity is None or identity in verdicts:
                self._record(rt, self._control_event(rt, now, "state_rejected", message))
            else:
                held = f"{message}: held on stable, paused (resume starts from the first step)"
                self._apply(rt, now, fresh.suspend(now, identity, held))
        return rt

    def _drop(self, name: str, now: float) -> None:
        """The route lost its rollout (or is gone): abandon it; the file's weight applies."""
        rt = self._routes.pop(name)
        self._pending.discard(name)
        self.dispatcher.forget(name)
        self.poller.forget(name)
        self.tests.forget(name)
        if self.traffics is not None:
            self.traffics.forget(name, discard=True)

        def removed(event: Event) -> Event:
            if event.kind != "abandoned":
                return event
            return replace(event, message="the rollout was removed from the routing file")

        self._apply(rt, now, rt.analyzer.tick(now, Observation(None)), rewrite=removed)
        self.state.clear_rollout_weight(name)
        self._mark(rt, now)
        self.persistence.retire(name, rt.analyzer, rt.ledger, now)

    # --- replicas -----------------------------------------------------------------------------

    def adopt(self, name: str, data: dict[str, Any], where: str) -> bool:
        """Take another replica's saved state of ``name`` (checked as a restore checks it;
        nothing written or set aside): the route's phase, step, ledger and revert window
        become the leader's, and a takeover resumes from them, judging the buckets after
        the state's ``saved_at`` again. False when the route has no rollout here or the
        state cannot be trusted."""
        rt = self._routes.get(name)
        if rt is None:
            return False
        slots = path_class_slots(self.recorder.windows)
        spec, gates = analyzer_spec(rt.rollout), rt.rollout.gates
        restored = self.persistence.resume(name, spec, gates, slots, data, where, set_aside=False)
        if not isinstance(restored, Restored):
            return False
        rt.analyzer = restored.analyzer
        rt.ledger.clear()
        rt.ledger.extend(restored.ledger)
        saved_at = data.get("saved_at")
        if isinstance(saved_at, int | float) and not isinstance(saved_at, bool):
            rt.last = min(float(saved_at), self.clock())
        if restored.warm is not None:
            self.reverts.keep(restored.warm, self.clock())
        return True

    def lead(self, leading: bool) -> None:
        """Start (or stop) deciding: a replica took (or lost) the leader's lease."""
        self.leading = leading
        if leading:
            self.ticker.wake()

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
        self._out_of_turn(rt, now, ManualCommand(command, source, reason))
        status = self.route_status(name)
        assert status is not None
        return status

    def revert(self, name: str, *, reason: str = "", source: str = "admin") -> None:
        """Send all of ``name``'s traffic back to the stable its latest promotion replaced,
        inside the revert window (see `revert`); `Conflict` with the reason outside it."""
        snapshot = self.state.snapshot
        if snapshot is None:
            raise NotReady("not_ready", "no routing config is loaded yet")
        now = self.clock()
        self._reconcile(snapshot, now)
        if snapshot.config.route(name) is None:
            raise UnknownRoute(name)
        warm = self.reverts.take(name, now)
        why = f": {reason}" if reason else ""
        rt = self._routes.get(name)
        route = snapshot.config.route(name)
        named = candidate_identity(route) if route is not None else None
        if rt is not None and rt.analyzer.phase == "promoted" and named == warm.promoted:
            self._out_of_turn(rt, now, ManualCommand("rollback", source, f"reverted{why}"))
            return
        self.state.revert_to(name, warm.backend, now)
        urls = ", ".join(warm.backend.urls)
        message = f"reverted to the previous stable ({urls}) until the file changes the route{why}"
        logger.info("route %s: %s", name, message)
        if rt is not None:
            self._record(rt, self._control_event(rt, now, "reverted", message))
            self._mark(rt, now)

    # --- the ledger ---------------------------------------------------------------------------

    def _control_event(self, rt: _Rollout, now: float, kind: str, message: str) -> Event:
        return ledger.control_event(rt, now, kind, message)

    def _record(self, rt: _Rollout, event: Event) -> None:
        ledger.record(self, rt, event)

    def _mark(self, rt: _Rollout, now: float) -> None:
        """Queue the route's state for the next flush."""
        rt.saved_at = now
        warm = self.reverts.warm.get(rt.name)
        self.persistence.mark(rt.name, rt.analyzer, rt.ledger, now, warm)

    # --- reads --------------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self.persistence.persistent

    def analyzers(self) -> Mapping[str, Analyzer]:
        """The live analyzers by route (`metrics.RolloutSource`)."""
        return {name: rt.analyzer for name, rt in self._routes.items()}

    def summary(self) -> dict[str, Any]:
        """Where rollout state lives, for the top of the status."""
        return self.persistence.summary()

    def route_status(self, name: str) -> dict[str, Any] | None:
        """A route's rollout as the admin API shows it; None for a route without one."""
        rt = self._routes.get(name)
        return None if rt is None else rollout_status(self, rt)

    def events(
        self, route: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The decision ledger, oldest first: the newest ``limit`` events (of ``route``,
        after ``since``)."""
        ledgers = self._ledgers.values() if route is None else [self._ledgers.get(route, deque())]
        return merged_events(ledgers, since, limit)


__all__ = [
    "COMMANDS", "GATES", "ControlOptions", "Controller", "analyzer_spec", "finite",
    "judges_synthetic",
]  # fmt: skip
