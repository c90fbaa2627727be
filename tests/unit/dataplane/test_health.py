"""The pure health state: passive ejection and its back-off, half-open probing, active checks,
the candidate's readiness, and what routing and the controller read."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.dataplane.health import (
    AddressHealth,
    BackendHealth,
    CandidateHealth,
    HealthBook,
    PassivePolicy,
    Probe,
)
from splitproxy.dataplane.state import RuntimeState

A, B = "http://a:80", "http://b:80"
C = "http://c:80"

FILE = f"""\
routes:
  - name: app
    stable: [{A}, {B}]
    candidate: {{url: {C}, revision: "2", health: {{path: /ready, unhealthy_after: 2}}}}
    weight: 50
"""


def book_for(text: str = FILE, now: float = 1000.0) -> tuple[HealthBook, RuntimeState]:
    book = HealthBook()
    book.tick(now)
    state = RuntimeState()
    state.subscribe(book.on_swap)
    state.load(parse_routing(text), content_hash(text), now)
    return book, state


def stable(book: HealthBook) -> BackendHealth:
    rh = book.route("app")
    assert rh is not None
    return rh.stable


def address(book: HealthBook, url: str = A) -> AddressHealth:
    return stable(book).by_url[url]


def probe_of(book: HealthBook, url: str) -> Probe:
    (probe,) = [p for p in book.probes() if p.url == url]
    return probe


def state(address: AddressHealth) -> str:
    return address.state  # (read anew each time: the state moves under mypy's narrowing)


def candidate_up(book: HealthBook) -> bool:
    rh = book.route("app")
    assert rh is not None
    return rh.candidate_up


def fail(book: HealthBook, times: int, url: str = A) -> None:
    for _ in range(times):
        book.failed(stable(book), url, "connect")


def test_everything_starts_healthy_and_clean() -> None:
    book, _ = book_for()
    backend = stable(book)
    assert backend.all_available
    assert backend.any_available
    assert backend.clean
    assert [a.state for a in backend.addresses] == ["healthy", "healthy"]
    assert book.up("app", "stable")
    assert book.up("app", "candidate")
    assert book.up("gone", "stable")  # an unknown route is never held back


def test_consecutive_failures_eject_and_a_success_in_between_resets_the_count() -> None:
    book, _ = book_for()
    fail(book, 2)
    assert address(book).state == "healthy"
    assert not stable(book).clean
    assert stable(book).all_available
    book.succeeded(stable(book), A)
    assert address(book).failures == 0
    assert stable(book).clean
    fail(book, 2)
    assert address(book).state == "healthy"
    fail(book, 1)
    assert address(book).state == "ejected"
    assert address(book).ejected_until == 1005.0
    assert not stable(book).all_available
    assert stable(book).any_available
    assert not stable(book).all_down


def test_ejection_ends_in_one_trial_request_then_back_in_on_success() -> None:
    book, _ = book_for()
    fail(book, 3)
    book.tick(1004.9)
    assert address(book).state == "ejected"
    assert not address(book).available
    book.tick(1005.0)
    a = address(book)
    assert a.state == "probing"
    assert a.available
    book.take_trial(a)
    assert not a.available  # one request at a time tries it
    book.take_trial(a)
    book.succeeded(stable(book), A)
    assert a.state == "healthy"
    assert a.ejections == 0
    assert stable(book).clean
    assert a.since == 1005.0


def test_a_failed_trial_ejects_for_twice_as_long() -> None:
    book, _ = book_for()
    fail(book, 3)
    book.tick(1005.0)
    book.take_trial(address(book))
    fail(book, 1)
    assert address(book).state == "ejected"
    assert address(book).ejected_until == 1015.0  # 10 s: the second ejection in a row


def test_a_trial_that_never_reports_frees_the_slot() -> None:
    book, _ = book_for()
    fail(book, 3)
    book.tick(1005.0)
    book.take_trial(address(book))
    book.tick(1010.0)
    assert not address(book).available
    book.tick(1016.0)
    assert address(book).available
    assert address(book).state == "probing"


@given(st.integers(min_value=1, max_value=200))
def test_back_off_doubles_and_is_capped(ejections: int) -> None:
    policy = PassivePolicy()
    time = policy.ejection_time(ejections)
    assert policy.base_ejection <= time <= policy.max_ejection
    assert policy.ejection_time(ejections + 1) == min(policy.max_ejection, 2 * time)


@given(st.integers(min_value=1, max_value=12))
def test_it_keeps_failing_so_it_stays_out_longer_each_time(rounds: int) -> None:
    book, _ = book_for()
    fail(book, 3)
    now = 1000.0
    lengths = []
    for _ in range(rounds):
        a = address(book)
        assert a.ejected_until is not None
        lengths.append(a.ejected_until - now)
        now = a.ejected_until
        book.tick(now)
        book.take_trial(a)
        fail(book, 1)
    assert lengths == [min(300.0, 5.0 * 2**i) for i in range(rounds)]


def test_all_addresses_out_is_all_down() -> None:
    book, _ = book_for()
    fail(book, 3, A)
    fail(book, 3, B)
    assert stable(book).all_down
    assert not book.up("app", "stable")


def test_active_checks_count_unhealthy_after_and_healthy_after() -> None:
    book, _ = book_for()
    rh = book.route("app")
    assert rh is not None
    assert rh.candidate is not None
    probe = probe_of(book, C)
    assert probe.spec.path == "/ready"
    assert not probe.tcp
    cand = rh.candidate.by_url[C]
    book.check(probe, "timeout")
    assert state(cand) == "healthy"
    assert candidate_up(book)
    book.check(probe, "unexpected_status")
    assert state(cand) == "unhealthy"
    assert not candidate_up(book)
    assert cand.checks == {"timeout": 1, "unexpected_status": 1}
    book.check(probe, "success")  # healthy_after is 2
    assert state(cand) == "unhealthy"
    book.check(probe, "connect_error")
    book.check(probe, "success")
    assert state(cand) == "unhealthy"
    book.check(probe, "success")
    assert state(cand) == "healthy"
    assert candidate_up(book)
    assert cand.last_check == "success"


def test_candidate_health_ready_healthy_and_unhealthy_since() -> None:
    book, state = book_for()
    probe = probe_of(book, C)
    assert book.candidate("app") == CandidateHealth(False, True, None)
    book.check(probe, "success")
    book.check(probe, "success")
    assert book.candidate("app") == CandidateHealth(True, True, None)
    book.tick(1100.0)
    book.check(probe, "timeout")
    book.check(probe, "timeout")
    assert book.candidate("app") == CandidateHealth(True, False, 1100.0)
    book.tick(1200.0)
    book.check(probe, "success")
    book.check(probe, "success")
    assert book.candidate("app") == CandidateHealth(True, True, None)
    # a new candidate must earn readiness again; the stable addresses keep their record
    fail(book, 3)
    text = FILE.replace('revision: "2"', 'revision: "3"')
    state.load(parse_routing(text), content_hash(text), 1200.0)
    assert book.candidate("app").ready is False
    assert address(book).state == "ejected"
    assert book.candidate("gone") == CandidateHealth(True, True, None)


def test_a_passing_check_ends_a_passive_ejection() -> None:
    text = FILE.replace("weight: 50", "weight: 50\n    health: {interval: 1s}")
    book, _ = book_for(text)
    fail(book, 3)
    assert address(book).state == "ejected"
    book.check(probe_of(book, A), "success")
    assert address(book).state == "healthy"


def test_a_rollout_candidate_without_health_gets_a_tcp_readiness_probe() -> None:
    text = """\
routes:
  - name: app
    stable: http://a:80
    candidate: {url: "http://c:80", revision: "2"}
    rollout: {steps: [{weight: 10, interval: 1m}]}
"""
    book, _ = book_for(text)
    (probe,) = book.probes()
    assert probe.tcp
    assert probe.version == "candidate"
    assert probe.port == 80
    assert not book.candidate("app").ready
    book.check(probe, "success")
    book.check(probe, "success")
    assert book.candidate("app").ready
    # without a rollout and without health: no active check at all, and ready at once
    plain, _ = book_for(text.replace("    rollout: {steps: [{weight: 10, interval: 1m}]}\n", ""))
    assert plain.probes() == ()
    assert plain.candidate("app").ready


def test_changes_are_logged_once_with_why(caplog: pytest.LogCaptureFixture) -> None:
    book, _ = book_for()
    seen: list[tuple[str, ...]] = []
    book.listeners.append(lambda *change: seen.append(change))
    with caplog.at_level(logging.INFO, logger="splitproxy.health"):
        fail(book, 3)
        book.tick(1005.0)
    records = caplog.records
    assert seen == [
        ("app", "stable", A, "healthy", "ejected", "3 consecutive failures (connect); out for 5s"),
        ("app", "stable", A, "ejected", "probing", "ejection time is up"),
    ]
    lines = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert len(lines) == 2
    assert "healthy -> ejected" in lines[0]
    assert A in lines[0]
