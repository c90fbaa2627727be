"""A/B tests over several processes (`splitproxy.dataplane.abpool`): followers ship their
first exposures and conversions, the leader's global table counts each user once, whatever
process their requests reached and however the batches interleave."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane.abgoals import AbBook, AbCounts
from splitproxy.dataplane.abpool import AbEvents, AbLead, PooledTable, user_hash
from splitproxy.dataplane.routing import CompiledRoute
from tests.unit.dataplane.test_abgoals import ab_route, request

ROUTE = ab_route()


def leader(route: CompiledRoute = ROUTE) -> AbBook:
    book = AbBook()
    book.configure([route])
    book.share()
    book.lead(True)
    return book


def follower(route: CompiledRoute = ROUTE, limit: int = 4096) -> AbBook:
    book = AbBook()
    book.configure([route])
    book.share(limit)
    return book


def visit(book: AbBook, user: str, goal: int | None = None, route: CompiledRoute = ROUTE) -> None:
    """One request of ``user`` as the data path sees it: routed (exposed), then its response
    (converting on ``goal``: 0 a sign-up, 1 a purchase worth 10 + the user's number)."""
    kw: dict[str, Any] = {"method": b"POST", "path": "/signup"} if goal == 0 else {}
    ex = request(route, user, **kw)
    book.exposed(ex)
    heads = [(b"X-Goal", b"buy"), (b"X-Goal-Value", f"{10 + int(user[1:])}".encode())]
    book.response(ex, 201 if goal == 0 else 200, heads if goal == 1 else [])


def taken(book: AbBook) -> AbCounts:
    counts = book.take("shop")
    assert counts is not None
    return counts


def test_a_user_seen_by_several_processes_counts_once_and_converts_once() -> None:
    lead, a, b = leader(), follower(), follower()
    for book in (lead, a, b):
        visit(book, "u1")
        visit(book, "u1", goal=0)
    visit(a, "u2", goal=1)
    visit(b, "u2", goal=1)
    lead.absorb(a.drain())
    lead.absorb(b.drain())
    counts = taken(lead)
    assert sum(counts.users) == 2
    assert [sum(c) for c in counts.converted] == [1, 1]
    assert sum(counts.values[1]) == 12.0  # u2's purchase, once
    assert a.drain() == {}
    assert taken(lead) == AbCounts((0, 0), ((0, 0), (0, 0)), ((0.0, 0.0),) * 2)


def test_a_conversion_counts_only_for_a_user_exposed() -> None:
    table = PooledTable(goals=1, max_users=10)
    table.convert(user_hash("u1", b"salt"), 0, 5.0)
    table.expose(user_hash("u1", b"salt"), 1)
    counts = table.take()
    assert counts.users == (0, 1)
    assert counts.converted == ((0, 0),)  # the conversion came first: never counted


def test_no_user_identifier_leaves_the_follower() -> None:
    a = follower()
    visit(a, "u7", goal=0)
    batch = a.drain()["shop"]
    assert [kind for _, kind, _ in batch.events] == [
        int(request(ROUTE, "u7").decision.version == "candidate"),
        2,
    ]
    assert {user for user, _, _ in batch.events} == {user_hash("u7", ROUTE.salt)}
    assert all(0 <= user < 2**64 for user, _, _ in batch.events)


def test_beyond_the_events_bound_new_users_are_left_out_and_conversions_wait() -> None:
    lead, a = leader(), follower(limit=3)
    for i in range(5):
        visit(a, f"u{i}")
    visit(a, "u0", goal=0)  # over the bound too: kept back, not lost
    visit(a, "u4", goal=0)  # left out on this process: never shipped
    batch = a.drain()["shop"]
    assert (len(batch.events), batch.untracked) == (3, 2)
    lead.absorb({"shop": batch})
    visit(a, "u0", goal=0)  # the next harvest has room: the sign-up is shipped now
    visit(a, "u4", goal=0)
    lead.absorb(a.drain())
    counts = taken(lead)
    assert (sum(counts.users), counts.untracked) == (3, 2)
    assert sum(counts.converted[0]) == 1


def test_the_global_table_holds_at_most_max_users() -> None:
    route = ab_route(max_users=100)
    lead, a = leader(route), follower(route)
    for i in range(80):
        visit(lead, f"u{i}", route=route)
        visit(a, f"u{i + 40}", route=route)
    lead.absorb(a.drain())
    counts = taken(lead)
    assert sum(counts.users) == 100
    assert counts.untracked == 20
    assert lead.size("shop") == 100


def test_a_new_test_or_a_new_leader_starts_afresh() -> None:
    lead, a = leader(), follower()
    lead.follow("shop", 10.0)
    a.follow_leader(lead.lead_info(epoch=1))
    visit(a, "u1")
    old = a.drain()
    lead.follow("shop", 99.0)  # the test restarts: the global table is empty again
    lead.absorb(old)  # recorded under the old test: dropped
    assert taken(lead).users == (0, 0)
    a.follow_leader(lead.lead_info(epoch=1))
    visit(a, "u1")  # the follower's table started afresh too: u1 is exposed again
    lead.absorb(a.drain())
    assert sum(taken(lead).users) == 1

    fresh = leader()  # another process takes the lead: an empty table, a new epoch
    fresh.follow("shop", 99.0)
    a.follow_leader(AbLead(2, {"shop": 99.0}))
    visit(a, "u1")
    fresh.absorb(a.drain())
    assert sum(taken(fresh).users) == 1


def test_events_recorded_before_the_leaders_word_are_still_shipped() -> None:
    lead, a = leader(), follower()
    visit(a, "u1", goal=0)  # before the follower heard who leads
    a.follow_leader(lead.lead_info(epoch=1))
    visit(a, "u1")  # exposed again on this process: counted once all the same
    lead.absorb(a.drain())
    counts = taken(lead)
    assert (sum(counts.users), sum(counts.converted[0])) == (1, 1)


def test_a_batch_for_a_route_without_a_test_is_ignored() -> None:
    lead = leader()
    lead.absorb({"gone": AbEvents(None, ((1, 0, 0.0),))})
    assert lead.take("gone") is None


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 15), st.sampled_from([None, 0, 1])), max_size=80),
    st.data(),
)
def test_pooled_counts_equal_one_process_counts(
    processes: int, requests: list[tuple[int, int | None]], data: st.DataObject
) -> None:
    """The same requests counted by one process, or spread over any number of processes and
    shipped in any interleaving that keeps each sender's order, count the same."""
    alone = AbBook()
    for user, goal in requests:
        visit(alone, f"u{user}", goal)
    books = [leader()] + [follower() for _ in range(processes - 1)]
    sent: list[list[dict[str, AbEvents]]] = [[] for _ in books]
    for user, goal in requests:
        where = data.draw(st.integers(0, processes - 1))
        visit(books[where], f"u{user}", goal)
        if processes == 1:
            continue
        # then perhaps a follower harvests, or one of its harvests in transit arrives
        action = data.draw(st.sampled_from(["nothing", "harvest", "deliver"]))
        q = data.draw(st.integers(1, processes - 1))
        if action == "harvest":
            sent[q].append(books[q].drain())
        elif action == "deliver" and sent[q]:
            books[0].absorb(sent[q].pop(0))
    for q in range(1, processes):
        sent[q].append(books[q].drain())
        for batch in sent[q]:
            books[0].absorb(batch)
    one = alone.take("shop") or AbCounts((0, 0), ((0, 0), (0, 0)), ((0.0, 0.0),) * 2)
    pooled = books[0].take("shop") or AbCounts((0, 0), ((0, 0), (0, 0)), ((0.0, 0.0),) * 2)
    assert pooled == one
