"""Back-pressure between the client transport and the upstream connection (no socket)."""

from __future__ import annotations

from splitproxy.dataplane.context import CoarseClock
from splitproxy.dataplane.flow import FlowControl
from splitproxy.dataplane.pools import UpstreamPool
from splitproxy.dataplane.upstream import UpstreamConnection
from tests.unit.dataplane.harness import MockTransport, attach


def upstream() -> tuple[UpstreamConnection, MockTransport]:
    pool = UpstreamPool("up.test", 80, CoarseClock(0.0), connect_timeout=1.0, idle_timeout=4.0)
    up = UpstreamConnection(pool)
    transport = MockTransport()
    attach(up, transport)
    return up, transport


def test_a_full_client_pauses_the_upstream_until_it_drains() -> None:
    flow = FlowControl()
    up, transport = upstream()
    flow.client_write_paused(3.0, up)
    assert (flow.client_full, flow.full_since, transport.reading) == (True, 3.0, False)
    flow.client_write_resumed(4.5, up)
    assert (flow.client_full, transport.reading) == (False, True)
    assert up.last_read == 4.5  # the read timeout restarts when reading does


def test_an_upstream_attached_to_a_full_client_starts_paused() -> None:
    flow = FlowControl()
    flow.client_write_paused(1.0, None)
    up, transport = upstream()
    flow.upstream_attached(up)
    assert not transport.reading
    other, other_transport = upstream()
    flow.client_write_resumed(2.0, None)
    flow.upstream_attached(other)
    assert other_transport.reading


def test_client_reading_changes_are_applied_once() -> None:
    flow = FlowControl()
    transport = MockTransport()
    flow.transport = transport  # type: ignore[assignment]
    assert not flow.set_client_reading(True)  # already reading
    assert flow.set_client_reading(False)
    assert not transport.reading
    assert not flow.set_client_reading(False)
    assert flow.set_client_reading(True)
    assert transport.reading


def test_upstream_pressure_is_remembered() -> None:
    flow = FlowControl()
    flow.upstream_write_paused(True)
    assert flow.upstream_full
    flow.upstream_write_paused(False)
    assert not flow.upstream_full
