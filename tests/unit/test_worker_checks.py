"""Workers share the leader's active health checks: a follower that applies the leader's
results (and, when it joins late, its standings) puts the same addresses in and out of
rotation as the leader, without probing anything itself."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config import content_hash, parse_routing
from splitproxy.dataplane.health import CHECK_RESULTS, AddressHealth, CheckResult, HealthBook
from splitproxy.dataplane.state import RuntimeState
from splitproxy.workers.checks import SharedChecks, follow
from splitproxy.workers.ipc import Checked

A, B, C = "http://a:80", "http://b:80", "http://c:80"
FILE = f"""\
routes:
  - name: app
    stable: [{A}, {B}]
    health: {{path: /health, unhealthy_after: 2, healthy_after: 3}}
    candidate: {{url: {C}, revision: "2", health: {{path: /ready, unhealthy_after: 3}}}}
    weight: 50
"""


def book_for(text: str = FILE) -> HealthBook:
    book = HealthBook()
    book.tick(1000.0)
    state = RuntimeState()
    state.subscribe(book.on_swap)
    state.load(parse_routing(text), content_hash(text), 1000.0)
    return book


def picture(book: HealthBook) -> list[tuple[object, ...]]:
    """What routing and status read of every address, by the checks."""
    return [
        (a.backend.route, a.backend.version, a.url, a.state, a.available, a.active_up, a.ready,
         a.active_successes, a.active_failures, a.last_check)
        for a in book.addresses()
    ]  # fmt: skip


def by_url(book: HealthBook, url: str) -> AddressHealth:
    (address,) = [a for a in book.addresses() if a.url == url]
    return address


def wire(message: Checked) -> Checked:
    got = pickle.loads(pickle.dumps(message))  # as the supervisor's channel carries it
    assert isinstance(got, Checked)
    return got


checks = st.lists(
    st.tuples(st.sampled_from([A, B, C]), st.sampled_from(CHECK_RESULTS), st.booleans()),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(checks)
def test_a_follower_of_every_message_stands_where_the_leader_stands(
    events: list[tuple[str, CheckResult, bool]],
) -> None:
    leader, follower = book_for(), book_for()
    shared = SharedChecks(leader)
    probes = {p.url: p for p in leader.probes()}
    for url, result, send in events:
        leader.check(probes[url], result)
        if send:  # the link sends four times a second: any number of results per message
            message = shared.take()
            if message is not None:
                follow(follower, wire(message))
    last = shared.take()
    if last is not None:
        follow(follower, wire(last))
    assert picture(follower) == picture(leader)
    assert shared.take() is None  # nothing new: nothing to send


@settings(max_examples=100, deadline=None)
@given(checks, st.integers(0, 60))
def test_a_follower_that_joins_late_adopts_the_standings(
    events: list[tuple[str, CheckResult, bool]], joined: int
) -> None:
    leader = book_for()
    shared = SharedChecks(leader)
    shared.take()  # the first message went to the workers there were
    probes = {p.url: p for p in leader.probes()}
    for url, result, _ in events[:joined]:
        leader.check(probes[url], result)
    shared.take()  # sent before the new follower was there: it never sees these results
    follower = book_for()
    shared.members_changed()  # the new follower serves: the next message carries standings
    for url, result, _ in events[joined:]:
        leader.check(probes[url], result)
    message = shared.take()
    if message is not None:
        follow(follower, wire(message))
    assert picture(follower) == picture(leader)


def test_a_leaders_passing_check_ends_a_followers_passive_ejection() -> None:
    leader, follower = book_for(), book_for()
    shared = SharedChecks(leader)
    stable = follower.route("app")
    assert stable is not None
    for _ in range(3):  # the follower's own requests to A failed: ejected there only
        follower.failed(stable.stable, A, "connect")
    assert by_url(follower, A).state == "ejected"
    leader.check(next(p for p in leader.probes() if p.url == A), "success")
    message = shared.take()
    assert message is not None
    follow(follower, wire(message))
    assert by_url(follower, A).state == "healthy"


def test_an_overflowing_list_sends_standings_instead() -> None:
    leader, follower = book_for(), book_for()
    shared = SharedChecks(leader, limit=4)
    shared.take()
    probe = next(p for p in leader.probes() if p.url == B)
    for result in ["timeout", "timeout", "success", "connect_error", "timeout", "timeout"]:
        leader.check(probe, result)  # type: ignore[arg-type]
    message = shared.take()
    assert message is not None
    assert len(message.results) <= 4
    assert message.standing is not None
    follow(follower, wire(message))
    assert by_url(follower, B).state == "unhealthy"
    assert picture(follower) == picture(leader)


def test_results_for_addresses_a_follower_does_not_serve_are_ignored() -> None:
    leader = book_for()
    follower = book_for(FILE.replace(B, "http://d:80"))  # a reload apart
    shared = SharedChecks(leader)
    probe = next(p for p in leader.probes() if p.url == B)
    for _ in range(2):
        leader.check(probe, "timeout")
    message = shared.take()
    assert message is not None
    follow(follower, wire(message))
    assert all(a.state == "healthy" for a in follower.addresses())
