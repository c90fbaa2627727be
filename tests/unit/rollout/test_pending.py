"""The controller's set of routes with something to take (``Controller._pending``).

The tick asks the hook dispatcher, the external poller and the test job runner for a route's
gate answers, external values and test results only when the route is in the set the three
add to whenever they keep something for it. Nothing that arrives may be missed: whatever
the order of arrivals and ticks, a route that any of the three holds something for is in the
set, and the tick that finds it there takes all of it (every answer, value and result is seen
once, on the route's next tick)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import Hook, PrometheusCheck, WebCheck
from splitproxy.config.testjob import TestJob
from splitproxy.rollout.dispatch import HookDispatcher
from splitproxy.rollout.external import ExternalPoller
from splitproxy.rollout.hooks import HookResult
from splitproxy.rollout.messages import CallHook
from splitproxy.rollout.testjob import TestJobResult, TestJobRunner

ROUTES = ("a", "b", "c")


class Answers:
    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> HookResult:
        await asyncio.sleep(0)
        return HookResult(True, 200, 1, None)


async def read(check: PrometheusCheck | WebCheck) -> float | None:
    await asyncio.sleep(0)
    return 0.5


async def run(job: TestJob, env: Mapping[str, str]) -> TestJobResult:
    await asyncio.sleep(0)
    return TestJobResult(True, 0, False, 0.1, "ok")


HOOK = Hook.model_validate({"on": "step", "url": "http://hooks/step"})
CHECK = PrometheusCheck.model_validate({"prometheus": "http://prom:9090", "query": "up", "max": 1})
JOB = TestJob.model_validate({"command": ["true"]})

Op = tuple[str, str]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gate", "gate_unhooked", "external", "test", "turn", "tick"]),
            st.sampled_from(ROUTES),
        ),
        max_size=40,
    )
)
def test_whatever_arrives_for_a_route_is_taken_on_its_next_tick(ops: list[Op]) -> None:
    asyncio.run(_drive(ops))


async def _drive(ops: list[Op]) -> None:
    pending: set[str] = set()
    dispatcher = HookDispatcher(Answers(), pending=pending)
    poller = ExternalPoller(read, lambda: 0.0, pending=pending)
    runner = TestJobRunner(lambda: 0.0, pending=pending, run=run)
    runner.listening(None)
    sent = dict.fromkeys(ROUTES, 0)  # arrivals asked for, per route
    taken = dict.fromkeys(ROUTES, 0)  # arrivals the ticks took

    def tick(route: str) -> None:
        """What `Controller._step` asks: the three only for a route in the set."""
        if route in pending:
            pending.discard(route)
            taken[route] += len(dispatcher.answers(route))
            taken[route] += len(poller.values(route))
            taken[route] += len(runner.results(route))

    def holds(route: str) -> bool:
        """Does any of the three keep something for ``route`` (without taking it)?"""
        gates = dispatcher._gates.get(route)
        readings = poller._routes.get(route)
        job = runner._routes.get(route)
        return bool(
            (gates is not None and gates.answers)
            or (readings is not None and readings.values)
            or (job is not None and job.finished)
        )

    for step, (what, route) in enumerate(ops, 1):
        if what == "gate":  # answered after a turn of the loop or two
            dispatcher.gate(route, [HOOK], CallHook("step", step), {})
            sent[route] += 1
        elif what == "gate_unhooked":  # answered at once: no hook for the gate
            dispatcher.gate(route, [], CallHook("step", step), {})
            sent[route] += 1
        elif what == "external":  # a reading, a turn or two later (one at a time per check)
            key = CHECK.key
            readings = poller._routes.get(route)
            # (not while one is out or untaken: a second value before a take replaces the first)
            if readings is None or not (key in readings.in_flight or key in readings.values):
                poller.poll(route, [CHECK], 0.0, float(step))
                sent[route] += 1
        elif what == "test":  # a result when the job ends (a job started again cancels it)
            job = runner._routes.get(route)
            if job is None or job.task is None:
                runner.start(route, step, JOB, {})
                sent[route] += 1
        elif what == "turn":
            await asyncio.sleep(0)
        else:
            tick(route)
        for name in ROUTES:  # the invariant: nothing held for a route outside the set
            assert not holds(name) or name in pending, name
    await dispatcher.settle()
    await poller.settle()
    await runner.settle()
    for name in ROUTES:
        assert not holds(name) or name in pending
        tick(name)
        assert not holds(name)
        assert taken[name] == sent[name], name
    await dispatcher.close()
    await poller.close()
    await runner.close()
