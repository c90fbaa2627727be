"""The hook dispatcher on its own: gates answered through `answers`, notifications in order,
a full queue dropping (and counting) the overflow."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from splitproxy.config import Hook
from splitproxy.rollout.dispatch import HookDispatcher
from splitproxy.rollout.hooks import HookResult
from splitproxy.rollout.messages import CallHook
from splitproxy.rollout.metrics import RolloutMetrics


class Sender:
    """Answers 2xx unless the URL says ``fail``; holds every call while ``gate`` is closed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> HookResult:
        await self.gate.wait()
        self.calls.append((url, dict(payload)))
        ok = "fail" not in url
        return HookResult(ok, 200 if ok else 500, 1, None if ok else "HTTP 500")


def hook(on: str, url: str, **fields: Any) -> Hook:
    return Hook.model_validate({"on": on, "url": url, **fields})


async def test_a_gate_passes_only_when_every_hook_answers_2xx_and_is_called_once() -> None:
    sender = Sender()
    woken: list[int] = []
    dispatcher = HookDispatcher(sender, on_answer=lambda: woken.append(1))
    hooks = [hook("step", "http://ci/a"), hook("step", "http://ci/fail", name="smoke")]
    sender.gate.clear()
    dispatcher.gate("shop", hooks, CallHook("step", 2), {"type": "step"})
    dispatcher.gate("shop", hooks, CallHook("step", 2), {"type": "step"})  # still out
    await asyncio.sleep(0)
    assert dispatcher.waiting("shop") == ["step (step 2)"]
    sender.gate.set()
    await dispatcher.settle()
    assert len(sender.calls) == 2
    (answer,) = dispatcher.answers("shop")
    assert (answer.gate, answer.step, answer.passed) == ("step", 2, False)
    assert answer.detail == "hook 'smoke': HTTP 500"
    assert woken == [1]
    assert dispatcher.answers("shop") == []  # taken
    assert dispatcher.waiting("shop") == []
    # a gate whose hook is gone passes at once
    dispatcher.gate("shop", [], CallHook("confirm-promotion", 3), {})
    (passed,) = dispatcher.answers("shop")
    assert (passed.passed, passed.detail) == (True, "no hook configured")


async def test_notifications_go_out_in_order_to_the_hooks_that_want_them() -> None:
    sender = Sender()
    dispatcher = HookDispatcher(sender)
    hooks = [hook("event", "http://chat"), hook("rollback", "http://undo")]
    for kind in ("started", "step", "rolled_back"):
        dispatcher.notify(hooks, kind, {"type": kind})
    await dispatcher.settle()
    assert [(u, b["type"], b["hook"]) for u, b in sender.calls] == [
        ("http://chat", "started", "event"),
        ("http://chat", "step", "event"),
        ("http://chat", "rolled_back", "event"),
        ("http://undo", "rolled_back", "rollback"),
    ]
    await dispatcher.close()


async def test_a_full_queue_drops_notifications_and_the_metric_counts_them() -> None:
    sender = Sender()
    sender.gate.clear()  # nothing gets through: the queue fills up
    metrics = RolloutMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    dispatcher = HookDispatcher(sender, metrics=metrics, queue_size=3, drain=0.01)
    hooks = [hook("event", "http://chat")]
    for i in range(5):
        dispatcher.notify(hooks, "step", {"type": "step", "n": i})
    assert dispatcher.dropped == 2
    text = generate_latest(registry).decode()
    assert "splitproxy_hook_notifications_dropped_total 2.0" in text
    await dispatcher.close()  # the drain gives up; the held notifications are cancelled
    assert sender.calls == []
