"""The e-processes' batched updates change no number: a `RecoveringTest` that looks a ``p``'s
coefficients up once for all its components, and an `AttributionTest` that reads them from its
grid's table, hold bit for bit the log-likelihoods, counts and e-values of the plain
computation (each component updated on its own, the coefficients made afresh each time)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout import ratios
from splitproxy.rollout.ratios import coefficient_table, coefficients
from splitproxy.rollout.recovery import RecoveringTest, _log_weight
from splitproxy.rollout.sequential import (
    DEFAULT_GRID,
    AttributionTest,
    RateGuard,
    logsumexp,
)

P = st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.0, 1.0, 0.3333333333333333]) | st.floats(0.001, 0.999)
COUNT = st.integers(0, 40)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), P, COUNT, st.integers(0, 400)),
        st.tuples(st.just("restart"), P, COUNT, COUNT),
    ),
    max_size=40,
)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class _Plain:
    """The attribution test's statistic as written before the batching: the coefficients made
    by `ratios.coefficients` on each update, the log-likelihoods updated in place."""

    def __init__(self, grid: tuple[float, ...]) -> None:
        self.grid = grid
        self.log_l = [0.0] * len(grid)
        self.counts: dict[float, list[int]] = {}

    def update(self, p: float, candidate: int, stable: int) -> None:
        if not 0.0 < p < 1.0 or candidate + stable == 0:
            return
        cell = self.counts.setdefault(p, [0, 0])
        cell[0] += candidate
        cell[1] += stable
        for j, (a, b) in enumerate(coefficients(p, self.grid)):
            self.log_l[j] += candidate * a + stable * b

    @property
    def log_e(self) -> float:
        w = -math.log(len(self.grid))
        return logsumexp([w + v for v in self.log_l])


class _PlainMixture:
    """`RecoveringTest` as written before: each component updated on its own, the mixture's
    `log_e` through each component's `log_e_at(1.0)`."""

    def __init__(self, grid: tuple[float, ...], keep: int) -> None:
        self.grid, self.keep, self.started = grid, keep, 1
        self.comps: list[tuple[int, _Plain]] = [(1, _Plain(grid))]

    def restart(self) -> None:
        if not sum(x + y for x, y in self.comps[-1][1].counts.values()):
            return
        self.started += 1
        self.comps.append((self.started, _Plain(self.grid)))
        if len(self.comps) > self.keep:
            newest = self.comps[-1]
            rest = sorted(self.comps[:-1], key=lambda c: _log_weight(c[0]) + c[1].log_e)
            kept = sorted(rest[len(rest) - (self.keep - 1) :], key=lambda c: c[0])
            self.comps = [*kept, newest]

    def update(self, p: float, candidate: int, stable: int) -> None:
        for _, test in self.comps:
            test.update(p, candidate, stable)

    @property
    def log_e(self) -> float:
        parts = [_log_weight(k) + t.log_e for k, t in self.comps]
        return logsumexp([*parts, math.log(1.0 / (self.started + 1))])


def _check(test: RecoveringTest, plain: _PlainMixture) -> None:
    assert _same(test.log_e, plain.log_e)
    assert _same(test.log_e, test.log_e_at(1.0))
    assert [k for k, _ in test._comps] == [k for k, _ in plain.comps]
    for (_, mine), (_, theirs) in zip(test._comps, plain.comps, strict=True):
        assert mine._log_l == theirs.log_l  # bit for bit (no NaN can arise from counts)
        assert mine.counts() == {p: (x, y) for p, (x, y) in theirs.counts.items()}
        assert mine.events == sum(x + y for x, y in theirs.counts.values())
        assert _same(mine.log_e, theirs.log_e)


@settings(max_examples=200, deadline=None)
@given(OPS, st.integers(1, 5))
def test_a_batched_mixture_is_its_components_updated_one_by_one(
    ops: list[tuple[str, float, int, int]], keep: int
) -> None:
    test = RecoveringTest(keep=keep)
    plain = _PlainMixture(DEFAULT_GRID, keep)
    for kind, p, x, y in ops:
        if kind == "restart":
            test.restart()
            plain.restart()
        else:
            test.update(p, x, y)
            plain.update(p, x, y)
        _check(test, plain)
    # and read back from its saved form, where it goes on as before
    again = RecoveringTest.from_dict(test.to_dict())
    assert again._one_grid
    again.update(0.25, 3, 30)
    plain.update(0.25, 3, 30)
    _check(again, plain)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(P, COUNT, COUNT), max_size=20))
def test_a_component_on_another_grid_is_updated_on_its_own(
    ops: list[tuple[float, int, int]],
) -> None:
    other = (1.5, 3.0)
    saved = RecoveringTest(DEFAULT_GRID).to_dict()
    saved["grid"] = list(DEFAULT_GRID)
    saved["components"] = [[1, AttributionTest(other).to_dict()]]
    saved["started"], saved["keep"] = 1, 4
    test = RecoveringTest.from_dict(saved)
    assert not test._one_grid
    plain = _Plain(other)
    for p, x, y in ops:
        test.update(p, x, y)
        plain.update(p, x, y)
        assert test._comps[0][1]._log_l == plain.log_l


def test_negative_counts_are_refused_as_before() -> None:
    test = RecoveringTest()
    with pytest.raises(ValueError, match="cannot be negative"):
        test.update(0.5, -1, 3)
    with pytest.raises(ValueError, match="cannot be negative"):
        AttributionTest().update(0.5, 1, -3)


def test_a_full_table_is_emptied_and_refilled_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratios, "TABLE_MAX", 5)
    grid = (1.25, 2.5, 7.0)  # a table of its own, not shared with other tests' grids
    test, plain = AttributionTest(grid), _Plain(grid)
    table = coefficient_table(grid)
    for i in range(40):
        p = (i % 13 + 1) / 14
        test.update(p, i % 3, i % 7 + 1)
        plain.update(p, i % 3, i % 7 + 1)
        assert len(table) <= 5
        assert table[p] == coefficients(p, grid)
        assert test._log_l == plain.log_l
        assert _same(test.log_e, plain.log_e)


def _guard_formula(guard: RateGuard) -> float:
    parts = [
        -math.log(k)
        - math.log(k + 1)
        + logsumexp([guard._log_g + e * a + (r - e) * b for a, b in guard._ab])
        for k, r, e in guard._comps
    ]
    return logsumexp([*parts, math.log(1.0 / (guard._started + 1))]) if parts else 0.0


@settings(max_examples=150, deadline=None)
@given(
    # caps with three alternative rates, and with fewer (folded into (cap, 1), or none left)
    st.sampled_from([0.02, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9, 1 - 2**-53]) | st.floats(1e-6, 0.999),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)), max_size=40),
)
def test_the_guard_unrolled_or_not_answers_as_its_formula(
    cap: float, batches: list[tuple[int, int]]
) -> None:
    guard = RateGuard(cap, block=20, keep=4)
    for n, x in batches:
        guard.update(n + x, x)
        assert _same(guard.log_e, _guard_formula(guard))
