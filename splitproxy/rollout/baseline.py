"""The blue/green bake's comparisons: the new version's live traffic against the old version's
numbers from just before the switch (pure).

After a blue/green switch every user request goes to the candidate, so there is no stable
traffic left to compare with at the same time, and the attribution tests of a canary have
nothing to attribute (``p = 1``). What there is: stable's own numbers up to the switch, its
error rate over the last minute and its trailing latency quantiles (about ten minutes). A
`Baseline` freezes them at the switch and then tests the candidate against them with the
one-sample e-process of the guard (`sequential.RateGuard`), which stays valid however often
it is looked at:

- error rate: ``H0: candidate rate ≤ cap``, where ``cap`` is a one-sided 99 % upper bound
  on stable's pre-switch rate (Wilson), at least `MIN_ERROR_CAP`; the alternatives are
  2, 4 and 8 times the cap;
- latency: for each quantile ``q`` of the check, ``H0: the share of requests slower than
  stable's pre-switch q-quantile ≤ 1 − q``; the quantiles' e-values are averaged.

A check without a usable baseline (stable served too little before the switch) reports
``no_data`` and never fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from splitproxy.rollout.histograms import hist_above
from splitproxy.rollout.messages import CheckResult, Sample, Verdict
from splitproxy.rollout.sequential import RateGuard, mean_log_e

MIN_ERROR_CAP: Final = 0.001
MIN_BASELINE_REQUESTS: Final = 20
Z99: Final = 2.326  # one-sided 99 %


def upper_rate(errors: int, requests: int, z: float = Z99) -> float:
    """The one-sided Wilson upper bound on a rate from ``errors`` of ``requests``."""
    n = requests
    p = errors / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


@dataclass(slots=True)
class Baseline:
    """Stable's numbers frozen at the switch, and the tests of the candidate against them."""

    at: float
    requests: int  # stable's requests of the last minute before the switch
    errors: int
    thresholds: dict[float, float]  # q -> stable's trailing q-quantile (seconds)
    errors_test: RateGuard | None = None
    latency_tests: dict[float, RateGuard] = field(default_factory=dict)

    @classmethod
    def freeze(
        cls, at: float, requests: int, errors: int, thresholds: Mapping[float, float]
    ) -> Baseline:
        base = cls(at, requests, errors, dict(thresholds))
        if requests >= MIN_BASELINE_REQUESTS:
            cap = max(MIN_ERROR_CAP, upper_rate(errors, requests))
            if cap < 1.0:
                base.errors_test = RateGuard(cap)
        base.latency_tests = {q: RateGuard(1 - q) for q in thresholds}
        return base

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def fold(self, samples: Sequence[Sample], tolerance: float = 0.0) -> None:
        """The candidate's user traffic of one tick (requests routed by the split); a request
        is slow beyond stable's quantile plus ``tolerance`` of it (the check's)."""
        limits = {q: c * (1.0 + tolerance) for q, c in self.thresholds.items()}
        for s in samples:
            if s.version != "candidate" or s.p is None:
                continue
            if self.errors_test is not None and s.requests:
                self.errors_test.update(s.requests, s.errors)
            if s.latency:
                n = sum(c for _, c in s.latency)
                for q, test in self.latency_tests.items():
                    test.update(n, hist_above(s.latency, limits[q]))

    def error_check(self, name: str, alpha: float) -> CheckResult:
        test = self.errors_test
        rate = self.error_rate
        if test is None or rate is None:
            detail = f"stable served {self.requests} requests in its last minute before the switch"
            return _result(name, "error_rate", 0.0, 1 / alpha, 0, "no_data", detail)
        e, bar = test.e_value, 1 / alpha
        detail = f"vs stable before the switch: {rate:.3%} of {self.requests} (cap {test.cap:.3%})"
        verdict: Verdict = "fail" if e >= bar else ("pass" if test.requests else "no_data")
        return _result(name, "error_rate", e, bar, test.requests, verdict, detail)

    def latency_check(self, name: str, alpha: float, tolerance: float = 0.0) -> CheckResult:
        bar = 1 / alpha
        if not self.latency_tests:
            detail = "stable's latency history before the switch was too short"
            return _result(name, "latency", 0.0, bar, 0, "no_data", detail)
        log_e = mean_log_e([t.log_e for t in self.latency_tests.values()])
        e = math.exp(log_e) if log_e < 700 else math.inf
        n = max(t.requests for t in self.latency_tests.values())
        detail = "vs stable before the switch: " + ", ".join(
            f"p{q * 100:g} {c * 1000:.4g}ms" for q, c in self.thresholds.items()
        )
        if tolerance:
            detail += f", slow beyond +{tolerance * 100:g}%"
        verdict: Verdict = "fail" if e >= bar else ("pass" if n else "no_data")
        return _result(name, "latency", e, bar, n, verdict, detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "requests": self.requests,
            "errors": self.errors,
            "thresholds": [[q, c] for q, c in sorted(self.thresholds.items())],
            "errors_test": self.errors_test.to_dict() if self.errors_test else None,
            "latency_tests": [[q, t.to_dict()] for q, t in sorted(self.latency_tests.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        errors_test = data["errors_test"]
        return cls(
            float(data["at"]),
            int(data["requests"]),
            int(data["errors"]),
            {float(q): float(c) for q, c in data["thresholds"]},
            RateGuard.from_dict(errors_test) if errors_test is not None else None,
            {float(q): RateGuard.from_dict(t) for q, t in data["latency_tests"]},
        )


def _result(
    name: str, metric: str, e: float, bar: float, sample: int, verdict: Verdict, detail: str
) -> CheckResult:
    return CheckResult(
        name, "compare", e, None, bar, sample, verdict, detail, None, metric, "e_value"
    )
