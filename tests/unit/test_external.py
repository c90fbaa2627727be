"""The external-check poller on its own: reads when due, one at a time per check, values
taken once, failures kept for status."""

from __future__ import annotations

import asyncio

from splitproxy.config import PrometheusCheck, WebCheck
from splitproxy.rollout.external import ExternalCheck, ExternalPoller
from splitproxy.rollout.sources import SourceError


async def test_checks_are_read_when_due_and_their_values_taken_once() -> None:
    release = asyncio.Event()
    reads: list[str] = []

    async def reader(check: ExternalCheck) -> float | None:
        reads.append(check.key)
        await release.wait()
        if isinstance(check, WebCheck):
            raise SourceError("no answer from http://ci within 1s")
        return 0.5

    prom = PrometheusCheck.model_validate({"prometheus": "http://prom", "query": "up", "max": 1})
    web = WebCheck.model_validate({"web": "http://ci/ok", "name": "ci"})
    poller = ExternalPoller(reader, clock=lambda: 100.0)
    poller.poll("shop", [prom, web], every=2.0, now=10.0)
    await asyncio.sleep(0)
    poller.poll("shop", [prom, web], every=2.0, now=13.0)  # due, but the reads are still out
    assert sorted(reads) == ["ci", "prometheus"]
    release.set()
    await poller.settle()
    assert poller.values("shop") == {"prometheus": 0.5, "ci": None}
    assert poller.values("shop") == {}
    assert poller.status("shop")["ci"] == {
        "value": None,
        "at": 100.0,
        "error": "no answer from http://ci within 1s",
    }
    poller.poll("shop", [prom, web], every=2.0, now=11.0)  # not due since the read at 10
    assert len(reads) == 2
    poller.poll("shop", [prom, web], every=2.0, now=12.0)
    await poller.settle()
    assert len(reads) == 4
    poller.forget("shop")
    assert poller.status("shop") == {}
    await poller.close()


async def test_close_cancels_the_reads_out() -> None:
    async def hang(check: ExternalCheck) -> float | None:
        await asyncio.sleep(60)
        return None

    web = WebCheck.model_validate({"web": "http://ci/ok"})
    poller = ExternalPoller(hang, clock=lambda: 0.0)
    poller.poll("shop", [web], every=1.0, now=0.0)
    await asyncio.sleep(0)
    await asyncio.wait_for(poller.close(), 1.0)
    assert poller.values("shop") == {}
