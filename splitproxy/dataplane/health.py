"""Which upstream addresses may take traffic: active health checks and passive ejection (pure).

Every address of every route's backend has an `AddressHealth`, kept by the `HealthBook`, which
follows the routing snapshots. Two independent signals decide whether an address takes
requests:

- **active checks** (a backend with ``health:``, see `config.routes.HealthCheck`; and a TCP
  connect probe for a rollout's candidate without one, so its readiness is known): each
  result comes in through `HealthBook.check`. ``unhealthy_after`` consecutive failures take
  the address out (``unhealthy``), ``healthy_after`` consecutive passes put it back. An address
  starts in rotation: checks take it out, they need not let it in first.
- **passive ejection**, on for every address: the data path reports each attempt
  (`HealthBook.succeeded`, `HealthBook.failed`: refused or timed-out connects, resets,
  invalid responses). `PassivePolicy.eject_after` consecutive failures eject it for
  ``base_ejection`` seconds, doubled on each ejection in a row, at most ``max_ejection``.
  When that time is up the address is ``probing`` (half-open): the next request may try it
  (only one at a time); a success puts it back and forgets the back-off, a failure ejects it
  again for twice as long. A passing active check also ends an ejection.

A backend whose addresses are all out still serves (fail open): the data path picks one of
them anyway and the backend shows ``all_down``; a clear 502 beats refusing to try. A
candidate with every address out gets no user traffic at all: routing sends it to stable.

The hot path reads precomputed attributes: ``RouteHealth.candidate_up``,
``BackendHealth.all_available`` and ``BackendHealth.clean`` (no address with a failure on
record); only a degraded backend costs more. No clock: `HealthBook.tick` (the sweeper, a few
times a second) passes the wall-clock time in, and the book stamps what happens until the
next tick with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from splitproxy.config.routes import HealthCheck, Route
from splitproxy.config.vocabulary import CANDIDATE, STABLE, Version
from splitproxy.dataplane.routing import BackendPlan, CompiledRoute
from splitproxy.dataplane.state import Snapshot
from splitproxy.dataplane.swapdiff import changed_routes

logger = logging.getLogger("splitproxy.health")

State = Literal["healthy", "unhealthy", "ejected", "probing"]
CheckResult = Literal["success", "unexpected_status", "timeout", "connect_error"]
CHECK_RESULTS: Final[tuple[CheckResult, ...]] = (
    "success",
    "unexpected_status",
    "timeout",
    "connect_error",
)
TCP_CHECK: Final = HealthCheck()  # the defaults, for the TCP readiness probe of a candidate


@dataclass(frozen=True, slots=True)
class CandidateHealth:
    """What the rollout controller learns about a route's candidate, each tick."""

    ready: bool  # has passed healthy_after consecutive checks (active, or TCP connects
    # without `health:`) since this candidate appeared
    healthy: bool  # at least one of its addresses is available now
    unhealthy_since: float | None  # wall-clock time it last became unavailable, None if healthy


_NO_CANDIDATE: Final = CandidateHealth(ready=True, healthy=True, unhealthy_since=None)


@dataclass(frozen=True, slots=True)
class PassivePolicy:
    """When consecutive failed attempts eject an address, and for how long."""

    eject_after: int = 3
    base_ejection: float = 5.0  # seconds; doubled on each ejection in a row
    max_ejection: float = 300.0

    def ejection_time(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection in a row lasts (1-based)."""
        return min(self.max_ejection, self.base_ejection * 2.0 ** min(ejections - 1, 60))


@dataclass(frozen=True, slots=True)
class Probe:
    """One active check to run: ``tcp`` is a connect-only readiness probe."""

    route: str
    version: Version
    url: str
    host: str
    port: int
    spec: HealthCheck
    tcp: bool


class AddressHealth:
    """One upstream address of one route's version."""

    __slots__ = (
        "active_failures",
        "active_successes",
        "active_up",
        "backend",
        "checks",
        "ejected_until",
        "ejections",
        "failures",
        "last_check",
        "probing",
        "ready",
        "since",
        "trial_since",
        "url",
    )

    def __init__(self, backend: BackendHealth, url: str, now: float) -> None:
        self.backend = backend
        self.url = url
        self.active_up = True  # no check has said otherwise
        self.active_successes = 0
        self.active_failures = 0
        self.ready = False  # passed healthy_after checks in a row at least once
        self.failures = 0  # consecutive failed attempts of requests
        self.ejections = 0  # ejections in a row (the back-off's exponent)
        self.ejected_until: float | None = None
        self.probing = False  # the ejection is over; one request may try it
        self.trial_since: float | None = None  # when that one request took it
        self.since = now  # wall-clock time of the last change of `state`
        self.last_check: CheckResult | None = None
        self.checks: dict[CheckResult, int] = {}

    @property
    def state(self) -> State:
        if not self.active_up:
            return "unhealthy"
        if self.ejected_until is not None:
            return "probing" if self.probing else "ejected"
        return "healthy"

    @property
    def available(self) -> bool:
        """May a request be sent here now (not counting fail-open)?"""
        if not self.active_up:
            return False
        if self.ejected_until is None:
            return True
        return self.probing and self.trial_since is None


class BackendHealth:
    """The addresses of one route's version, and what the hot path reads about them."""

    __slots__ = ("addresses", "all_available", "any_available", "by_url", "clean", "route",
                 "tracked", "version")  # fmt: skip

    def __init__(self, route: str, version: Version) -> None:
        self.route = route
        self.version = version
        self.addresses: tuple[AddressHealth, ...] = ()
        self.by_url: dict[str, AddressHealth] = {}
        self.all_available = True
        self.any_available = True
        self.clean = True  # every address healthy with no failure on record
        self.tracked = False  # actively checked (health: or the TCP readiness probe)

    def refresh(self) -> None:
        addresses = self.addresses
        self.all_available = all(a.available for a in addresses)
        self.any_available = any(a.available for a in addresses)
        self.clean = all(a.failures == 0 and a.state == "healthy" for a in addresses)

    @property
    def all_down(self) -> bool:
        """Every address is out: requests go to one of them anyway (fail open)."""
        return bool(self.addresses) and not self.any_available

    @property
    def ready(self) -> bool:
        return not self.tracked or any(a.ready for a in self.addresses)

    @property
    def healthy(self) -> bool:
        return any(a.state == "healthy" for a in self.addresses)


class RouteHealth:
    """A route's backends' health; ``candidate_up`` is what routing asks per request."""

    __slots__ = ("candidate", "candidate_up", "stable", "unhealthy_since")

    def __init__(self, stable: BackendHealth, candidate: BackendHealth | None) -> None:
        self.stable = stable
        self.candidate = candidate
        self.candidate_up = True
        self.unhealthy_since: float | None = None

    def backend(self, version: Version) -> BackendHealth | None:
        return self.candidate if version == CANDIDATE else self.stable


Change = Callable[[AddressHealth], None]
Listener = Callable[[str, str, str, str, str, str], None]


class HealthBook:
    """Every address's health, following the routing snapshots (`on_swap`).

    The data path asks `route` once per request; the prober reads `probes` and reports
    `check` results; the controller asks `candidate`; status reads `route`."""

    def __init__(self, policy: PassivePolicy | None = None) -> None:
        self.policy = policy or PassivePolicy()
        self.routes: dict[str, RouteHealth] = {}
        self.now = 0.0  # wall-clock time of the latest tick
        self._probes: tuple[Probe, ...] = ()
        self._ejected: set[AddressHealth] = set()
        self._candidates: dict[str, tuple[str, ...]] = {}  # the URLs readiness was earned for
        self._route_probes: dict[str, tuple[Probe, ...]] = {}  # a route's part of `_probes`
        self._followed: Snapshot | None = None  # the snapshot `routes` follows
        self.listeners: list[Listener] = []  # (route, version, url, old, new, why)
        # told every active check result first (the leader worker shares them: workers/checks)
        self.on_check: Callable[[Probe, CheckResult], None] | None = None
        self._probe_index: tuple[tuple[Probe, ...], dict[tuple[str, str, str], Probe]] = ((), {})

    # -- following the config ---------------------------------------------------------------
    def on_swap(self, old: Snapshot | None, new: Snapshot) -> None:
        """Follow a new snapshot: keep the state of addresses that stay, start new ones
        healthy, forget removed ones; compute the active checks to run.

        Only the routes the swap changed (`swapdiff.changed_routes`) are redone: the others
        keep their objects, which is what redoing them would give (their state is kept up to
        date as it changes). `resync` redoes every route."""
        if old is None or old is not self._followed:
            self.resync(new)
            return
        diff = changed_routes(old, new)
        routes, probes = self.routes, self._route_probes
        moved = False  # did the active checks change (their list is rebuilt only then)?
        for name in diff.removed:
            del routes[name]
            self._candidates.pop(name, None)
            moved |= probes.pop(name, None) is not None
        for name in diff.changed:
            route = new.route(name)
            assert route is not None
            before = probes.get(name)
            routes[name] = self._follow(new, route, routes.get(name))
            moved |= probes.get(name) != before
        if diff.renamed:  # the order of the file, as `resync` has it
            routes = self.routes = {r.name: routes[r.name] for r in new.routes}
        if moved or (diff.renamed and self._probes):
            self._probes = tuple(p for name in routes for p in probes.get(name, ()))
        if self._ejected and (diff.changed or diff.removed):
            self._ejected = {a for a in self._ejected if self._live(a)}
        self._followed = new

    def resync(self, new: Snapshot) -> None:
        """Follow ``new`` redoing every route (at the first snapshot, or when the book missed
        one): what `on_swap` gives by redoing only the changed ones."""
        routes: dict[str, RouteHealth] = {}
        self._route_probes = {}
        for route in new.routes:
            routes[route.name] = self._follow(new, route, self.routes.get(route.name))
        for gone in set(self._candidates) - set(routes):
            del self._candidates[gone]
        self.routes = routes
        self._probes = tuple(p for name in routes for p in self._route_probes.get(name, ()))
        self._ejected = {a for a in self._ejected if self._live(a)}
        self._followed = new

    def _follow(
        self, new: Snapshot, route: CompiledRoute, before: RouteHealth | None
    ) -> RouteHealth:
        """``route``'s health in ``new``, from its health ``before`` (addresses that stay
        keep their state); records its active checks."""
        model = new.config.route(route.name)
        stable = self._backend(route.name, STABLE, route.stable, before)
        candidate = None
        fresh = False
        if route.candidate is not None:
            urls = (t.url for t in route.candidate.targets)
            identity = (route.candidate.revision or "", *urls)
            fresh = self._candidates.get(route.name) != identity
            self._candidates[route.name] = identity
            candidate = self._backend(
                route.name, CANDIDATE, route.candidate, None if fresh else before
            )
        else:
            self._candidates.pop(route.name, None)
        rh = RouteHealth(stable, candidate)
        if before is not None and not fresh:
            rh.unhealthy_since = before.unhealthy_since
        probes: list[Probe] = []
        if model is not None:
            probes += _probes(model, STABLE, stable, route.stable)
            if candidate is not None and route.candidate is not None:
                probes += _probes(model, CANDIDATE, candidate, route.candidate)
        if probes:
            self._route_probes[route.name] = tuple(probes)
        else:
            self._route_probes.pop(route.name, None)
        self._update(rh, self.now)
        return rh

    def _live(self, address: AddressHealth) -> bool:
        """Is ``address`` still one of the book's (not left behind by a swap)?"""
        backend = address.backend
        rh = self.routes.get(backend.route)
        now = rh.backend(backend.version) if rh is not None else None
        return now is backend and backend.by_url.get(address.url) is address

    def _backend(
        self, route: str, version: Version, plan: BackendPlan, before: RouteHealth | None
    ) -> BackendHealth:
        backend = BackendHealth(route, version)
        old = before.backend(version) if before is not None else None
        kept = old.by_url if old is not None else {}
        addresses = []
        for target in plan.targets:
            address = kept.get(target.url)
            if address is None:
                address = AddressHealth(backend, target.url, self.now)
            address.backend = backend
            addresses.append(address)
        backend.addresses = tuple(addresses)
        backend.by_url = {a.url: a for a in addresses}
        backend.refresh()
        return backend

    def probes(self) -> tuple[Probe, ...]:
        """The active checks the current config asks for, one per address."""
        return self._probes

    # -- reads ------------------------------------------------------------------------------
    def route(self, name: str) -> RouteHealth | None:
        return self.routes.get(name)

    def up(self, route: str, version: Version) -> bool:
        """May ``version`` of ``route`` take user traffic (an address is available)?"""
        rh = self.routes.get(route)
        backend = rh.backend(version) if rh is not None else None
        return backend is None or backend.any_available

    def candidate(self, route: str) -> CandidateHealth:
        """The route's candidate as the rollout controller sees it."""
        rh = self.routes.get(route)
        if rh is None or rh.candidate is None:
            return _NO_CANDIDATE
        cand = rh.candidate
        return CandidateHealth(cand.ready, cand.healthy, rh.unhealthy_since)

    def address(self, route: str, version: Version, url: str) -> AddressHealth | None:
        """The address ``url`` of ``route``'s ``version``, if the config still names it."""
        rh = self.routes.get(route)
        backend = rh.backend(version) if rh is not None else None
        return backend.by_url.get(url) if backend is not None else None

    def probe(self, route: str, version: Version, url: str) -> Probe | None:
        """This book's active check of that address (None: its config asks for none)."""
        probes, index = self._probe_index
        if probes is not self._probes:
            probes = self._probes
            index = {(p.route, p.version, p.url): p for p in probes}
            self._probe_index = (probes, index)
        return index.get((route, version, url))

    def set_active(self, address: AddressHealth, up: bool, why: str) -> None:
        """Put ``address`` in or out of rotation by active checks (the leader worker's,
        for a follower that runs none)."""
        if address.active_up != up:
            self._set(address, _active_up if up else _active_down, why)

    def addresses(self) -> Iterator[AddressHealth]:
        for rh in self.routes.values():
            for backend in (rh.stable, rh.candidate):
                if backend is not None:
                    yield from backend.addresses

    # -- time -------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Advance the clock: ejections whose time is up turn to probing (half-open); a
        trial request that never reported back (it ended some other way) frees the slot."""
        self.now = now
        for address in list(self._ejected):
            until = address.ejected_until
            if until is None:
                self._ejected.discard(address)
            elif not address.probing and now >= until:
                self._set(address, _half_open, "ejection time is up")
            elif address.trial_since is not None and now - address.trial_since > 10.0:
                address.trial_since = None
                address.backend.refresh()
                self._update_route(address)

    # -- what the data path reports ---------------------------------------------------------
    def take_trial(self, address: AddressHealth) -> None:
        """A request was sent to a probing address: no other may try it until it reports."""
        if address.probing and address.trial_since is None:
            address.trial_since = self.now
            address.backend.refresh()
            self._update_route(address)

    def succeeded(self, backend: BackendHealth, url: str) -> None:
        """A request to ``url`` got a response head."""
        address = backend.by_url.get(url)
        if address is None or (address.failures == 0 and address.ejected_until is None):
            return
        address.failures = 0
        if address.ejected_until is not None:
            self._set(address, _readmit, "a request succeeded")
        else:
            backend.refresh()

    def failed(self, backend: BackendHealth, url: str, why: str) -> None:
        """A request to ``url`` failed (refused, timed out connecting, reset, garbled)."""
        address = backend.by_url.get(url)
        if address is None:
            return
        address.failures += 1
        policy = self.policy
        if address.probing:
            self._eject(address, f"the trial request failed ({why})")
        elif address.ejected_until is None and address.failures >= policy.eject_after:
            self._eject(address, f"{address.failures} consecutive failures ({why})")
        else:
            backend.refresh()

    def _eject(self, address: AddressHealth, why: str) -> None:
        address.ejections += 1
        seconds = self.policy.ejection_time(address.ejections)

        def eject(a: AddressHealth) -> None:
            a.ejected_until = self.now + seconds
            a.probing = False
            a.trial_since = None

        self._ejected.add(address)
        self._set(address, eject, f"{why}; out for {seconds:g}s")

    # -- what the prober reports ------------------------------------------------------------
    def check(self, probe: Probe, result: CheckResult) -> None:
        """An active check of ``probe``'s address ended with ``result``."""
        if self.on_check is not None:
            self.on_check(probe, result)
        address = self.address(probe.route, probe.version, probe.url)
        if address is None:
            return  # a reload removed it while the check ran
        spec = probe.spec
        route, version, url = probe.route, probe.version, probe.url
        address.last_check = result
        address.checks[result] = address.checks.get(result, 0) + 1
        if result == "success":
            address.active_failures = 0
            address.active_successes += 1
            if address.active_successes >= spec.healthy_after:
                if not address.ready:
                    address.ready = True
                    logger.info("%s %s %s is ready (%d checks passed)",
                                route, version, url, address.active_successes)  # fmt: skip
                if not address.active_up:
                    self._set(address, _active_up, f"{spec.healthy_after} checks passed")
            if address.ejected_until is not None:
                self._set(address, _readmit, "a health check passed")
        else:
            address.active_successes = 0
            address.active_failures += 1
            if address.active_up and address.active_failures >= spec.unhealthy_after:
                why = f"{address.active_failures} checks failed (last: {result})"
                self._set(address, _active_down, why)

    # -- transitions ------------------------------------------------------------------------
    def _set(
        self, address: AddressHealth, change: Callable[[AddressHealth], None], why: str
    ) -> None:
        before = address.state
        change(address)
        after = address.state
        backend = address.backend
        backend.refresh()
        if before != after:
            address.since = self.now
            logger.warning(
                "upstream %s: route %s %s %s -> %s (%s)",
                address.url, backend.route, backend.version, before, after, why,
            )  # fmt: skip
            for listener in self.listeners:
                listener(backend.route, backend.version, address.url, before, after, why)
        if address.ejected_until is None:
            self._ejected.discard(address)
        self._update_route(address)

    def _update_route(self, address: AddressHealth) -> None:
        rh = self.routes.get(address.backend.route)
        if rh is not None:
            self._update(rh, self.now)

    @staticmethod
    def _update(rh: RouteHealth, now: float) -> None:
        cand = rh.candidate
        rh.candidate_up = cand is None or cand.any_available
        healthy = cand is None or cand.healthy
        if healthy:
            rh.unhealthy_since = None
        elif rh.unhealthy_since is None:
            rh.unhealthy_since = now


def _probes(
    model: Route, version: Version, backend: BackendHealth, plan: BackendPlan
) -> list[Probe]:
    """The active checks of one backend: its ``health:`` (or the route's), else a TCP
    connect probe for a rollout's candidate, so that its readiness is known; else none."""
    spec = model.health_of(version)
    tcp = spec is None and version == CANDIDATE and model.rollout is not None
    backend.tracked = spec is not None or tcp
    if not backend.tracked:
        return []
    check = spec or TCP_CHECK
    return [Probe(model.name, version, t.url, t.host, t.port, check, tcp) for t in plan.targets]


def _readmit(address: AddressHealth) -> None:
    address.ejected_until = None
    address.probing = False
    address.trial_since = None
    address.ejections = 0
    address.failures = 0


def _half_open(address: AddressHealth) -> None:
    address.probing = True


def _active_up(address: AddressHealth) -> None:
    address.active_up = True


def _active_down(address: AddressHealth) -> None:
    address.active_up = False
