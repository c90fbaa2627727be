"""The rollout analyzer: a pure, sans-IO state machine that decides a canary's fate.

One `Analyzer` looks after one route. It never reads a clock, a socket or a file: the caller
(``controller.py``) ticks it, about once a second, with the time and what happened since the
previous tick (an `Observation`), and carries out the actions it returns (`SetWeight`,
`CallHook`, `Emit`; the value types of `splitproxy.rollout.messages`)::

    actions = analyzer.tick(now, Observation(candidate="2.4.0", samples=...))

Given the same ticks it makes the same decisions, so a unit test drives hours of a rollout in
microseconds. This module is the machine's guards, which decide when each trigger fires; the
phases and the table of moves are `splitproxy.rollout.phases`. What it knows and how that is
weighed is `splitproxy.rollout.evidence`; what it knows of the candidate's health,
`splitproxy.rollout.readiness`; how its state is saved and restored, `splitproxy.rollout.codec`.

*Phases.* ``idle`` (no rollout: the file's weight applies), ``progressing`` (a step is
running), ``waiting`` (readiness, a gate or a pause step holds the next move), ``paused`` (a
human, an incident or ``max_duration`` froze the weights), ``promoted`` (all traffic on the
candidate until the file names it stable) and ``rolled_back`` (all traffic on stable until a
new revision or ``retry``). The only moves are those in `TRANSITIONS`, a table kept as data
(`phases.TRANSITIONS`): ``TRANSITIONS[phase][trigger] -> next phase``. A move that is not
in the table is a bug, and the analyzer raises rather than guess. A manual command that the
table does not allow in the current phase is refused, and the refusal goes to the ledger
(`Analyzer.accepts` answers the same question in advance, for a 409). Every ledger `Event`
of a move names the trigger that fired.

*Holds.* What holds the next move while ``waiting`` (readiness, a gate, a pause step) is a
`Hold` value: the analyzer has one in ``waiting``, may keep one in ``paused`` (paused while
waiting: ``resume`` waits again), and has none in any other phase.

*Lifecycle.* A rollout starts when the observation names a candidate revision that the
analyzer has not finished, and restarts from the first step, with fresh statistics, when the
revision or the rollout spec changes mid-rollout. A promoted or rolled-back revision stays so
until the file names another one; ``retry`` starts a rolled-back revision again. The tick on
which a rollout (re)starts is not used as evidence: its requests were routed under the
previous regime.

*Readiness.* A rollout (re)starts at weight 0, waiting for its candidate to be ready (when
the `Observation` says it is not), then goes to its first step through its shadow phase
(``shadow:``, judged on mirrored copies: `splitproxy.rollout.shadow`) and ``pre-rollout``. No
candidate traffic is evidence until the candidate was ready on an earlier tick. Waiting for
readiness and progressing count toward ``progress_deadline`` until then: past it, the rollout
rolls back ("candidate never became ready"). A candidate that becomes unavailable later keeps
its phase, no step window passes meanwhile, and each whole ``unhealthy_timeout`` of it is a
failed check (see `splitproxy.rollout.readiness`).

*Steps.* Each step holds a weight for at least ``interval`` **and** ``min_requests``
candidate requests. Then the absolute checks are judged over the step's window
(`Evidence.window_outcome`). All pass: next step (through the ``step`` gate, if configured),
or promotion after the last one (through ``confirm-promotion``). Any fails: the failure
counts, the window starts again, and the rollout rolls back once more than ``failure_limit``
windows have failed. A rollout progressing longer than ``max_duration`` pauses for a human.
Every tick, the comparisons with stable and the guard are judged as well: a failed one rolls
back at once, unless the guard trips while stable breaches its cap too (an incident: the
rollout pauses and the guard starts afresh).

After every tick `Analyzer.checks` holds one `CheckResult` per check, and every decision is an
`Event` carrying the results that made it. ``codec.encode`` / ``codec.decode`` turn the whole
state into plain JSON-able data, so the proxy can carry on where it stopped after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Literal

from splitproxy.config import Rollout, Step
from splitproxy.config.vocabulary import GATES, Gate
from splitproxy.dataplane.health import CandidateHealth
from splitproxy.rollout import ab, bluegreen, commands, holds, shadow
from splitproxy.rollout.deferred import Checks
from splitproxy.rollout.digest import spec_digest as spec_digest  # (where it was)
from splitproxy.rollout.evidence import Evidence, step_needs
from splitproxy.rollout.messages import (
    Action,
    CheckResult,
    Command,
    Emit,
    Event,
    Observation,
    SetWeight,
)
from splitproxy.rollout.phases import ACTIVE, HOLDING, TRANSITIONS, Held, Hold, Phase, Trigger
from splitproxy.rollout.readiness import Readiness
from splitproxy.rollout.results import Judged
from splitproxy.rollout.status import status_view

PATH_CLASS_SLOTS: Final = 10
HISTORY: Final = 100  # events kept in the state (the full ledger is the caller's)
FINISHED_KEPT: Final = 16


class Analyzer:
    """The rollout state machine of one route (see the module docstring)."""

    def __init__(
        self,
        route: str,
        spec: Rollout,
        *,
        gates: Iterable[Gate] = (),
        path_class_slots: int = PATH_CLASS_SLOTS,
    ) -> None:
        self.route = route
        self.gates: frozenset[Gate] = frozenset(gates)
        unknown = self.gates - set(GATES)
        if unknown:
            raise ValueError(f"unknown gates: {sorted(unknown)}")
        self.path_class_slots = path_class_slots
        self.evidence = Evidence(spec, path_class_slots=path_class_slots)
        self.readiness = Readiness()
        self.health: CandidateHealth | None = None  # as of the latest tick
        self._configure(spec)
        # lifecycle
        self.phase: Phase = "idle"
        self.revision: str | None = None
        self.finished: dict[str, Phase] = {}
        self.step_index = -1  # index into plan; -1 before the first step
        self.weight: float | None = None
        self.started_at: float | None = None
        self.step_started_at: float | None = None
        self.last_now: float | None = None
        self.active_time = 0.0
        self.deadline: float | None = spec.max_duration
        self.failures = 0
        self.hold: Hold | None = None  # only while waiting, or paused while waiting
        self.paused_reason: str | None = None
        self.test_attempt = 0  # blue/green: the test job's runs so far, and whether one passed
        self.test_passed = False
        self.shadow = shadow.fresh(spec)  # the shadow phase and the divergence test
        self.ab_state: ab.AbState | None = None  # an A/B test's counts (ab.py)
        self.history: list[Event] = []
        self._checks = Checks()  # `checks`, made when first read (`deferred`)
        # the current step's ``(step, spec, interval, min_requests)`` (`evidence.step_needs`)
        self._step_needs: tuple[Step | None, Rollout | None, float, int] = (None, None, 0.0, 0)
        # the spec changed under a running rollout: it restarts on the next tick
        self.spec_changed = False
        self._actions: list[Action] = []
        self._judged: object = None  # the results `_judge` last found nothing in

    # --- configuration ------------------------------------------------------------------------

    def _configure(self, spec: Rollout) -> None:
        self.spec = spec
        self.plan: tuple[Step, ...] = spec.plan
        self.spec_hash = spec_digest(spec)
        self.evidence.configure(spec)

    def reconfigure(self, spec: Rollout) -> None:
        """Take a new rollout spec (a reload). If it differs, a running rollout restarts from
        the first step on the next tick."""
        if spec_digest(spec) == self.spec_hash:
            self.spec = spec  # the deadlines are not part of the digest: they apply at once
            return
        self._configure(spec)
        self.deadline = spec.max_duration
        self.spec_changed = self.phase in ACTIVE

    def accepts(self, command: Command) -> bool:
        """Would ``command`` be carried out in the current phase?"""
        return commands.trigger_for(self, command) is not None

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, now: float, observation: Observation) -> list[Action]:
        """Advance to ``now`` with what happened since the previous tick; return the actions."""
        if self._actions:  # (left empty by the previous tick, it is this tick's: see the end)
            self._actions = []
        elapsed = 0.0 if self.last_now is None else max(0.0, now - self.last_now)
        if self.phase == "progressing":
            self.active_time += elapsed
        readiness, health = self.readiness, observation.health
        if readiness.ready_at is None:  # (once the candidate was ready, neither does a thing)
            readiness.elapse(elapsed, counting=self._counting())
        self.last_now, self.health = now, health

        candidate = observation.candidate  # (the same revision: nothing to follow, if running)
        same = candidate is not None and candidate == self.revision and not self.spec_changed
        fresh = (not same or self.phase == "idle") and self._follow_revision(now, candidate)
        if readiness.ready_at is None:
            readiness.see(now, health)
        evidence = self.evidence
        active = self.phase in ACTIVE and not fresh
        # (`is_healthy`, `Readiness.unserved` and `.judging` written out: none unserved if healthy)
        healthy, ready = (True, True) if health is None else (health.healthy, health.ready)
        if active:  # unavailable time is no part of a step
            window = evidence.window
            unserved = 0.0 if healthy else readiness.unserved(now, elapsed, health)
            window.start = min(now, window.start + unserved)
        ready_at = readiness.ready_at
        judging = active and ready_at is not None and ready_at < now and ready
        # the previous results are read after the fold only by the events below (gates etc.)
        gates, tests, orders = observation.gates, observation.tests, observation.commands
        read_after = bool(gates or tests or orders)
        evidence.fold(now, observation.samples, tests=judging, read_after=read_after)
        mirror = observation.mirror
        if mirror is not None or self.shadow.mirroring:  # (else `shadow.fold` does nothing)
            shadow.fold(self, mirror, judging)
        if observation.ab is not None:
            ab.fold(self, now, observation.ab, fresh)
        if observation.external:
            evidence.record_external(now, observation.external)
        if read_after:
            for result in gates:
                holds.gate_result(self, now, result)
            for outcome in tests:
                bluegreen.test_outcome(self, now, outcome)
            for command in orders:
                commands.carry_out(self, now, command)
        if self.phase in ACTIVE:  # (`_judge` skipped on results it found nothing in before)
            judged = self._defer_checks(now)
            if judged is not self._judged or self.hold is not None or self.shadow.test is not None:
                self._judge(now)
        else:
            self.checks = ()
        self._candidate_health(now)
        deadline = self.deadline
        if self.phase == "progressing" and deadline is not None and self.active_time > deadline:
            self._pause(now, "max_duration", f"still progressing after {deadline:g}s")
        if self.phase in ("progressing", "waiting"):
            self._progress(now)
        if self.hold is not None or self.phase == "waiting":  # (else it holds: no hold)
            self.check_hold()
        actions = self._actions  # (none, most ticks: the caller gets a list for the tick alone)
        if not actions:
            return []
        self._actions = []
        return actions

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        """One `CheckResult` per check as of the latest tick (see the module docstring)."""
        return self._checks.get()

    @checks.setter
    def checks(self, value: tuple[CheckResult, ...]) -> None:
        self._checks.set(value)

    def _defer_checks(self, now: float) -> object:
        """``checks = evidence.evaluate(now) + shadow.checks(self)``, the threshold checks'
        results made only when read (`deferred`; at once if one is named like a result `_judge`
        or `shadow.judge` look up by name); returns what `_judge` reads (the same, if it stands)."""
        evidence = self.evidence
        thresholds, rest = evidence.evaluate_deferred(now)
        if self.hold is not None or self.shadow.mirroring:  # (else no `shadow.checks`)
            rest += shadow.checks(self)
        self._checks.defer(thresholds, rest, eager=evidence.threshold_eager)
        return self._checks.anytime()

    def _counting(self) -> bool:
        """Does the time since the previous tick count toward the progress deadline?"""
        hold = self.hold
        waiting = self.phase == "waiting" and hold is not None and hold.what == "readiness"
        return self.phase == "progressing" or waiting

    def check_hold(self) -> None:
        """The hold invariant: a `Hold` in ``waiting``, none outside ``waiting``/``paused``."""
        if self.phase == "waiting":
            assert self.hold is not None, "waiting for nothing"
        elif self.phase not in HOLDING:
            assert self.hold is None, f"a hold in phase {self.phase}"

    # --- revisions ----------------------------------------------------------------------------

    def _follow_revision(self, now: float, candidate: str | None) -> bool:
        """Start, restart, restore or abandon a rollout; True when one began on this tick."""
        if candidate is None:
            if self.phase != "idle":
                self._move(now, "abandon", "abandoned", "the routing file names no candidate")
                self._reset_rollout()
                self.revision = None
                self._set_weight(None)
            return False
        if self.spec_changed:
            self.spec_changed = False
            if self.phase in ACTIVE and candidate == self.revision:
                self._start(now, candidate, "restart", "the rollout spec changed")
                return True
        if self.phase == "idle":
            ended = self.finished.get(candidate)
            if ended is not None:
                self.revision = candidate
                ok = ended == "promoted"
                trigger: Trigger = "restore_promoted" if ok else "restore_rolled_back"
                self._move(now, trigger, "restored", f"{candidate} already ended {ended}")
                self._set_weight(100.0 if ok else 0.0)
                return False
            self._start(now, candidate, "start", f"new candidate {candidate}")
            return True
        if candidate != self.revision:
            again: Trigger = "restart" if self.phase in ACTIVE else "start"
            self._start(now, candidate, again, f"new candidate {candidate}")
            return True
        return False

    def suspend(self, now: float, candidate: str, message: str) -> list[Action]:
        """Hold ``candidate`` at 0 %, paused, before any tick: its saved state could not be
        trusted. ``resume`` then starts from the first step (through readiness), ``promote``
        and ``rollback`` decide by hand; nothing resumes on its own."""
        self._actions = []
        self._reset_rollout()
        self.revision = candidate
        self.started_at = now
        self.last_now = now
        self.evidence.fresh_tests()
        self._set_weight(0.0)
        self.hold = Hold("readiness", 0, asked_at=now, since=now)
        self.paused_reason = "state_rejected"
        self._move(now, "suspend", "paused", message)
        self.check_hold()
        actions, self._actions = self._actions, []
        return actions

    def _reset_rollout(self) -> None:
        self.step_index = -1
        self.started_at = None
        self.step_started_at = None
        self.active_time = 0.0
        self.deadline = self.spec.max_duration
        self.failures = 0
        self.hold = None
        self.paused_reason = None
        self.test_attempt, self.test_passed = 0, False
        self.shadow = shadow.fresh(self.spec)
        ab.reset(self)
        self.evidence.end()
        self.readiness.reset()

    def _start(self, now: float, candidate: str, trigger: Trigger, message: str) -> None:
        self._reset_rollout()
        self.revision = candidate
        self.started_at = now
        self.evidence.fresh_tests()
        kind = {"start": "started", "restart": "restarted", "retry": "retried"}[trigger]
        self._move(now, trigger, kind, message)
        self.readiness.see(now, self.health)
        if self.readiness.ready:
            self._begin(now)
        else:  # no user traffic until the candidate is ready
            self._set_weight(0.0)
            self._wait_for(now, "readiness", 0)

    def _begin(self, now: float) -> None:
        """The candidate is ready: the shadow phase (if any, `shadow`), then the first step,
        through the ``pre-rollout`` gate if any."""
        if shadow.due(self):
            shadow.enter(self, now)
        elif "pre-rollout" in self.gates:
            self._set_weight(0.0)
            self._wait_for(now, "pre-rollout", 0)
        else:
            self._enter_step(now, 0)

    # --- decisions ----------------------------------------------------------------------------

    def _judge(self, now: float) -> None:
        """The anytime checks: guard and comparisons roll back (or pause) at once."""
        # (`shadow.judge` decides nothing without a divergence test or a hold to be in)
        if (self.shadow.test is not None or self.hold is not None) and shadow.judge(self, now):
            return
        guard = None  # the last result named "guard", and the failed comparisons, in one pass
        failing: list[Judged] = []
        judged = self._checks.anytime()
        for r in judged:
            if r.name == "guard":
                guard = r
            if r.kind == "compare" and r.verdict == "fail":
                failing.append(r)
        if guard is not None and guard.verdict == "fail":
            if self.evidence.stable_breaching():
                self.evidence.restart_guard()
                if self.phase != "paused":
                    both = "candidate and stable both above the guard's error rate"
                    self._pause(now, "incident", f"{both}: incident")
                return
            self._rollback(now, "the guard tripped: candidate error rate far above the cap")
            return
        if failing:
            names = ", ".join(r.name for r in failing)
            self._rollback(now, f"worse than stable: {names}")
        else:  # nothing to decide on: neither while these results stand (the same tuple)
            self._judged = judged

    def _candidate_health(self, now: float) -> None:
        """An unavailable candidate keeps its phase (the data path sends its share to
        stable); each whole ``unhealthy_timeout`` of it is a failed check."""
        readiness, spec = self.readiness, self.spec
        if self.phase not in ("progressing", "waiting"):
            return
        ready_at = readiness.ready_at  # (`Readiness.ready`)
        if ready_at is None and readiness.overdue(spec.progress_deadline):
            limit = f"{spec.progress_deadline:g}s"
            self._rollback(now, f"candidate never became ready (progress deadline {limit})")
            return
        health = self.health
        if ready_at is None or health is None or health.healthy:  # (`is_healthy`)
            # (nearly every tick: no check, no strike, what `Readiness.check`/`.strike` come to)
            readiness.unhealthy_since, readiness.strikes = None, 0
            return
        timeout = spec.unhealthy_timeout
        result = readiness.check(now, self.health, timeout)
        if result is not None:
            self._checks.append(result)
        if readiness.strike(now, self.health, timeout) and result is not None:
            since = readiness.unhealthy_since
            self._failure(now, f"candidate unavailable since t={since:g} for {result.value:g}s")

    def _progress(self, now: float) -> None:
        if self.phase == "waiting":
            holds.waiting(self, now)
            return
        hold = self.hold
        if hold is not None:  # resumed while a gate or a pause step was pending
            self._wait_for(now, hold.what, hold.step, until=hold.until)
            return
        if self.health is not None and not self.health.healthy:  # (`is_healthy`) no window
            return  # passes on traffic it did not serve
        spec = self.spec  # (``spec.bluegreen``, a property, written out)
        if spec.strategy == "bluegreen" and bluegreen.in_bake(self):
            bluegreen.bake(self, now)
            return
        if spec.ab is not None:
            ab.progress(self, now)
            return
        step = self.plan[self.step_index]
        # a window too short or small holds, nothing read (`Evidence.window_outcome`, needs kept)
        needs, evidence = self._step_needs, self.evidence
        if needs[0] is not step or needs[1] is not evidence.spec:
            interval, wanted = step_needs(evidence.spec, step)
            needs = self._step_needs = (step, evidence.spec, interval, wanted)
        window = evidence.window
        if now - window.start < needs[2] or 0 < window.requests < needs[3]:
            return
        if self._window_outcome(now, step) == "pass":
            self._advance(now)

    def _window_outcome(self, now: float, step: Step) -> Literal["pass", "hold", "fail"]:
        """The step window's outcome; a failed window counts (and may roll back)."""
        outcome = self.evidence.window_outcome(now, step, self._checks.judged())
        if outcome.outcome == "fail":
            self._failure(now, outcome.reason)
        return outcome.outcome

    def _failure(self, now: float, message: str) -> None:
        self.failures += 1
        limit = self.spec.failure_limit
        if bluegreen.in_bake(self):  # after the switch, any failure reverts at once
            self._rollback(now, f"failed in the bake: {message}")
            return
        self._event(now, "check_failed", f"{message} ({self.failures} of {limit} tolerated)")
        if self.failures > limit:
            self._rollback(now, f"{shadow.where(self)}more than {limit} failed check windows")
        else:
            self.evidence.restart_window(now)

    def _advance(self, now: float) -> None:
        nxt = self.step_index + 1
        if self.spec.bluegreen:
            bluegreen.advance(self, now, nxt)
        elif nxt < len(self.plan):
            if "step" in self.gates and self.plan[nxt].weight is not None:
                self._wait_for(now, "step", nxt)
            else:
                self._enter_step(now, nxt)
        elif "confirm-promotion" in self.gates:
            self._wait_for(now, "confirm-promotion", len(self.plan))
        else:
            self._promote(now, "all steps passed")

    def _enter_step(self, now: float, index: int) -> None:
        self.step_index = index
        self.step_started_at = now
        self.evidence.restart_window(now)
        step = self.plan[index]
        if step.pause is not None:
            if self.weight is None:
                self._set_weight(0.0)
            self._wait_for(now, "pause", index, until=now + step.pause)
            return
        assert step.weight is not None
        self._set_weight(step.weight)
        message = f"step {index + 1}: weight {step.weight:g}%"
        if self.spec.bluegreen:
            message = bluegreen.step_message(self, index)
        elif self.spec.ab is not None:
            message = ab.step_message(self.spec.ab)
        self._move(now, "advance", "step", message)
        if self.spec.bluegreen:
            bluegreen.on_step(self, now, index)

    def _wait_for(self, now: float, what: Held, step: int, *, until: float = math.inf) -> None:
        holds.wait_for(self, now, what, step, until=until)

    def _proceed(self, now: float, message: str, source: str = "analyzer") -> None:
        hold = self.hold
        assert hold is not None
        self.hold = None
        self._move(now, "proceed", "proceeded", message, source=source)
        if self.spec.bluegreen and hold.what in bluegreen.SWITCH_HOLDS:
            bluegreen.proceed(self, now, hold.what)
        elif hold.what == "confirm-promotion":
            self._promote(now, message, source=source)
        elif hold.what == "pause":
            self._advance(now)
        elif hold.what == "readiness":
            self._begin(now)
        elif hold.what == "shadow":
            shadow.proceed(self, now)
        else:
            self._enter_step(now, hold.step)

    def _promote(self, now: float, message: str, source: str = "analyzer") -> None:
        self._move(now, "promote", "promoted", message, source=source, evidence=True)
        self._finish("promoted")
        self._set_weight(100.0)

    def _rollback(self, now: float, message: str, source: str = "analyzer") -> None:
        self._move(now, "rollback", "rolled_back", message, source=source, evidence=True)
        self._finish("rolled_back")
        self._set_weight(0.0)

    def _pause(self, now: float, reason: str, message: str, source: str = "analyzer") -> None:
        self.paused_reason = reason
        self._move(now, "pause", "paused", message, source=source, evidence=True)

    def _finish(self, phase: Phase) -> None:
        assert self.revision is not None
        self.finished.pop(self.revision, None)
        self.finished[self.revision] = phase
        while len(self.finished) > FINISHED_KEPT:
            self.finished.pop(next(iter(self.finished)))
        self.hold = None

    # --- plumbing -----------------------------------------------------------------------------

    def queue(self, action: Action) -> None:
        """Add an action to this tick's output (for the strategy modules)."""
        self._actions.append(action)

    def _set_weight(self, percent: float | None) -> None:
        if percent != self.weight or percent is None:
            self.weight = percent
            self._actions.append(SetWeight(percent))

    def _move(
        self,
        now: float,
        trigger: Trigger,
        kind: str,
        message: str,
        *,
        source: str = "analyzer",
        evidence: bool = False,
    ) -> None:
        target = TRANSITIONS[self.phase].get(trigger)
        if target is None:
            raise AssertionError(f"no transition {self.phase} --{trigger}-->")
        previous, self.phase = self.phase, target
        self._event(
            now, kind, message, source, previous=previous, evidence=evidence, trigger=trigger
        )

    def _event(
        self,
        now: float,
        kind: str,
        message: str,
        source: str = "analyzer",
        *,
        previous: Phase | None = None,
        evidence: bool = False,
        trigger: Trigger | None = None,
    ) -> None:
        checks = self.evidence.with_ci(self.checks) if evidence else self.checks
        event = Event(
            at=now, route=self.route, kind=kind, phase=self.phase,
            previous=previous if previous is not None else self.phase, step=self.step_index + 1,
            weight=self.weight, revision=self.revision, message=message, source=source,
            checks=checks, trigger=trigger, ab=ab.event_result(self, now) if evidence else None,
        )  # fmt: skip
        self.history.append(event)
        del self.history[:-HISTORY]
        self._actions.append(Emit(event))

    # --- status -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Is a rollout running (progressing, waiting or paused)?"""
        return self.phase in ACTIVE

    def status(self, *, with_ci: bool = True) -> dict[str, Any]:
        """The route's rollout as the admin API shows it (see `status.status_view`)."""
        return status_view(self, with_ci=with_ci)
