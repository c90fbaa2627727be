"""The access log's batches against the reference formatting, for any row: every field free
(non-ASCII names and revisions, bytes to escape, missing route, decision or snapshot, errors,
any status and duration) and clocks that cross milliseconds and seconds within a batch and
between batches, with the clock text moved by `AccessLog.fields` in between."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane.exchange import Exchange
from splitproxy.logs import AccessLog
from tests.unit.fakes import exchange
from tests.unit.test_access_log_batches import STATE, Clock, Sink, reference_json, reference_text
from tests.unit.test_access_log_numbers import seconds

texts = st.one_of(st.sampled_from(["", "shop", "stable", "é", 'a"b\\c', "\x00\n", "名"]), st.text())
# a route's name and a decision's reason are never empty (config, `Reason`)
names = st.one_of(st.none(), texts.filter(bool))
# (one object per revision: the log compares snapshots by identity, as the data path's are)
# (a JSON line writes a duration from 10**12 ms on as `logs._json_ms` does, not as `repr`:
# the reference's way parts from it there, past any request's duration)
durations = seconds.filter(lambda x: not abs(x) >= 1e9)
SNAPSHOTS = [None, *(SimpleNamespace(revision=r) for r in ["r7+abc", "é+1", 'q"\\', ""])]


@st.composite
def rows(draw: st.DrawFn) -> Exchange:
    ex = exchange(STATE, None)
    ex.conn.peer_ip = draw(st.one_of(st.sampled_from(["", "127.0.0.1", "2001:db8::7"]), texts))
    ex.method = draw(st.one_of(st.sampled_from([b"GET", b"M\xe9"]), st.binary(max_size=8)))
    # (bytes to escape drawn on purpose too: random bytes hold a quote or a backslash rarely)
    targets = st.sampled_from([b"/", b'/a"b', b"/a\\b?q=\xc3\xa9"])
    ex.target = draw(st.one_of(targets, st.binary(max_size=30)))
    ex.http11 = draw(st.booleans())
    ex.status = draw(st.one_of(st.sampled_from([200, 404, 502]), st.integers(-5, 100_000)))
    ex.bytes_out = draw(st.integers(0, 10**12))
    ex.duration = draw(durations)
    route = draw(names)
    ex.route = None if route is None else SimpleNamespace(name=route)  # type: ignore[assignment]
    ex.version = draw(texts)
    reason = draw(names)
    ex.decision = None if reason is None else SimpleNamespace(reason=reason)  # type: ignore[assignment]
    ex.upstream_url = draw(texts)
    ex.upstream_status = draw(st.one_of(st.sampled_from([0, 200]), st.integers(0, 100_000)))
    ex.upstream_duration = draw(durations)
    ex.request_id = draw(st.binary(max_size=20))
    ex.snapshot = draw(st.sampled_from(SNAPSHOTS))  # type: ignore[assignment]
    ex.error_kind = draw(st.one_of(st.sampled_from(["", "connect"]), texts))
    ex.preview = draw(st.booleans())
    return ex


# steps between lines: none, a few microseconds, across a millisecond or a second, and back
steps = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=0.002),
    st.floats(min_value=-1.5, max_value=1.5),
    st.sampled_from([1e-6, 0.999, 1.0]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(rows(), steps), min_size=1, max_size=16),
    st.floats(min_value=1.0, max_value=4e9),
    st.sampled_from(["text", "json"]),
    st.integers(1, 6),
    st.booleans(),
)
def test_every_row_is_the_reference_line_byte_for_byte(
    batch: list[tuple[Exchange, float]], start: float, log_format: str, per_flush: int, ask: bool
) -> None:
    now, times = start, []
    for _, step in batch:
        now = max(1.0, now + step)
        times.append(now)
    clock: list[float] = []
    sink = Sink()
    log = AccessLog(log_format, sink, clock=Clock(clock))  # type: ignore[arg-type]
    expected = []
    reference = reference_json if log_format == "json" else reference_text
    for i, ((ex, _), at) in enumerate(zip(batch, times, strict=True)):
        clock.append(at)
        log._pending.append(log._capture(ex))
        expected.append(reference(ex, at) + "\n")
        if (i + 1) % per_flush == 0:
            log.flush()
            if ask:  # a caller asks for a line's fields: the clock text moves meanwhile
                clock.append(math.floor(at) + 2.5)
                log.fields(ex)
    log.flush()
    assert sink.text == "".join(expected)


def test_the_rows_cover_the_cases_they_claim() -> None:
    """The strategy draws what the property is about (hypothesis finds each quickly)."""
    seen: dict[str, Any] = {}

    @settings(max_examples=300, deadline=None)
    @given(rows())
    def look(ex: Exchange) -> None:
        seen["non-ascii"] = seen.get("non-ascii") or not ex.version.isascii()
        seen["no route"] = seen.get("no route") or ex.route is None
        seen["error"] = seen.get("error") or bool(ex.error_kind)
        seen["escape"] = seen.get("escape") or b'"' in ex.target or b"\\" in ex.target

    look()
    assert len(seen) == 4
    assert all(seen.values())
