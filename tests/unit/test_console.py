"""Terminal rendering of the status and of a rollout: `splitproxy.console`."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import pytest
from rich.console import Console, RenderableType

from splitproxy import console as con
from splitproxy.config import Rollout
from splitproxy.rollout.analyzer import Analyzer
from splitproxy.rollout.controller import finite
from splitproxy.rollout.messages import Emit, Observation, Sample
from splitproxy.views import CheckView, EventView, RolloutView, RouteView, StatusView

T0 = 1_700_000_000.0


# The builders below give the views only the keys a test needs: the console reads every key
# with .get(), so a view from a proxy of another version renders too.


def render(renderable: RenderableType, width: int = 140) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def check(**kw: Any) -> CheckView:
    base: dict[str, Any] = {
        "name": "error_rate",
        "kind": "threshold",
        "value": 0.0,
        "min": None,
        "max": 0.02,
        "sample": 41,
        "verdict": "pass",
        "detail": "",
        "ci": None,
    }
    return cast(CheckView, {**base, **kw})


CHECKS = [
    check(),
    check(name="latency_p99", value=0.2034, max=0.5),
    check(
        name="error_rate_vs_stable",
        kind="compare",
        value=812.4,
        max=222.2,
        sample=9,
        verdict="fail",
        ci=[2.9, None],
    ),
    check(
        name="latency_vs_stable",
        kind="compare",
        value=1.0,
        max=222.2,
        sample=0,
        verdict="no_data",
        detail="stable history too short",
    ),
    check(name="guard", kind="guard", value=None, max=1000.0, sample=30, verdict="fail"),
]


def rollout(**kw: Any) -> RolloutView:
    base: dict[str, Any] = {
        "route": "shop",
        "phase": "progressing",
        "revision": "1.1",
        "step": 2,
        "steps": 3,
        "weights": [10.0, 25.0, 50.0],
        "weight": 25.0,
        "failures": 0,
        "failure_limit": 0,
        "paused_reason": None,
        "waiting_for": None,
        "progress_deadline": {"spent": 3.0, "limit": 600.0, "ready_at": T0 - 60},
        "window": {"start": T0, "requests": 20},
        "checks": CHECKS,
        "history": [],
    }
    return cast(RolloutView, {**base, **kw})


def traffic(requests: int, errors: int, p50: float, p99: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "rate": requests / 10,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99},
    }


def route(**kw: Any) -> RouteView:
    base: dict[str, Any] = {
        "name": "shop",
        "stable": {"urls": ["http://v1:80"], "revision": "1.0", "in_flight": 0},
        "candidate": {"urls": ["http://v2:80"], "revision": "1.1", "in_flight": 0},
        "weight": {"effective": 25.0, "file": 0.0, "runtime": None, "source": "rollout"},
        "traffic": {
            "window_seconds": 10.0,
            "stable": traffic(1500, 0, 0.41, 1.234),
            "candidate": traffic(500, 125, 0.5, 204.4),
        },
        "rollout": rollout(),
    }
    return cast(RouteView, {**base, **kw})


# --- numbers and checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0.41, "0.41ms"), (12.345, "12.3ms"), (204.4, "204ms")],
)
def test_milliseconds_keep_a_precision_that_suits_their_size(value: Any, text: str) -> None:
    assert con.ms(value) == text


def test_a_check_reads_in_its_metric_s_unit() -> None:
    rate, latency, compare, no_data, guard = CHECKS
    assert (con.check_value(rate), con.check_bound(rate), con.check_sample(rate)) == (
        "0.00%",
        "max 2.00%",
        "n=41",
    )
    assert (con.check_value(latency), con.check_bound(latency)) == ("203ms", "max 500ms")
    assert (con.check_value(compare), con.check_bound(compare)) == ("e=812", "fails at e≥222.2")
    assert con.check_sample(compare) == "9 events"
    assert con.check_detail(compare) == "ratio to stable in [2.9, inf]"
    assert con.check_value(no_data) == "e=1"
    assert con.check_sample(check(kind="compare", sample=1)) == "1 event"
    assert con.check_value(guard) == "e=inf"  # an overwhelming e-value is null in JSON
    assert con.check_value(check(value=None, verdict="no_data")) == "no data"
    assert con.check_bound(check(name="request_rate", min=5.0, max=None)) == "min 5/s"
    # evidence recorded before checks carried their metric: a renamed check reads plain
    assert con.check_value(check(name="p99 of checkout", value=0.25)) == "0.25"
    external = check(name="web", kind="external", value=1.0, min=1.0, max=None, sample=1)
    assert (con.check_value(external), con.check_sample(external)) == ("1", "1 reading")


def test_a_renamed_check_reads_in_its_metric_s_unit() -> None:
    p99 = check(name="checkout-p99", metric="latency_p99", unit="seconds", value=0.25, max=0.5)
    assert (con.check_value(p99), con.check_bound(p99)) == ("250ms", "max 500ms")
    assert "250ms" in con.check_line(p99).plain
    assert "250ms" in render(con.checks_table([p99]))
    success = check(
        name="ok-share", metric="success_rate", unit="fraction", value=0.995, min=0.99, max=None
    )
    assert (con.check_value(success), con.check_bound(success)) == ("99.50%", "min 99.00%")
    rps = check(name="busy", metric="request_rate", unit="per_second", value=12.5, min=5, max=None)
    assert (con.check_value(rps), con.check_bound(rps)) == ("12.5/s", "min 5/s")
    # the metric alone (without a unit) is enough; an external check's number stays plain
    assert con.check_value(check(name="p50", metric="latency_p50", value=0.004)) == "4.00ms"
    external = check(name="score", kind="external", metric=None, unit=None, value=0.25)
    assert con.check_value(external) == "0.25"
    guard = check(name="guard", kind="guard", metric="error_rate", unit="e_value", value=3.0)
    assert con.check_value(guard) == "e=3"


def test_a_lower_bound_above_one_never_reads_as_one() -> None:
    assert con.check_detail(check(kind="compare", ci=[1.049, None])) == (
        "ratio to stable in [1.04, inf]"
    )
    assert con.check_detail(check(kind="compare", ci=[1.37, None])) == (
        "ratio to stable in [1.3, inf]"
    )
    assert con.check_detail(check(kind="compare", ci=[1.00001, None])) == (
        "ratio to stable in [>1, inf]"
    )
    assert con.check_detail(check(kind="compare", ci=[0.0, None])) == "ratio to stable in [0, inf]"
    assert con.check_detail(check(kind="compare", ci=[0.5, 2.0])) == "ratio to stable in [0.5, 2]"


def test_a_check_line_carries_value_threshold_sample_and_verdict() -> None:
    line = con.check_line(CHECKS[2]).plain
    assert line.startswith("✗ error_rate_vs_stable")
    for part in (
        "e=812",
        "fails at e≥222.2",
        "9 events",
        "fail",
        "(ratio to stable in [2.9, inf])",
    ):
        assert part in line


# --- decisions --------------------------------------------------------------------------------


def event(**kw: Any) -> EventView:
    base: dict[str, Any] = {
        "at": T0 + 6.25,
        "route": "shop",
        "kind": "rolled_back",
        "phase": "rolled_back",
        "previous": "progressing",
        "step": 1,
        "weight": 10.0,
        "revision": "1.1",
        "message": "worse than stable: error_rate_vs_stable",
        "source": "analyzer",
        "checks": CHECKS[:3],
    }
    return cast(EventView, {**base, **kw})


def test_a_decision_prints_with_its_evidence_one_check_a_line() -> None:
    lines = [t.plain for t in con.event_lines(event(), origin=T0)]
    assert lines[0] == (
        "  +6.2s  rolled_back  step 1 at 10%: worse than stable: error_rate_vs_stable"
    )
    assert len(lines) == 4
    assert lines[1].lstrip().startswith("✓ error_rate")
    assert "max 2.00%" in lines[1]
    assert lines[3].lstrip().startswith("✗ error_rate_vs_stable")


def test_a_decision_names_the_new_phase_and_a_manual_source() -> None:
    started = event(kind="started", phase="progressing", previous="idle", step=0, weight=None,
                    message="new candidate 1.1", checks=[])  # fmt: skip
    assert [t.plain for t in con.event_lines(started, origin=T0 + 6.25)] == [
        "  +0.0s  started      now progressing: new candidate 1.1"
    ]
    paused = event(kind="paused", phase="paused", message="paused by hand",
                   source="manual:admin", checks=[])  # fmt: skip
    assert con.event_lines(paused, origin=T0)[0].plain.endswith(
        "paused       step 1 at 10%: paused by hand [manual:admin]"
    )
    closed = event(kind="gate_closed", phase="waiting", previous="waiting", step=3, weight=50.0,
                   message="confirm-promotion: not yet", checks=[])  # fmt: skip
    headline = con.event_lines(closed)[0].plain  # without an origin: the clock time
    assert headline.endswith("gate_closed  step 3 at 50%: confirm-promotion: not yet")
    assert headline[2] == ":"


# --- a route's rollout ------------------------------------------------------------------------


def test_the_plan_marks_passed_current_and_coming_steps() -> None:
    assert con.steps_line(rollout()).plain == "10% ✓ → 25% ● → 50% → promote"
    assert con.steps_line(rollout(phase="promoted", step=3)).plain == (
        "10% ✓ → 25% ✓ → 50% ✓ → promoted ✓"
    )
    assert con.steps_line(rollout(phase="rolled_back", step=1)).plain == (
        "10% ✗ → 25% → 50% → rolled back"
    )
    assert con.steps_line(rollout(weights=[None, 50.0], step=1)).plain == (
        "pause ● → 50% → promote"
    )


def test_the_step_bar_is_full_when_both_time_and_requests_are_met() -> None:
    half = render(con.step_progress(rollout(), T0 + 2.0, (4.0, 40)))
    assert "step 2" in half
    assert "2.0/4s, 20/40 candidate requests" in half
    over = render(con.step_progress(rollout(window={"start": T0, "requests": 90}), T0 + 9, (4, 40)))
    assert "4.0/4s, 40/40 candidate requests" in over
    unknown = render(con.step_progress(rollout(), T0 + 2.5))
    assert "window 2.5s, 20 candidate requests" in unknown
    # the status gives the step's needs: no need to pass them
    known = render(con.step_progress(rollout(interval=4.0, min_requests=40), T0 + 2.0))
    assert "2.0/4s, 20/40 candidate requests" in known


def test_watch_draws_the_step_bar_from_the_status() -> None:
    with_needs = status(routes=[route(rollout=rollout(interval=4.0, min_requests=40))])
    text = render(con.watch_view(with_needs, T0 + 2))
    assert "2.0/4s, 20/40 candidate requests" in text
    line = con.progress_line(route(rollout=rollout(interval=4.0, min_requests=40)), T0 + 2.0)
    assert "step 2/3 at 25%: 2.0/4s, 20/40 candidate requests" in line.plain


def test_the_traffic_table_shows_weight_error_rate_and_p99_per_version() -> None:
    text = render(con.traffic_table(route()))
    assert "traffic, last 10s" in text
    stable = next(line for line in text.splitlines() if "stable 1.0" in line)
    candidate = next(line for line in text.splitlines() if "candidate 1.1" in line)
    assert stable.split()[2:] == ["75%", "150.0", "1500", "0.00%", "0.41ms", "1.23ms"]
    assert candidate.split()[2:] == ["25%", "50.0", "500", "25.00%", "0.50ms", "204ms"]


def test_the_rollout_panel_has_phase_plan_progress_traffic_and_checks() -> None:
    text = render(con.rollout_panel(route(), T0 + 2.0, (4.0, 40)))
    for part in (
        "shop 1.1: progressing, step 2 of 3, candidate at 25%",
        "10% ✓ → 25% ● → 50% → promote",
        "2.0/4s, 20/40 candidate requests",
        "candidate 1.1",
        "checks, latest tick",
        "error_rate_vs_stable",
    ):
        assert part in text, text


def test_a_finished_rollout_shows_the_evidence_of_its_decision() -> None:
    decided = event(checks=CHECKS)
    finished = rollout(phase="rolled_back", step=1, weight=0.0, checks=[], history=[decided])
    text = render(con.rollout_panel(route(rollout=finished), T0 + 9))
    assert "shop 1.1: rolled back, step 1 of 3, candidate at 0%" in text
    assert "checks at the decision" in text
    assert "error_rate_vs_stable" in text
    assert "candidate requests" not in text  # no step window any more


def test_a_waiting_or_paused_rollout_says_why() -> None:
    waiting = con.rollout_headline(route(rollout=rollout(phase="waiting", waiting_for="step")))
    assert waiting.plain.endswith("(waiting for step)")
    gate = {"name": "confirm-promotion", "step": 4, "since": T0, "attempts": 3,
            "last_at": T0 + 120, "last_detail": ""}  # fmt: skip
    asked = rollout(phase="waiting", waiting_for="confirm-promotion", gate=gate)
    assert con.rollout_headline(route(rollout=asked)).plain.endswith(
        "(waiting for confirm-promotion, closed 3×)"
    )
    failures = con.rollout_headline(route(rollout=rollout(failures=1, failure_limit=2)))
    assert failures.plain.endswith(", 1 failed window(s), 2 tolerated")


def test_a_rollout_waiting_for_readiness_shows_its_deadline() -> None:
    deadline = {"spent": 42.0, "limit": 600.0, "ready_at": None}
    starting = rollout(
        phase="waiting", step=0, weight=0.0, waiting_for="readiness", progress_deadline=deadline
    )
    headline = con.rollout_headline(route(rollout=starting)).plain
    assert headline.endswith("(waiting for readiness), not ready for 42s of 600s allowed")
    ready = con.rollout_headline(route(rollout=rollout())).plain
    assert "not ready" not in ready


def test_the_progress_line_summarizes_a_step_for_a_log() -> None:
    line = con.progress_line(route(), T0 + 2.0, T0 - 10, (4.0, 40)).plain
    assert line == (
        " +12.0s  progress     step 2/3 at 25%: 2.0/4s, 20/40 candidate requests"
        " · stable 0.0% errors, p99 1.23ms · candidate 25.0% errors, p99 204ms"
    )


# --- the status table and --watch -------------------------------------------------------------


def status(**kw: Any) -> StatusView:
    base: dict[str, Any] = {
        "version": "0.9.0",
        "config": {"revision": "r7"},
        "rollouts": {"persistent": True},
        "routes": [
            route(),
            {
                "name": "static",
                "stable": {"urls": ["http://static:80"], "revision": None},
                "candidate": None,
                "weight": {"effective": 0.0, "file": 0.0, "runtime": None, "source": "file"},
                "rollout": None,
            },
        ],
    }
    return cast(StatusView, {**base, **kw})


def test_the_status_table_shows_each_rollout_s_phase_step_and_plan() -> None:
    text = render(con.status_table(status()))
    assert "splitproxy 0.9.0 · config r7" in text
    assert "progressing" in text
    assert "step 2/3 (10% 25%* 50%)" in text
    assert "http://v2:80 (1.1)" in text
    assert "memory only" not in text
    memory = render(con.status_table(status(rollouts={"persistent": False})))
    assert "rollout state is in memory only (no --state-dir)" in memory


def test_the_rollout_cell_says_what_a_rollout_waits_for() -> None:
    assert con.rollout_cell(None) == "-"
    assert con.rollout_cell(rollout(phase="idle")) == "idle"
    cell = con.rollout_cell(rollout(phase="waiting", waiting_for="confirm-promotion", step=3))
    assert cell == "waiting\nstep 3/3 (10% 25% 50%*)\nconfirm-promotion"


def test_the_watch_view_adds_a_panel_per_route_with_a_rollout() -> None:
    text = render(con.watch_view(status(), T0 + 2))
    assert "rollout of shop" in text
    assert "rollout of static" not in text
    idle = status(routes=[route(rollout=rollout(phase="idle"))])
    assert "rollout of shop" not in render(con.watch_view(idle, T0))


def test_watch_prints_one_snapshot_when_not_a_terminal() -> None:
    out = io.StringIO()
    calls: list[int] = []

    def fetch() -> tuple[StatusView | None, str | None]:
        calls.append(1)
        return status(), None

    code = con.watch_status(fetch, console=Console(file=out, width=140, force_terminal=False))
    assert code == 0
    assert len(calls) == 1
    assert "step 2/3" in out.getvalue()
    assert "rollout of shop" in out.getvalue()

    out = io.StringIO()
    down = con.watch_status(
        lambda: (None, "cannot reach the admin API at http://x: refused"),
        console=Console(file=out, width=140, force_terminal=False),
    )
    assert down == 1
    assert "cannot reach the admin API" in out.getvalue()


def test_watch_refreshes_in_a_terminal_keeps_the_last_status_and_stops_on_ctrl_c() -> None:
    answers: list[tuple[StatusView | None, str | None]] = [
        (status(), None),
        (None, "cannot reach the admin API at http://x: refused"),
        (status(routes=[route(rollout=rollout(phase="promoted", step=3, weight=100.0))]), None),
    ]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    terminal = Console(file=out, width=140, force_terminal=True, color_system=None)
    code = con.watch_status(lambda: answers.pop(0), 0.5, terminal, sleep=sleep)
    assert code == 0
    assert sleeps == [0.5, 0.5, 0.5]
    assert answers == []
    text = out.getvalue()
    assert "(retrying)" in text  # the error shows under the last status, which stays
    assert "promoted" in text
    bounded = con.watch_status(
        lambda: (status(), None), 0.1, terminal, refreshes=2, sleep=sleeps.append
    )
    assert bounded == 0
    assert len(sleeps) == 4  # two refreshes, one sleep between them


# --- the contract: what the analyzer and the controller really produce ------------------------


def test_renders_a_real_analyzer_s_status_and_events() -> None:
    spec = Rollout.model_validate(
        {
            "steps": [10, 50],
            "interval": "1s",
            "min_requests": 5,
            "checks": [
                {"metric": "error_rate", "max": "1%"},
                {"metric": "latency_p99", "max": "500ms"},
                {"metric": "error_rate", "compare": "stable"},
                {"metric": "latency", "compare": "stable"},
            ],
        }
    )
    analyzer = Analyzer("shop", spec, path_class_slots=0)
    emitted = [a.event for a in analyzer.tick(T0, Observation("1.1")) if isinstance(a, Emit)]
    samples = [
        Sample("stable", 90, 0, 0.1, None, ((0.005, 90),)),
        Sample("candidate", 10, 0, 0.1, None, ((0.005, 10),)),
    ]
    actions = analyzer.tick(T0 + 1, Observation("1.1", samples))  # step 1 passes
    emitted += [a.event for a in actions if isinstance(a, Emit)]
    state = json.loads(json.dumps(finite(analyzer.status())))  # as the API sends it
    view = route(rollout={**state, "history": [finite(e.to_dict()) for e in emitted]})
    text = render(con.rollout_panel(view, T0 + 1.5))  # the step's needs come with the status
    assert "shop 1.1: progressing, step 2 of 2, candidate at 50%" in text
    assert "10% ✓ → 50% ● → promote" in text
    assert "latency_p99" in text
    assert "5.00ms" in text
    assert "0.5/1s, 0/5 candidate requests" in text
    lines = [t.plain for e in emitted for t in con.event_lines(finite(e.to_dict()), T0)]
    assert any("step         step 2 at 50%: step 2: weight 50%" in line for line in lines)
    assert any("✓ error_rate" in line and "n=" in line for line in lines)


def test_piped_status_is_plain_lines_that_no_width_cuts() -> None:
    long_url = "http://" + "very-long-upstream-name." * 6 + "example:8080"
    status: Any = {
        "version": "1.0",
        "config": {"revision": "r1+abc"},
        "routes": [
            {
                "name": "shop",
                "stable": {"urls": [long_url], "revision": "1.0"},
                "candidate": {"urls": ["http://c:1"], "revision": "1.1"},
                "weight": {"effective": 25.0, "source": "rollout"},
                "rollout": None,
            }
        ],
        "rollouts": {"persistent": False},
    }
    lines = con.status_lines(status)
    assert f"  stable: {long_url} (1.0)" in lines
    assert "  weight: 25% (set by rollout)" in lines
    assert lines[-1] == "rollout state is in memory only (no --state-dir)"


def test_a_rollout_in_its_shadow_shows_the_copies_time_and_divergence() -> None:
    shadow = {"stage": "mirroring", "duration": 300.0, "min_requests": 500, "started_at": T0,
              "elapsed": 45.2, "mirrored": 230, "errors": 1, "error_rate": 1 / 230,
              "compared": 228, "diverged": 1, "divergence": 1 / 228}  # fmt: skip
    waiting = rollout(phase="waiting", waiting_for="shadow", shadow=shadow)
    assert con.rollout_headline(route(rollout=waiting)).plain.endswith(
        "(waiting for shadow: 230 of 500 copies, 45s of 300s, 0.4% diverged)"
    )


def test_a_status_page_of_a_large_config_says_how_to_see_the_rest() -> None:
    one = {"name": "r1", "stable": {"urls": ["http://s:1"], "revision": None},
           "candidate": None, "weight": {"effective": 0.0, "source": "file"}}  # fmt: skip
    paged: Any = {"version": "1.0", "config": {"revision": "r"}, "routes": [one],
                  "route_count": 5000, "page": {"offset": 1000}}  # fmt: skip
    note = con.more_routes(paged)
    assert note is not None
    assert note.startswith("routes 1001-1001 of 5000 shown")
    whole: Any = {**paged, "route_count": 1}
    assert con.more_routes(whole) is None  # all of them: nothing to say
    older: Any = {k: v for k, v in paged.items() if k != "route_count"}  # an older server
    assert con.more_routes(older) is None
