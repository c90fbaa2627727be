"""The leader lease's clock, moved by hand: when a replica leads, steps down, and renews."""

from __future__ import annotations

import pytest

from splitproxy.replicas.lease import LeaseClock


def test_a_replica_leads_from_a_success_until_ttl_minus_margin_after_it_was_sent() -> None:
    clock = LeaseClock(ttl=6.0, margin=1.0)
    assert not clock.leading(0.0)
    clock.succeeded(100.0)
    assert clock.leading(100.0)
    assert clock.leading(104.9)
    assert not clock.leading(105.0)  # Redis would let another replica in at 106 at the latest
    assert clock.until() == 105.0


def test_renews_come_every_third_of_the_ttl_and_each_success_extends_leading() -> None:
    clock = LeaseClock(ttl=6.0, margin=1.0)
    clock.succeeded(0.0)
    assert not clock.renew_due(1.9)
    assert clock.renew_due(2.0)
    clock.succeeded(2.0)
    assert not clock.renew_due(3.9)
    assert clock.renew_due(4.0)
    assert clock.leading(6.9)  # 2.0 + 6 - 1
    assert not clock.leading(7.0)


def test_a_failed_renew_keeps_leading_until_the_last_success_runs_out_and_retries_sooner() -> None:
    clock = LeaseClock(ttl=6.0, margin=1.0)
    clock.succeeded(0.0)
    clock.failed(2.0)  # Redis out of reach
    assert clock.leading(4.9)
    assert not clock.renew_due(2.4)
    assert clock.renew_due(2.5)  # a quarter of the interval after the failure
    clock.failed(2.5)
    assert not clock.renew_due(2.9)
    assert clock.renew_due(3.0)
    assert not clock.leading(5.0)  # no success since 0.0: stepped down
    assert not clock.renew_due(5.5)  # a replica that does not lead acquires, it does not renew


def test_a_lease_taken_by_another_replica_ends_leading_at_once() -> None:
    clock = LeaseClock(ttl=6.0, margin=1.0)
    clock.succeeded(0.0)
    clock.lost(2.0)
    assert not clock.leading(2.0)
    assert clock.until() is None
    clock.succeeded(10.0)  # acquired again later
    assert clock.leading(14.0)


def test_an_answer_older_than_the_last_success_does_not_shorten_it() -> None:
    clock = LeaseClock(ttl=6.0, margin=1.0)
    clock.succeeded(4.0)
    clock.succeeded(2.0)  # a slow reply to an earlier renew, recorded late
    assert clock.leading(8.9)


@pytest.mark.parametrize("margin", [-1.0, 6.0, 7.5])
def test_a_margin_outside_the_ttl_is_refused(margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        LeaseClock(ttl=6.0, margin=margin)
