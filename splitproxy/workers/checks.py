"""Active health checks of one host's workers: the leader checks, the followers follow (pure).

Without this every worker would run every active check (N workers: N times the probes to each
upstream) and each would decide on its own results, so an address that flaps could be in
rotation in one worker and out in another. So only the leader worker runs the checks
(`dataplane.probes.Prober`). Its `HealthBook` tells `SharedChecks` each result as it comes;
the link sends them (`ipc.Checked`) with its harvest, four times a second, and the supervisor
relays them to every follower, which applies them to its own book in the same order
(`follow`): the same consecutive counts, the same transitions, a passing check that ends a
passive ejection there too.

A follower that starts or restarts missed the results before it: whenever the workers change
(`ipc.Members`), the next message also carries every checked address's *standing* (in or out
of rotation by the checks, ready, its consecutive passes and failures, the last result), which
a follower adopts over what it has. So does a message after the leader's list overflowed
(`MAX_RESULTS`: a stalled link must not grow it without bound).

Passive ejection (failed requests) stays each worker's own: each sees its own requests.
"""

from __future__ import annotations

from typing import Final

from splitproxy.config.vocabulary import Version
from splitproxy.dataplane.health import CheckResult, HealthBook, Probe
from splitproxy.workers.ipc import Checked, CheckedResult, Standing

MAX_RESULTS: Final = 65_536  # results kept between two sends; past it, standings instead
FOLLOWED: Final = "the leader worker's health checks"


class SharedChecks:
    """The leader's side: the results of its checks since the last `take`, in order."""

    def __init__(self, book: HealthBook, limit: int = MAX_RESULTS) -> None:
        self.book = book
        self.limit = limit
        self.results: list[CheckedResult] = []
        self.standing_due = True  # the first message tells where every address stands
        book.on_check = self._record

    def _record(self, probe: Probe, result: CheckResult) -> None:
        if len(self.results) >= self.limit:
            self.results.clear()  # the standings of the next message say it all
            self.standing_due = True
        self.results.append((probe.route, probe.version, probe.url, result))

    def members_changed(self) -> None:
        """A worker came or went: the next message carries every standing."""
        self.standing_due = True

    def take(self) -> Checked | None:
        """What to send the followers now (None: nothing happened)."""
        if not self.results and not self.standing_due:
            return None
        results, self.results = tuple(self.results), []
        standing = standings(self.book) if self.standing_due else None
        self.standing_due = False
        return Checked(results, standing)


def standings(book: HealthBook) -> tuple[Standing, ...]:
    """Where every actively checked address stands, by the checks alone."""
    out: list[Standing] = []
    for probe in book.probes():
        a = book.address(probe.route, probe.version, probe.url)
        if a is not None:
            out.append((probe.route, probe.version, probe.url, a.active_up, a.ready,
                        a.active_successes, a.active_failures, a.last_check))  # fmt: skip
    return tuple(out)


def follow(book: HealthBook, message: Checked) -> None:
    """A follower: apply the leader's results, in order, then adopt its standings."""
    for route, version, url, result in message.results:
        probe = book.probe(route, version, url)
        if probe is not None:  # not in this worker's config (a reload apart): nothing to do
            book.check(probe, result)
    for route, version, url, up, ready, successes, failures, last in message.standing or ():
        adopt(book, route, version, url, up, ready, successes, failures, last)


def adopt(
    book: HealthBook,
    route: str,
    version: Version,
    url: str,
    up: bool,
    ready: bool,
    successes: int,
    failures: int,
    last: CheckResult | None,
) -> None:
    """One address's standing by the leader's checks, over this worker's own."""
    address = book.address(route, version, url)
    if address is None or book.probe(route, version, url) is None:
        return
    address.active_successes = successes
    address.active_failures = failures
    address.last_check = last
    address.ready = ready
    book.set_active(address, up, FOLLOWED)
    address.backend.refresh()
