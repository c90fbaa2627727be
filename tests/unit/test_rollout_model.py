"""The ``rollout:`` section of the routing file: `splitproxy.config.Rollout` and friends."""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.config import (
    CompareCheck,
    Guard,
    MetricCheck,
    PrometheusCheck,
    Rollout,
    Step,
    WebCheck,
    parse_duration,
    parse_routing,
)
from splitproxy.errors import ConfigError


def rollout_of(body: str) -> Rollout:
    """Parse a one-route file whose ``rollout:`` mapping is ``body`` (YAML, indented freely)."""
    text = "routes:\n  - name: shop\n    stable: http://s\n    candidate: http://c\n"
    text += "    rollout:\n" + textwrap.indent(textwrap.dedent(body).strip(), "      ") + "\n"
    rollout = parse_routing(text, "routes.yaml").routes[0].rollout
    assert rollout is not None
    return rollout


def problems(body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        rollout_of(body)
    return [str(p) for p in info.value.problems]


# --- the whole section -----------------------------------------------------------------------


def test_the_design_sketch_parses() -> None:
    r = rollout_of(
        """
        strategy: canary
        steps: [5, 10, 25, 50]
        interval: 30s
        min_requests: 100
        failure_limit: 2
        checks:
          - {metric: error_rate, max: 0.01}
          - {metric: latency_p99, max: 500ms}
          - {metric: error_rate, compare: stable}
        """
    )
    assert r.strategy == "canary"
    assert [s.weight for s in r.plan] == [5, 10, 25, 50]
    assert r.interval == 30.0
    assert r.min_requests == 100
    assert r.failure_limit == 2
    assert r.checks == (
        MetricCheck(metric="error_rate", max=0.01),
        MetricCheck(metric="latency_p99", max=0.5),
        CompareCheck(metric="error_rate", compare="stable"),
    )
    assert [c.key for c in r.checks] == ["error_rate", "latency_p99", "error_rate_vs_stable"]


def test_defaults() -> None:
    r = rollout_of("steps: [10]")
    assert r.strategy == "canary"
    assert r.interval == 60.0
    assert r.min_requests == 100
    assert r.failure_limit == 1
    assert r.max_duration is None
    assert r.on_no_data == "hold"
    assert r.checks == ()
    assert r.alpha == 0.01
    assert r.guard == Guard(error_rate=0.05)


def test_a_route_without_rollout_has_none() -> None:
    config = parse_routing("routes:\n  - {name: a, stable: 'http://s'}\n")
    assert config.routes[0].rollout is None


def test_every_option() -> None:
    r = rollout_of(
        """
        steps: [1, {weight: 5, interval: 2m, min_requests: 500}, {pause: true}, 50, {pause: 10m}]
        interval: 1h30m
        min_requests: 0
        failure_limit: 0
        max_duration: 6h
        on_no_data: fail
        alpha: 0.05
        guard: {error_rate: 10%}
        checks:
          - {metric: success_rate, min: 99%}
          - {metric: latency_p50, max: 0.05s}
          - {metric: request_rate, min: 1, name: traffic}
          - {metric: latency, compare: stable, quantiles: [0.9, 0.99], tolerance: 20%}
          - {metric: error_rate, compare: stable, per_path: false, name: errors}
          - {prometheus: "http://prom:9090", query: "sum(rate(x[1m]))", max: 3, timeout: 5s}
          - {web: "https://ci.internal/ok", name: ci}
          - {web: "http://score/x", json_path: result.score, min: 0.8, method: POST,
             headers: {X-Token: abc}, body: "{}"}
        """
    )
    assert r.plan == (
        Step(weight=1),
        Step(weight=5, interval=120.0, min_requests=500),
        Step(pause=math.inf),
        Step(weight=50),
        Step(pause=600.0),
    )
    assert (r.interval, r.min_requests, r.failure_limit) == (5400.0, 0, 0)
    assert (r.max_duration, r.on_no_data, r.alpha) == (21600.0, "fail", 0.05)
    assert r.guard == Guard(error_rate=0.1)
    assert r.checks[0] == MetricCheck(metric="success_rate", min=0.99)
    assert r.checks[2].key == "traffic"
    assert r.checks[3] == CompareCheck(
        metric="latency", compare="stable", quantiles=(0.9, 0.99), tolerance=0.2
    )
    assert r.checks[4].key == "errors"
    prom = r.checks[5]
    assert isinstance(prom, PrometheusCheck)
    assert (prom.key, prom.max, prom.timeout) == ("prometheus", 3.0, 5.0)
    assert r.checks[6] == WebCheck(web="https://ci.internal/ok", name="ci")
    web = r.checks[7]
    assert isinstance(web, WebCheck)
    assert (web.json_path, web.min, web.method, web.headers) == (
        "result.score",
        0.8,
        "POST",
        {"X-Token": "abc"},
    )


def test_guard_can_be_switched_off_or_on() -> None:
    assert rollout_of("{steps: [5], guard: false}").guard is None
    assert rollout_of("{steps: [5], guard: null}").guard is None
    assert rollout_of("{steps: [5], guard: true}").guard == Guard()


# --- steps -----------------------------------------------------------------------------------


def test_step_weight_and_max_weight_compile_to_a_list_clamped_at_max() -> None:
    assert [s.weight for s in rollout_of("{step_weight: 20, max_weight: 50}").plan] == [
        20,
        40,
        50,
    ]
    assert [s.weight for s in rollout_of("{step_weight: 25, max_weight: 100}").plan] == [
        25,
        50,
        75,
        100,
    ]
    assert [s.weight for s in rollout_of("{step_weight: 10, max_weight: 10}").plan] == [10]


@given(
    step=st.integers(min_value=1, max_value=10_000).map(lambda v: v / 100),
    top=st.integers(min_value=1, max_value=10_000).map(lambda v: v / 100),
)
def test_linear_plans_rise_strictly_and_end_at_max_weight(step: float, top: float) -> None:
    if step > top:
        step, top = top, step
    plan = Rollout(step_weight=step, max_weight=top).plan
    weights = [s.weight for s in plan]
    assert weights[-1] == top
    assert all(w is not None for w in weights)
    assert all(a < b for a, b in itertools.pairwise(weights))  # type: ignore[operator]


def test_steps_must_rise() -> None:
    assert problems("steps: [5, 10, 10, 50]") == [
        "routes[0].rollout.steps[2]: must be above the previous step's weight (10)"
    ]
    assert problems("steps: [5, {pause: true}, 4]") == [
        "routes[0].rollout.steps[2]: must be above the previous step's weight (5)"
    ]


def test_step_problems_name_the_step() -> None:
    assert problems("steps: [5, 0, 101, 2.555, yes, {pause: false}, {weight: 5, pause: 1m}]") == [
        "routes[0].rollout.steps[1].weight: must be > 0",
        "routes[0].rollout.steps[2].weight: must be <= 100",
        "routes[0].rollout.steps[3].weight: has a resolution of 0.01 percent",
        "routes[0].rollout.steps[4]: a step is a weight (a number, or {weight: N}) or {pause: ...}",
        "routes[0].rollout.steps[5].pause: must be true (wait for 'resume' or "
        "'promote') or a duration",
        "routes[0].rollout.steps[6]: a step is a weight (a number, or {weight: N}) or {pause: ...}",
    ]


def test_a_pause_step_takes_no_interval() -> None:
    assert problems("steps: [5, {pause: true, interval: 1m}]") == [
        "routes[0].rollout.steps[1]: a pause step takes no 'interval' or 'min_requests'"
    ]


def test_the_step_source_is_one_of_two_forms() -> None:
    assert problems("interval: 1m") == [
        "routes[0].rollout: needs 'steps', or 'step_weight' and 'max_weight'"
    ]
    assert problems("{steps: [5], step_weight: 5, max_weight: 10}") == [
        "routes[0].rollout: give either 'steps' or 'step_weight' with 'max_weight', not both"
    ]
    assert problems("{step_weight: 5}") == [
        "routes[0].rollout: needs 'steps', or 'step_weight' and 'max_weight'"
    ]
    assert problems("{step_weight: 50, max_weight: 10}") == [
        "routes[0].rollout: 'step_weight' must not be above 'max_weight'"
    ]
    assert problems("steps: []") == ["routes[0].rollout.steps: must not be empty"]
    assert problems("steps: [{pause: 1m}]") == [
        "routes[0].rollout.steps: needs at least one weight step"
    ]


# --- scalar fields ---------------------------------------------------------------------------


def test_scalar_problems() -> None:
    assert problems(
        """
        strategy: blue
        steps: [5]
        interval: 3x
        min_requests: -1
        failure_limit: true
        max_duration: -5
        on_no_data: pass
        alpha: 0.5
        guard: {error_rate: 1}
        colour: blue
        """
    ) == [
        "routes[0].rollout.strategy: must be 'canary', 'bluegreen' or 'ab'",
        "routes[0].rollout.interval: '3x' is not a duration such as 30s, 5m, 1h30m or 500ms",
        "routes[0].rollout.min_requests: must be >= 0",
        "routes[0].rollout.failure_limit: Input should be a valid integer",
        "routes[0].rollout.max_duration: must be a duration >= 0",
        "routes[0].rollout.on_no_data: must be 'hold' or 'fail'",
        "routes[0].rollout.alpha: must be <= 0.2",
        "routes[0].rollout.guard.error_rate: must be < 1",
        "routes[0].rollout.colour: unknown key",
    ]


def test_strategy_must_be_canary_bluegreen_or_ab() -> None:
    assert problems("{strategy: linear, steps: [5]}") == [
        "routes[0].rollout.strategy: must be 'canary', 'bluegreen' or 'ab'"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2d", 172800.0),
        ("1m 30s", 90.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "m", "5 minutes", "1h-5m", "s5", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_durations_scale_by_their_unit(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


# --- checks ----------------------------------------------------------------------------------


def test_check_problems_name_the_check_and_field() -> None:
    assert problems(
        """
        steps: [5]
        checks:
          - {metric: latency_p99, max: 500}
          - {metric: error_rate, max: 2}
          - {metric: foo, max: 1}
          - {foo: 1}
          - {metric: error_rate}
          - {metric: error_rate, compare: stable, quantiles: [0.9]}
          - {metric: latency, compare: baseline}
          - {web: "ftp://x"}
          - {metric: latency, compare: stable, quantiles: [0.9, 1.5]}
          - {prometheus: "http://p", query: ""}
          - {web: "http://w", max: 1}
          - {metric: success_rate, min: 0.99, max: 0.9}
          - {metric: error_rate, max: 0.1, name: "bad name"}
          - 5
          - {metric: error_rate, compare: stable, tolerance: 10%}
          - {metric: latency, compare: stable, tolerance: -5%}
        """
    ) == [
        "routes[0].rollout.checks[0].max: give a unit, e.g. 500ms or 500s",
        "routes[0].rollout.checks[1].max: a rate is between 0 and 1 (or 0% and 100%)",
        "routes[0].rollout.checks[2].metric: must be 'error_rate', 'success_rate', "
        "'latency_p50', 'latency_p90', 'latency_p95', 'latency_p99', 'request_rate' or "
        "'mirror_divergence'",
        "routes[0].rollout.checks[3]: a check needs 'metric', 'prometheus' or 'web'",
        "routes[0].rollout.checks[4]: give 'min', 'max' or both",
        "routes[0].rollout.checks[5]: 'quantiles' applies to {metric: latency, compare: stable}",
        "routes[0].rollout.checks[6].compare: must be 'stable'",
        "routes[0].rollout.checks[7].web: 'ftp://x': must be an http:// or https:// URL",
        "routes[0].rollout.checks[8].quantiles[1]: must be between 0.5 and 0.999",
        "routes[0].rollout.checks[9].query: must not be empty",
        "routes[0].rollout.checks[10]: 'min'/'max' need a 'json_path' "
        "(without one, a 2xx answer passes)",
        "routes[0].rollout.checks[11]: 'min' must not be above 'max'",
        "routes[0].rollout.checks[12].name: must be 1-64 letters, digits, '_', '.', ':' or '-'",
        "routes[0].rollout.checks[13]: a check needs 'metric', 'prometheus' or 'web'",
        "routes[0].rollout.checks[14]: 'tolerance' applies to {metric: latency, compare: stable}",
        "routes[0].rollout.checks[15].tolerance: must be >= 0",
    ]


def test_check_names_are_unique() -> None:
    assert problems(
        """
        steps: [5]
        checks:
          - {web: "http://a"}
          - {metric: error_rate, max: 0.1}
          - {web: "http://b"}
        """
    ) == [
        "routes[0].rollout.checks[2]: check name 'web' appears twice; "
        "give each check its own 'name'"
    ]
    r = rollout_of(
        """
        steps: [5]
        checks:
          - {web: "http://a", name: a}
          - {web: "http://b", name: b}
          - {metric: error_rate, max: 0.01}
          - {metric: error_rate, max: 0.05, name: error_rate_hard}
        """
    )
    assert [c.key for c in r.checks] == ["a", "b", "error_rate", "error_rate_hard"]


def test_rates_take_percentages_and_latencies_need_units() -> None:
    r = rollout_of(
        """
        steps: [5]
        checks:
          - {metric: error_rate, max: "0.5%"}
          - {metric: latency_p95, max: 1s, min: 1ms}
          - {metric: latency_p90, max: 1m}
        """
    )
    assert r.checks[0] == MetricCheck(metric="error_rate", max=0.005)
    assert r.checks[1] == MetricCheck(metric="latency_p95", min=0.001, max=1.0)
    assert r.checks[2] == MetricCheck(metric="latency_p90", max=60.0)


def test_rollout_models_are_frozen_and_hashable_as_data() -> None:
    r = rollout_of("steps: [5, 10]")
    with pytest.raises(ValueError, match="frozen"):
        r.interval = 5  # type: ignore[misc]
    assert Rollout.model_validate(r.model_dump()) == r
    assert r.model_dump_json()  # serialisable (the analyzer hashes it)
