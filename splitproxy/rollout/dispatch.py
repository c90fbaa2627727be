"""The hook dispatcher: gating-hook calls and the ordered queue of notifications.

`HookDispatcher` owns every outbound hook call of the rollouts and the asyncio tasks that
make them:

- *gates* (`HookDispatcher.gate`): the analyzer asks for a gate (``CallHook``); every hook of
  that gate is POSTed at once and the gate passes only when all answer 2xx. One call per
  route, gate and step at a time (a gate asked again while its call is out is not called
  twice). The answer is kept as a `GateResult` until the controller takes it
  (`HookDispatcher.answers`) on its next tick, its route added to ``pending`` (the
  controller's set of routes with something to take), and ``on_answer`` is called so that
  tick comes at once. A gate without a hook (removed by a reload) passes at once;
- *notifications* (`HookDispatcher.notify`): ``event`` hooks get every ledger event,
  ``post-rollout`` hooks promotions and rollbacks, ``rollback`` hooks rollbacks. They go out
  one at a time, in order (a chat channel reads like a log), from a queue bounded at
  ``queue_size``: one more is dropped, logged and counted
  (``splitproxy_hook_notifications_dropped_total``).

Each call has the hook's timeout and retries (`hooks.HookClient`); a call that raises is the
hook's failure, never the dispatcher's. `close` cancels the gate calls, lets queued
notifications go out for at most ``drain`` seconds, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp

from splitproxy.config import Hook
from splitproxy.config.vocabulary import Gate
from splitproxy.rollout.hooks import HookClient, HookResult, slack_text
from splitproxy.rollout.messages import CallHook, GateResult
from splitproxy.rollout.metrics import RolloutMetrics

logger = logging.getLogger("splitproxy.rollout.dispatch")

NOTIFY_QUEUE: Final = 1000  # notifications waiting to be sent; more are dropped (and logged)


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


def hook_label(hook: Hook, index: int) -> str:
    """How a hook is named in the ledger and the log (never its URL: it may hold a secret)."""
    return f"hook {hook.name!r}" if hook.name else f"{hook.on} hook #{index + 1}"


def notified_hooks(kind: str) -> tuple[str, ...]:
    """Which hooks (``on``) an event of ``kind`` is sent to."""
    if kind == "rolled_back":
        return ("event", "post-rollout", "rollback")
    if kind == "promoted":
        return ("event", "post-rollout")
    return ("event",)


@dataclass(eq=False)
class _Gates:
    """One route's gate calls: the answers not yet taken and the calls still out."""

    answers: list[GateResult] = field(default_factory=list)
    in_flight: set[tuple[Gate, int]] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class HookDispatcher:
    """Makes the rollouts' hook calls; see the module docstring.

    Without a ``sender``, `start` opens an aiohttp session of its own for them (and `close`
    closes it)."""

    def __init__(
        self,
        sender: HookSender | None = None,
        *,
        on_answer: Callable[[], None] = lambda: None,
        metrics: RolloutMetrics | None = None,
        queue_size: int = NOTIFY_QUEUE,
        drain: float = 2.0,
        pending: set[str] | None = None,
    ) -> None:
        self.sender = sender
        # routes with an answer to take (added to, never taken from, here: see the docstring)
        self.pending: set[str] = set() if pending is None else pending
        self.on_answer = on_answer
        self.metrics = metrics
        self.queue_size = queue_size
        self.drain = drain
        self.dropped = 0  # notifications dropped because the queue was full
        self._gates: dict[str, _Gates] = {}
        self._notices: asyncio.Queue[tuple[Hook, dict[str, Any]]] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.sender is None:
            self._session = aiohttp.ClientSession()
            self.sender = HookClient(self._session)

    # --- gates --------------------------------------------------------------------------------

    def gate(
        self, route: str, hooks: Sequence[Hook], call: CallHook, payload: dict[str, Any]
    ) -> None:
        """Call every hook of ``call.gate`` among ``hooks`` (all the route's) with ``payload``;
        the outcome comes back through `answers`."""
        gates = self._gates.setdefault(route, _Gates())
        mine = [(i, h) for i, h in enumerate(hooks) if h.on == call.gate]
        if not mine:
            # the hook was removed by a reload while the analyzer waited for it
            gates.answers.append(GateResult(call.gate, call.step, True, "no hook configured"))
            self.pending.add(route)
            self.on_answer()
            return
        key = (call.gate, call.step)
        if key in gates.in_flight:  # still asking: don't pile calls up
            return
        gates.in_flight.add(key)
        self._spawn(gates, self._call_gate(route, gates, call, mine, payload), f"gate:{route}")

    async def _call_gate(
        self,
        route: str,
        gates: _Gates,
        call: CallHook,
        hooks: Sequence[tuple[int, Hook]],
        payload: dict[str, Any],
    ) -> None:
        try:
            results = await asyncio.gather(*(self.send(h, payload) for _, h in hooks))
            failed = [
                f"{hook_label(h, i)}: {r.error or 'failed'}"
                for (i, h), r in zip(hooks, results, strict=True)
                if not r.ok
            ]
            gates.answers.append(GateResult(call.gate, call.step, not failed, "; ".join(failed)))
            self.pending.add(route)
        finally:
            gates.in_flight.discard((call.gate, call.step))
        self.on_answer()  # act on the answer now

    def answers(self, route: str) -> list[GateResult]:
        """The gate answers that came back for ``route`` since the last call (taken)."""
        gates = self._gates.get(route)
        if gates is None or not gates.answers:
            return []
        taken, gates.answers = gates.answers, []
        return taken

    def waiting(self, route: str) -> list[str]:
        """The gate calls of ``route`` still out, for status: ``"step (step 2)"``."""
        gates = self._gates.get(route)
        return sorted(f"{g} (step {s})" for g, s in gates.in_flight) if gates else []

    def forget(self, route: str) -> None:
        """``route`` lost its rollout: cancel its gate calls and drop their answers."""
        gates = self._gates.pop(route, None)
        if gates is not None:
            for task in list(gates.tasks):
                task.cancel()

    # --- notifications ------------------------------------------------------------------------

    def notify(self, hooks: Sequence[Hook], kind: str, payload: Mapping[str, Any]) -> None:
        """Queue ``payload`` (an event of ``kind``) for each of ``hooks`` that wants it."""
        for on in notified_hooks(kind):
            for hook in hooks:
                if hook.on == on:
                    self._enqueue(hook, {**payload, "hook": on})

    def _enqueue(self, hook: Hook, payload: dict[str, Any]) -> None:
        if self._notices is None:
            self._notices = asyncio.Queue(self.queue_size)
        if self._notifier is None:
            self._notifier = asyncio.get_running_loop().create_task(
                self._send_notices(self._notices), name="splitproxy-notify"
            )
        try:
            self._notices.put_nowait((hook, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.notification_dropped()
            logger.warning("rollout notifications are piling up; dropped one (%s)", hook.on)

    async def _send_notices(self, queue: asyncio.Queue[tuple[Hook, dict[str, Any]]]) -> None:
        """Notifications go out one at a time, in order."""
        while True:
            hook, payload = await queue.get()
            try:
                result = await self.send(hook, payload)
                if not result.ok:
                    logger.warning(
                        "rollout %s: the %s hook failed after %d attempt(s): %s",
                        payload.get("route"), hook.on, result.attempts, result.error,
                    )  # fmt: skip
            finally:
                queue.task_done()

    # --- calls --------------------------------------------------------------------------------

    async def send(self, hook: Hook, payload: Mapping[str, Any]) -> HookResult:
        """One hook call (in Slack's format for a ``slack`` hook); never raises."""
        if self.sender is None:
            return HookResult(False, None, 0, "the hook dispatcher is not started")
        body = slack_text(payload) if hook.format == "slack" else payload
        try:
            return await self.sender.post(
                hook.url, body, timeout=hook.timeout, retries=hook.retries, headers=hook.headers
            )
        except Exception as exc:  # an unexpected failure is the hook's failure, not ours
            return HookResult(False, None, 1, f"{type(exc).__name__}: {exc}")

    def _spawn(self, gates: _Gates, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"splitproxy-hook-{name}")
        gates.tasks.add(task)
        task.add_done_callback(gates.tasks.discard)
        task.add_done_callback(_log_failure)

    async def settle(self) -> None:
        """Wait for the gate calls out and the queued notifications (tests, shutdown)."""
        while True:
            tasks = [t for g in self._gates.values() for t in g.tasks]
            if not tasks:
                break
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._notices is not None and self._notifier is not None:
            await self._notices.join()

    async def close(self) -> None:
        """Cancel the gate calls, let queued notifications go out (for at most ``drain``
        seconds), stop sending; close the session `start` opened."""
        for gates in self._gates.values():
            for task in list(gates.tasks):
                task.cancel()
        if self._notices is not None and self._notifier is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notices.join(), self.drain)
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.sender = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", task.get_name(), exc_info=task.exception())


__all__ = ["NOTIFY_QUEUE", "HookDispatcher", "HookSender", "hook_label", "notified_hooks"]
