"""The statistics of an A/B test on a conversion rate (pure; stdlib ``math`` only).

An A/B test assigns each participating *user* to the candidate with a fixed, known share
``ρ`` (the ``split``), stickily, and counts per variant the users exposed and the users who
converted at least once (a business goal: a sign-up, a purchase). The question is whether
the candidate's conversion rate per user differs from stable's, in either direction, and the
answer must stay valid while it is looked at every tick. Both tests below are e-processes in
the sense of `splitproxy.rollout.sequential`: non-negative, starting at 1, supermartingales
under their null, so by Ville's inequality the chance that one *ever* reaches ``1/α`` is at
most ``α``. Values are kept in log space.

`ConversionTest`, two-sided randomization attribution on converted users
    A user is routed to the candidate with probability ``ρ`` before anything about them is
    known. Under the sharp null "the variant does not change whether a user converts", each
    converted user is the candidate's with probability exactly ``ρ``, independently of the
    past, whatever the traffic, the time of day or the delay between exposure and
    conversion. If the candidate's conversion rate is ``r`` times stable's, a converted user
    is the candidate's with ``q(r) = r·ρ / (r·ρ + 1 − ρ)`` instead. The likelihood ratio of
    ``x`` candidate and ``y`` stable conversions,
    ``L(r) = (q/ρ)^x ((1 − q)/(1 − ρ))^y``, is a test martingale under the null, and so is
    the mixture ``E = mean_j L(r_j)`` over the symmetric grid
    ``r_j ∈ {1.02, 1.05, 1.1, 1.2, 1.5}`` and their reciprocals, with equal weights (a
    mixture of test martingales with weights fixed in advance is one). Half of the weight
    looks for a better candidate, half for a worse one: the test is two-sided. Because ``ρ``
    is fixed for the test, ``L`` depends on the totals only, so batches are exact and the
    state is the four counts. Business effects are small, hence the fine grid near 1.

    Why this and not a two-proportion test on the exposure counts: conversions lag
    exposure, traffic and base rate drift by the hour, and a user exposed today converts
    tomorrow. The attribution test needs none of that modelled; it only needs the
    assignment to be what it claims to be, which is what `SampleRatioTest` checks.

    *Lift and its interval.* ``lift = r − 1`` is estimated by the ``r`` that maximises
    ``L``: ``r̂ = (x/ρ) / (y/(1 − ρ))``, candidate conversions over stable conversions,
    each scaled by its share of the users (the observed per-user rates are reported beside
    it and agree with it up to the sample-ratio noise). Shifted to ``r0``,
    ``mean_j L(r0·r_j) / L(r0)`` is a test martingale for ``H0: r = r0``; the anytime-valid
    confidence sequence is every ``r0`` it does not reject. It always contains ``r̂`` (where
    the shifted value is at most 1) and it excludes ``r = 1`` exactly when the test has
    rejected, so the interval shown never contradicts the decision.

`SampleRatioTest`, the sequential sample-ratio-mismatch (SRM) check
    Under a working assignment the candidate's users are ``Binomial(n, ρ)``. The Bayes factor
    of a ``Beta(kρ, k(1 − ρ))`` prior on the true share against the point ``ρ``,
    ``B(kρ + n_c, k(1 − ρ) + n_s) / B(kρ, k(1 − ρ)) / (ρ^n_c (1 − ρ)^n_s)``, is a test
    martingale (the Dirichlet-multinomial test of Lindon & Malek for two arms). ``k = 1000``
    centres the prior on mismatches of a few points (sd ≈ 1.6 points at 50 %), the size a
    broken redirect or a crashing variant produces. An SRM alarm means the assignment is
    not what the split says: the attribution test's null no longer holds, so no winner can
    be trusted.

`judge` combines them with the durations: an SRM alarm first (at any time), then a winner
once the conversion test has rejected *and* ``min_duration`` has passed (novelty and weekday
effects change the effect, not the validity), then "no difference" at ``max_duration``
(stable kept). α is split by a union bound (`split_ab_alpha`): 90 % to the conversion test,
10 % to the SRM check, so with the default α = 1 % the chance of any false alarm, a false
winner or a false SRM, is at most 1 % (0.9 % + 0.1 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from splitproxy.rollout.sequential import BOUND_FAR, logsumexp

AB_GRID: Final = (1.02, 1.05, 1.1, 1.2, 1.5)
SRM_CONCENTRATION: Final = 1000.0
SRM_SHARE: Final = 0.1  # of α, for the SRM check; the conversion test takes the rest
DEFAULT_ALPHA: Final = 0.01
HOUR: Final = 3600.0
DEFAULT_MIN_DURATION: Final = 24 * HOUR
DEFAULT_MAX_DURATION: Final = 14 * 24 * HOUR
BISECT_TOLERANCE: Final = 1e-5  # in log r: the interval's ends to 0.001 points of lift

Winner = Literal["candidate", "stable"]
Outcome = Literal["running", "candidate_wins", "stable_wins", "no_difference", "srm"]


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """One variant's users: exposed, and converted at least once."""

    users: int = 0
    converted: int = 0

    @property
    def rate(self) -> float | None:
        """The observed conversion rate per user (``None`` before the first user)."""
        return self.converted / self.users if self.users else None

    def to_dict(self) -> dict[str, Any]:
        return {"users": self.users, "converted": self.converted, "rate": self.rate}


@dataclass(frozen=True, slots=True)
class AbAlphaSplit:
    """One A/B test's α, split by a union bound between the conversion test and the SRM."""

    total: float
    conversion: float
    srm: float


def split_ab_alpha(alpha: float = DEFAULT_ALPHA) -> AbAlphaSplit:
    """90 % of α to the conversion test, 10 % to the SRM check (0.9 % / 0.1 % at 1 %)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    srm = SRM_SHARE * alpha
    return AbAlphaSplit(total=alpha, conversion=alpha - srm, srm=srm)


def _valid_split(split: float) -> float:
    split = float(split)
    if not 0.0 < split < 1.0:
        raise ValueError("the split (the candidate's share of users) must be between 0 and 1")
    return split


def _log_sigmoid(z: float) -> float:
    """``log(1 / (1 + e^-z))`` without overflow either way."""
    if z >= 0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 700 else math.inf


def _delta(new: int, old: int, what: str) -> int:
    if new < old:
        raise ValueError(f"cumulative {what} went down ({old} -> {new})")
    return new - old


class ConversionTest:
    """The two-sided attribution e-process on converted users (see the module doc).

    ``update`` adds per-variant increments (users newly exposed, users newly converted);
    ``update_totals`` takes the cumulative counts and adds the difference. ``split`` is the
    candidate's share of users, fixed for the life of the test.
    """

    __slots__ = ("_cand", "_logit", "_shifts", "_stable", "grid", "split")

    def __init__(self, split: float, grid: Sequence[float] = AB_GRID) -> None:
        self.split = _valid_split(split)
        if not grid or any(r <= 1.0 for r in grid):
            raise ValueError("the grid needs ratios above 1 (their reciprocals are added)")
        self.grid: tuple[float, ...] = tuple(float(r) for r in grid)
        up = [math.log(r) for r in self.grid]
        # exact negatives, so that swapping the variants mirrors the test bit for bit in log r
        self._shifts: tuple[float, ...] = (*up, *(-s for s in up))
        self._logit = math.log(self.split) - math.log1p(-self.split)
        self._cand = ArmCounts()
        self._stable = ArmCounts()

    # --- counts ------------------------------------------------------------------------

    def update(self, candidate: ArmCounts, stable: ArmCounts) -> None:
        """Add one batch: users newly exposed and users newly converted, per variant. A
        batch may convert users exposed earlier, so ``converted`` may exceed ``users``."""
        for arm in (candidate, stable):
            if arm.users < 0 or arm.converted < 0:
                raise ValueError("counts cannot be negative")
        c, s = self._cand, self._stable
        self._cand = ArmCounts(c.users + candidate.users, c.converted + candidate.converted)
        self._stable = ArmCounts(s.users + stable.users, s.converted + stable.converted)

    def update_totals(self, candidate: ArmCounts, stable: ArmCounts) -> None:
        """Move to cumulative counts (they must not go down; converted ≤ users)."""
        for arm in (candidate, stable):
            if arm.converted > arm.users:
                raise ValueError("more users converted than exposed")
        self.update(
            ArmCounts(
                _delta(candidate.users, self._cand.users, "candidate users"),
                _delta(candidate.converted, self._cand.converted, "candidate conversions"),
            ),
            ArmCounts(
                _delta(stable.users, self._stable.users, "stable users"),
                _delta(stable.converted, self._stable.converted, "stable conversions"),
            ),
        )

    @property
    def candidate(self) -> ArmCounts:
        return self._cand

    @property
    def stable(self) -> ArmCounts:
        return self._stable

    # --- the e-process -----------------------------------------------------------------

    def _log_e_log(self, log_r0: float) -> float:
        """``log mean_j L(r0·r_j) / L(r0)``, with ``t = log r0``.

        With ``z = t + logit ρ`` (the logit of ``q(r0)``), ``log q = log σ(z)`` and
        ``log(1 − q) = log σ(z) − z``, so for ``n = x + y`` conversions
        ``log L(r0·s) − log L(r0) = n·(log σ(z + log s) − log σ(z)) − y·log s``: one
        transcendental per grid point, and no large terms that cancel.
        """
        x, y = self._cand.converted, self._stable.converted
        n = x + y
        if n == 0:
            return 0.0
        z = log_r0 + self._logit
        base = _log_sigmoid(z)
        terms = [n * (_log_sigmoid(z + s) - base) - y * s for s in self._shifts]
        return logsumexp(terms) - math.log(len(terms))

    def log_e_at(self, r0: float) -> float:
        """The log e-value of the shifted test ``H0: r = r0`` (`log_e` at ``r0 = 1``)."""
        if not r0 > 0.0:
            raise ValueError("the ratio must be positive")
        return self._log_e_log(math.log(r0))

    @property
    def log_e(self) -> float:
        return self._log_e_log(0.0)

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def _log_ratio_hat(self) -> float | None:
        x, y = self._cand.converted, self._stable.converted
        if x == 0 and y == 0:
            return None
        if y == 0:
            return math.inf
        if x == 0:
            return -math.inf
        return math.log(x) - math.log(y) - self._logit

    @property
    def ratio(self) -> float | None:
        """``r̂``, the estimated ratio of conversion rates (candidate / stable), or ``None``
        before any conversion; ``0`` or ``inf`` while one variant has none."""
        t = self._log_ratio_hat()
        if t is None:
            return None
        return 0.0 if t == -math.inf else _exp(t)

    @property
    def lift(self) -> float | None:
        """``r̂ − 1``: the candidate's relative difference in conversion rate (``+0.05`` is
        5 % more conversions per user than stable)."""
        r = self.ratio
        return None if r is None else r - 1.0

    def decision(self, alpha: float) -> Winner | None:
        """The winner once the e-value reaches ``1/α``: the side the estimate is on."""
        if self.log_e < -math.log(alpha):
            return None
        t = self._log_ratio_hat()
        if t is None or t == 0.0:
            return None
        return "candidate" if t > 0 else "stable"

    def ratio_interval(self, alpha: float) -> tuple[float, float] | None:
        """The anytime-valid (1 − α) confidence interval for ``r``: every ``r0`` whose shifted
        test has not reached ``1/α``. Its ends are found by bisection in ``log r`` outwards
        from ``r̂`` and rounded outwards; they are searched within ``e^±12`` (reported there
        when the data reject nothing further). ``None`` before any conversion."""
        t_hat = self._log_ratio_hat()
        if t_hat is None:
            return None
        bar = -math.log(alpha)
        centre = min(BOUND_FAR, max(-BOUND_FAR, t_hat))

        def rejected(log_r0: float) -> bool:
            return self._log_e_log(log_r0) >= bar

        if rejected(centre):  # only when r̂ is off the searched range
            return math.exp(centre), math.exp(centre)
        # the first bracket is a few standard errors of log r̂ wide, doubled until it holds
        # the end: a dozen fewer bisection steps than starting from e^±12
        x, y = self._cand.converted, self._stable.converted
        step = 4.0 * math.sqrt(1.0 / max(x, 1) + 1.0 / max(y, 1))
        ends = []
        for sign in (-1.0, 1.0):
            far = sign * BOUND_FAR
            inside, width = centre, step
            while True:
                outside = centre + sign * width
                if sign * (outside - far) >= 0:
                    outside = far
                    break
                if rejected(outside):
                    break
                inside, width = outside, 2 * width
            if outside == far and not rejected(far):
                ends.append(far)
                continue
            while abs(outside - inside) > BISECT_TOLERANCE:
                mid = (inside + outside) / 2
                if rejected(mid):
                    outside = mid
                else:
                    inside = mid
            ends.append(outside)
        low, high = math.exp(ends[0]), math.exp(ends[1])
        if rejected(0.0):  # the decision's own comparison: the interval must exclude r = 1
            if t_hat > 0:
                low = max(low, math.nextafter(1.0, math.inf))
            else:
                high = min(high, math.nextafter(1.0, 0.0))
        return low, high

    def lift_interval(self, alpha: float) -> tuple[float, float] | None:
        """`ratio_interval` as a lift: ``(r_low − 1, r_high − 1)``."""
        interval = self.ratio_interval(alpha)
        if interval is None:
            return None
        return interval[0] - 1.0, interval[1] - 1.0

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "grid": list(self.grid),
            "candidate": [self._cand.users, self._cand.converted],
            "stable": [self._stable.users, self._stable.converted],
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversionTest:
        test = cls(float(data["split"]), tuple(float(r) for r in data.get("grid", AB_GRID)))
        cu, cx = data.get("candidate", (0, 0))
        su, sx = data.get("stable", (0, 0))
        test.update(ArmCounts(int(cu), int(cx)), ArmCounts(int(su), int(sx)))
        return test


class SampleRatioTest:
    """The sequential sample-ratio-mismatch check on users per variant (see the module doc)."""

    __slots__ = ("_log_prior", "candidate_users", "concentration", "split", "stable_users")

    def __init__(self, split: float, concentration: float = SRM_CONCENTRATION) -> None:
        self.split = _valid_split(split)
        if not concentration > 0.0:
            raise ValueError("the concentration must be positive")
        self.concentration = float(concentration)
        self._log_prior = _log_beta(self.concentration * self.split, self._b)
        self.candidate_users = 0
        self.stable_users = 0

    @property
    def _b(self) -> float:
        return self.concentration * (1.0 - self.split)

    def update(self, candidate_users: int, stable_users: int) -> None:
        """Add users newly exposed to each variant."""
        if candidate_users < 0 or stable_users < 0:
            raise ValueError("user counts cannot be negative")
        self.candidate_users += candidate_users
        self.stable_users += stable_users

    def update_totals(self, candidate_users: int, stable_users: int) -> None:
        """Move to cumulative user counts (they must not go down)."""
        self.update(
            _delta(candidate_users, self.candidate_users, "candidate users"),
            _delta(stable_users, self.stable_users, "stable users"),
        )

    @property
    def log_e(self) -> float:
        x, y = self.candidate_users, self.stable_users
        if x == 0 and y == 0:
            return 0.0
        a = self.concentration * self.split
        log_mixture = _log_beta(a + x, self._b + y) - self._log_prior
        log_null = x * math.log(self.split) + y * math.log1p(-self.split)
        return log_mixture - log_null

    @property
    def e_value(self) -> float:
        return _exp(self.log_e)

    def rejects(self, alpha: float) -> bool:
        """Whether the users per variant contradict the split at level ``α``."""
        return self.log_e >= -math.log(alpha)

    @property
    def observed_share(self) -> float | None:
        """The candidate's observed share of users (``None`` before the first user)."""
        n = self.candidate_users + self.stable_users
        return self.candidate_users / n if n else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "concentration": self.concentration,
            "candidate_users": self.candidate_users,
            "stable_users": self.stable_users,
            "e_value": self.e_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRatioTest:
        test = cls(float(data["split"]), float(data.get("concentration", SRM_CONCENTRATION)))
        test.update(int(data.get("candidate_users", 0)), int(data.get("stable_users", 0)))
        return test


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass(frozen=True, slots=True)
class AbVerdict:
    """Where an A/B test stands at one tick: the outcome, why, and the evidence behind it.

    ``outcome`` is ``running`` until one of: ``srm`` (the assignment is broken, trust no
    result), ``candidate_wins`` / ``stable_wins`` (the conversion test rejected "no
    difference" and ``min_duration`` has passed), ``no_difference`` (``max_duration``
    reached without a winner; stable is kept). ``lift`` and ``lift_interval`` are relative
    (``0.05`` = 5 %); the interval is at the conversion test's share of α.
    """

    outcome: Outcome
    reason: str
    elapsed: float
    lift: float | None
    lift_interval: tuple[float, float] | None
    candidate: ArmCounts
    stable: ArmCounts
    e_value: float
    srm_e_value: float
    alpha: AbAlphaSplit

    @property
    def final(self) -> bool:
        """Whether the test is over (any outcome but ``running``)."""
        return self.outcome != "running"

    @property
    def winner(self) -> Winner | None:
        if self.outcome == "candidate_wins":
            return "candidate"
        if self.outcome == "stable_wins":
            return "stable"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "elapsed": self.elapsed,
            "winner": self.winner,
            "lift": _finite(self.lift),
            "lift_interval": (
                None if self.lift_interval is None else [_finite(v) for v in self.lift_interval]
            ),
            "candidate": self.candidate.to_dict(),
            "stable": self.stable.to_dict(),
            "e_value": _finite(self.e_value),
            "srm_e_value": _finite(self.srm_e_value),
            "alpha": {
                "total": self.alpha.total,
                "conversion": self.alpha.conversion,
                "srm": self.alpha.srm,
            },
        }


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded value is reported as ``None``."""
    return value if value is not None and math.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}%"


def _hours(seconds: float) -> str:
    return f"{seconds / HOUR:.1f}h"


def _lift_text(lift: float | None, interval: tuple[float, float] | None) -> str:
    if lift is None or interval is None:
        return "no conversions yet"
    # an end at the edge of the searched range (a ratio of e^±12) means "nothing rejected
    # further": unbounded, not a number of millions of percent
    low = "-100%" if interval[0] <= math.exp(-BOUND_FAR) * 1.001 - 1.0 else _pct(interval[0])
    high = "+∞" if interval[1] >= math.exp(BOUND_FAR) * 0.999 - 1.0 else _pct(interval[1])
    return f"lift {_pct(lift)} (interval {low} to {high})"


def judge(
    conversion: ConversionTest,
    srm: SampleRatioTest,
    *,
    started: float,
    now: float,
    alpha: float = DEFAULT_ALPHA,
    min_duration: float = DEFAULT_MIN_DURATION,
    max_duration: float = DEFAULT_MAX_DURATION,
) -> AbVerdict:
    """The verdict of an A/B test at ``now`` (seconds, the same clock as ``started``).

    In order: an SRM alarm at any time; a winner once the conversion test has rejected at
    its share of α and ``min_duration`` has passed; ``no_difference`` at ``max_duration``;
    otherwise ``running``. Pure: the same inputs give the same verdict.
    """
    if conversion.split != srm.split:
        raise ValueError("the conversion test and the SRM check disagree on the split")
    if not 0.0 <= min_duration <= max_duration:
        raise ValueError("need 0 <= min_duration <= max_duration")
    budget = split_ab_alpha(alpha)
    elapsed = max(0.0, now - started)
    lift = conversion.lift
    interval = conversion.lift_interval(budget.conversion)
    e_value = conversion.e_value

    def verdict(outcome: Outcome, reason: str) -> AbVerdict:
        return AbVerdict(
            outcome=outcome,
            reason=reason,
            elapsed=elapsed,
            lift=lift,
            lift_interval=interval,
            candidate=conversion.candidate,
            stable=conversion.stable,
            e_value=e_value,
            srm_e_value=srm.e_value,
            alpha=budget,
        )

    evidence = f"e = {e_value:.3g}, bar {1 / budget.conversion:.3g}"
    if srm.rejects(budget.srm):
        share = srm.observed_share or 0.0
        return verdict(
            "srm",
            f"sample ratio mismatch: {srm.candidate_users} candidate and {srm.stable_users} "
            f"stable users ({100 * share:.2f}% candidate) against a {100 * srm.split:g}% split "
            f"(e = {srm.e_value:.3g}, bar {1 / budget.srm:.3g}); the assignment is broken, so "
            "no winner can be trusted",
        )
    winner = conversion.decision(budget.conversion)
    lift_text = _lift_text(lift, interval)
    if winner is not None:
        if elapsed >= min_duration:
            better = (
                "candidate converts better"
                if winner == "candidate"
                else ("candidate converts worse")
            )
            outcome: Outcome = "candidate_wins" if winner == "candidate" else "stable_wins"
            return verdict(outcome, f"{better}: {lift_text}, {evidence}")
        return verdict(
            "running",
            f"{winner} ahead ({lift_text}, {evidence}); a winner is declared after "
            f"{_hours(min_duration)}, {_hours(min_duration - elapsed)} to go",
        )
    if elapsed >= max_duration:
        return verdict(
            "no_difference",
            f"no difference found in {_hours(max_duration)}: {lift_text}, {evidence}; "
            "stable is kept",
        )
    return verdict("running", f"collecting evidence: {lift_text}, {evidence}")


__all__ = [
    "AB_GRID",
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_DURATION",
    "DEFAULT_MIN_DURATION",
    "HOUR",
    "SRM_CONCENTRATION",
    "AbAlphaSplit",
    "AbVerdict",
    "ArmCounts",
    "ConversionTest",
    "Outcome",
    "SampleRatioTest",
    "Winner",
    "judge",
    "split_ab_alpha",
]
