"""The access log's shortcuts for its numbers, against the formatting they stand for: a
duration from its whole microseconds (`logs._FRACS`) where the float's ``:.3f`` is exact, and
a time stamp taken from the interval of clock values known to share it (`_stamp_span`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from splitproxy import logs
from splitproxy.logs import AccessLog
from tests.unit.fakes import exchange
from tests.unit.test_access_log_batches import STATE, Clock, Sink, _stamp


def text_ms(seconds: float) -> str:
    """How a text line wrote a duration before the shortcut."""
    return f"{seconds * 1000:.3f}"


def json_ms(seconds: float) -> str:
    """How a JSON line wrote a duration before the shortcut (``_json_ms`` then)."""
    text = f"{seconds * 1000:.3f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


def lines(log_format: str, durations: list[tuple[float, float]]) -> list[str]:
    """One batch's lines, an exchange per (duration, upstream duration)."""
    sink = Sink()
    log = AccessLog(log_format, sink, clock=Clock([1.7e9] * len(durations)))  # type: ignore[arg-type]
    for duration, up_duration in durations:
        ex = exchange(STATE, "shop", "candidate", "sticky", duration=duration)
        ex.upstream_duration = up_duration
        log._pending.append(log._capture(ex))
    log.flush()
    return sink.text.splitlines()


# every float (negative, zero of both signs, subnormal, huge, infinite, not a number), whole and
# half microseconds (ties for the third decimal of a millisecond) and their neighbours
seconds = st.one_of(
    st.floats(),
    st.floats(min_value=0.0, max_value=2.0),
    st.integers(0, 2 * 10**6).map(lambda us: us / 1e6),
    st.integers(0, 4 * 10**6).map(lambda n: n / 2e6),
    st.integers(0, 4 * 10**6).map(lambda n: math.nextafter(n / 2e6, math.inf)),
    st.integers(0, 4 * 10**6).map(lambda n: math.nextafter(n / 2e6, -math.inf)),
    st.integers(0, 4 * 10**6).map(lambda n: (n + 0.5) / 1e6 + 1e-12),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(seconds, seconds), min_size=1, max_size=8))
@example([(0.0005, 0.0015), (0.0025, 0.9995), (-0.0, 0.0), (math.inf, math.nan)])
@example([(0.999_999_5, 0.999_9995), (1.0, 5e-324), (-1e-9, 1e300)])
def test_durations_are_the_floats_format_for_every_float(
    durations: list[tuple[float, float]],
) -> None:
    for line, (duration, up) in zip(lines("text", durations), durations, strict=True):
        assert f" {text_ms(duration)}ms route=" in line
        assert f" upstream_ms={text_ms(up) if up else '-'} rid=" in line
    for line, (duration, up) in zip(lines("json", durations), durations, strict=True):
        assert f',"duration_ms":{json_ms(duration)},"route":' in line
        assert f',"upstream_duration_ms":{json_ms(up) if up else "null"},' in line


def test_a_duration_under_a_second_takes_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut is what the test above checks: a marked table shows in the line."""
    monkeypatch.setattr(logs, "_FRACS", tuple(f".{n:03d}!" for n in range(1000)))
    monkeypatch.setattr(logs, "_JSON_FRACS", tuple(f".{n:03d}?" for n in range(1000)))
    (text,) = lines("text", [(0.000912, 0.000601)])
    assert " 0.912!ms " in text
    assert "upstream_ms=0.601! " in text
    (json,) = lines("json", [(0.000912, 0.000601)])
    assert '"duration_ms":0.912?,' in json
    assert '"upstream_duration_ms":0.601?,' in json
    # at a tie (half a microsecond, as the float holds it), from a second on: the float's own
    (text,) = lines("text", [(0.0000005, 1.5)])
    assert f" {text_ms(0.0000005)}ms " in text
    assert "upstream_ms=1500.000 " in text
    assert "!" not in text


# -- time stamps ----------------------------------------------------------------------------------
def stamps(log_format: str, clock: list[float]) -> list[str]:
    """The time stamp of each line of one batch, a line per clock value."""
    sink = Sink()
    log = AccessLog(log_format, sink, clock=Clock(clock))  # type: ignore[arg-type]
    for _ in clock:
        log._pending.append(log._capture(exchange(STATE)))
    log.flush()
    if log_format == "text":
        return [line.split(" ", 1)[0] for line in sink.text.splitlines()]
    return [line.split('"time":"', 1)[1].split('"', 1)[0] for line in sink.text.splitlines()]


start = st.one_of(
    st.floats(min_value=1.0, max_value=2.0**34),
    st.integers(1, 2**34).map(float),  # the start of a second
    st.integers(1_000_000_000_000, 1_000_000_000_999).map(lambda ms: ms / 1000),
)
# steps between lines: none, a few spacings of the clock (the edge of a millisecond), up to
# seconds, and back (a clock set back)
step = st.one_of(
    st.just(0.0),
    st.integers(-3, 3),
    st.floats(min_value=-2.0, max_value=2.0),
    st.floats(min_value=0.0, max_value=0.002),
)


@st.composite
def clocks(draw: st.DrawFn) -> list[float]:
    now = draw(start)
    values = []
    for move in draw(st.lists(step, min_size=1, max_size=30)):
        if isinstance(move, int):  # a number of the clock's spacings
            for _ in range(abs(move)):
                now = math.nextafter(now, math.inf if move > 0 else -math.inf)
        else:
            now = max(1.0, now + move)
        values.append(now)
    return values


@settings(max_examples=600, deadline=None)
@given(clocks(), st.sampled_from(["text", "json"]))
@example([1.0009999999999999, 1.001, 1.9999999999999998, 2.0], "text")
@example([2.0**33 - 1e-6, 2.0**33, 2.0**33 + 0.5], "json")
def test_time_stamps_are_the_clocks_for_every_clock(clock: list[float], log_format: str) -> None:
    assert stamps(log_format, clock) == [_stamp(now) for now in clock]


def test_the_lines_of_one_millisecond_share_its_stamp_without_recomputing_it() -> None:
    """The interval is taken: a stamp found once serves the lines after it."""
    log = AccessLog("text", Sink(), clock=Clock([1.7e9 + 0.0001, 1.7e9 + 0.0002]))  # type: ignore[arg-type]
    when, lo, hi = log._stamp_span(1.7e9 + 0.0001)
    assert lo <= 1.7e9 + 0.0002 < hi
    assert when == _stamp(1.7e9 + 0.0002)
