"""Decisions that hold in the field: sticky users, evidence debt, thresholds with sample size.

Each test drives the analyzer by hand through a case that used to end in a wrong decision."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from splitproxy.rollout.messages import Sample
from splitproxy.rollout.samples import samples_for
from splitproxy.rollout.windows import Window
from tests.unit.rollout.drive import hist, started, traffic

COMPARE = [{"metric": "error_rate", "compare": "stable"}]
BOT = 0xB07


def sticky(p: float, users: Iterator[int], *, cand_errors: int, stable_errors: int) -> list[Sample]:
    """One second of a sticky route: 100 candidate and 900 stable requests; each error from a
    user not seen before, plus a bot on the candidate failing 10 of its requests."""
    cand_units = (BOT, *itertools.islice(users, cand_errors))
    stable_units = tuple(itertools.islice(users, stable_errors))
    n_cand = 10 + cand_errors
    return [
        Sample("stable", 900, stable_errors, p, "/", hist(900), stable_errors, stable_units),
        Sample("candidate", 100, n_cand, p, "/", hist(100), n_cand, cand_units),
    ]


def test_a_user_failing_whatever_the_version_does_not_roll_back_an_a_a() -> None:
    d = started(steps=[10, 20], interval="10m", checks=COMPARE)
    users = itertools.count(1)
    for _ in range(300):  # five minutes: the bot's 3,000 errors count as one user
        d.tick(sticky(d.weight / 100, users, cand_errors=0, stable_errors=5))
    assert d.phase == "progressing"
    check = next(c for c in d.a.checks if c.name == "error_rate_vs_stable")
    assert check.verdict == "pass"
    assert "sticky users counted once: 1501" in check.detail

    # the same traffic counted per request (the users not named) blames the candidate
    plain = started(steps=[10, 20], interval="10m", checks=COMPARE)
    for _ in range(30):
        plain.tick(traffic(plain.weight / 100, candidate=(100, 10), stable=(900, 5)))
    assert plain.phase == "rolled_back"


def test_a_regression_across_sticky_users_still_rolls_back() -> None:
    d = started(steps=[10, 20], interval="10m", checks=COMPARE)
    users = itertools.count(1)
    at = None
    for second in range(120):
        d.tick(sticky(d.weight / 100, users, cand_errors=2, stable_errors=4))
        if d.phase == "rolled_back":
            at = second
            break
    assert at is not None
    assert at < 60
    assert d.events()[-1].message == "worse than stable: error_rate_vs_stable"


def test_slow_requests_of_a_sticky_bucket_are_attributed_at_its_realized_share() -> None:
    """A heavy user on the candidate makes its share of requests far larger than the weight:
    the latency sample carries the share the bucket really had; the errors name the users."""
    window = Window(capacity=10)
    for i in range(30):  # a heavy user on the candidate, 30 requests, 3 errors
        window.observe(0.5, "candidate", 0.05, i < 3, 0.1, "/a", unit=7)
    for i in range(70):
        window.observe(0.5, "stable", 0.05, i == 0, 0.1, "/a", unit=100 + i)
    (period,) = window.observations(0.0, until=1.0)
    assert period.sticky
    samples = samples_for([period])
    cand = next(s for s in samples if s.version == "candidate" and s.requests)
    assert (cand.errors, cand.unit_errors, cand.units) == (3, 3, (7,))
    latency = [s.p for s in samples if s.latency]
    assert latency == [0.3, 0.3]  # not the weight, 0.1


def test_a_regression_after_a_stable_only_incident_is_caught() -> None:
    """Two minutes of stable failing alone push the test from the start far below 1; the
    fresh start at the next minute catches a later regression within seconds, and the ledger
    shows both."""
    d = started(steps=[10, 20], interval="10m", checks=COMPARE)
    for _ in range(120):  # stable at 10 %, the candidate clean
        d.tick(traffic(d.weight / 100, candidate=(100, 0), stable=(900, 90)))
    assert d.phase == "progressing"
    onset = d.now
    rolled_at = None
    for _ in range(120):  # the candidate at 2 %, stable at 0.55 %
        d.tick(traffic(d.weight / 100, candidate=(100, 2), stable=(900, 5)))
        if d.phase == "rolled_back":
            rolled_at = d.now
            break
    assert rolled_at is not None
    assert rolled_at - onset <= 20
    decision = d.events()[-1]
    check = next(c for c in decision.checks if c.name == "error_rate_vs_stable")
    first_e = float(check.detail.split("from start e=")[1].split(",")[0])
    assert first_e < 1e-50  # alone, the test from the start would never have recovered
    assert "restarts 2" in check.detail


def test_a_threshold_is_not_failed_by_one_error_in_a_small_window() -> None:
    """At 4 candidate requests a second, one error in a window of 40 is 2.5 %, above a 1 %
    line; it does not show a rate above 1 %, so the window holds on (no failure) and passes
    once the ratio is back under the line. Ten errors in 100 do show it."""
    checks = [{"metric": "error_rate", "max": 0.01}]
    d = started(steps=[10, 50], interval="10s", min_requests=20, failure_limit=1, checks=checks)
    for second in range(11):
        d.tick(traffic(0.1, candidate=(4, int(second == 3)), stable=(36, 0)))
    assert d.weight == 10  # held, neither failed nor passed
    line = next(c for c in d.a.checks if c.name == "error_rate")
    assert line.value is not None
    assert line.value > 0.01
    assert line.verdict == "pass"
    assert line.detail.startswith("over the line, not shown yet")
    for _ in range(20):
        d.tick(traffic(0.1, candidate=(4, 0), stable=(36, 0)))
    assert d.weight == 50  # 1 in 100 or more: under the line, the step passed
    assert "check_failed" not in d.kinds()

    bad = started(steps=[10, 50], interval="10s", min_requests=20, failure_limit=1, checks=checks)
    for _ in range(22):
        bad.tick(traffic(0.1, candidate=(10, 1), stable=(90, 0)))
    assert bad.phase == "rolled_back"
    assert bad.events()[-1].message == "more than 1 failed check windows"
