"""The access log's batches: the same bytes as one line at a time, and a stalled stream that
never stalls the caller (a real pipe nobody reads)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy import logs
from splitproxy.dataplane.exchange import Exchange
from splitproxy.dataplane.routing import Decision
from splitproxy.logs import AccessLog
from splitproxy.logwriter import BatchWriter
from tests.unit.fakes import exchange, runtime_state

STATE = runtime_state()
PREVIEW = ',"listener":"preview"'
_UNSAFE = re.compile(rb'[^\x21-\x7e]|["\\]')


# -- the reference: how the access log formatted a line before batches (one call per line) --
def _stamp(now: float) -> str:
    second = int(now)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{stamp}.{int((now - second) * 1000):03d}Z"


def _target(raw: bytes) -> str:
    text = raw.decode("latin-1")
    if _UNSAFE.search(raw) is None:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def reference_text(ex: Exchange, now: float) -> str:
    route, decision, snap, error = ex.route, ex.decision, ex.snapshot, ex.error_kind
    return (
        f"{_stamp(now)} {ex.conn.peer_ip or '-'} "
        f'"{ex.method.decode("latin-1")} {_target(ex.target)} '
        f'{"HTTP/1.1" if ex.http11 else "HTTP/1.0"}" {ex.status} {ex.bytes_out} '
        f"{ex.duration * 1000:.3f}ms route={route.name if route is not None else '-'} "
        f"version={ex.version or '-'} "
        f"reason={decision.reason if decision is not None else '-'} "
        f"upstream={ex.upstream_url or '-'} upstream_status={ex.upstream_status or '-'} "
        f"upstream_ms={f'{ex.upstream_duration * 1000:.3f}' if ex.upstream_duration else '-'} "
        f"rid={ex.request_id.decode('latin-1') or '-'} "
        f"rev={snap.revision if snap is not None else '-'}"
        f"{' listener=preview' if ex.preview else ''}"
        f"{f' error={error}' if error else ''}"
    )


def reference_json(ex: Exchange, now: float) -> str:
    route, decision, snap = ex.route, ex.decision, ex.snapshot
    q = json.encoder.encode_basestring_ascii
    up_ms = repr(round(ex.upstream_duration * 1000, 3)) if ex.upstream_duration else "null"
    rid, peer = ex.request_id, ex.conn.peer_ip
    return (
        f'{{"logger":"splitproxy.access","time":"{_stamp(now)}",'
        f'"client":{q(peer) if peer else "null"},"method":{q(ex.method.decode("latin-1"))},'
        f'"path":{q(ex.target.decode("latin-1"))},'
        f'"protocol":"{"HTTP/1.1" if ex.http11 else "HTTP/1.0"}","status":{ex.status},'
        f'"bytes":{ex.bytes_out},"duration_ms":{round(ex.duration * 1000, 3)!r},'
        f'"route":{q(route.name) if route is not None else "null"},'
        f'"version":{q(ex.version) if ex.version else "null"},'
        f'"reason":{q(decision.reason) if decision is not None else "null"},'
        f'"upstream":{q(ex.upstream_url) if ex.upstream_url else "null"},'
        f'"upstream_status":{ex.upstream_status or "null"},'
        f'"upstream_duration_ms":{up_ms},'
        f'"request_id":{q(rid.decode("latin-1")) if rid else "null"},'
        f'"config_revision":{q(snap.revision) if snap is not None else "null"},'
        f'"error":{q(ex.error_kind) if ex.error_kind else "null"}'
        f"{PREVIEW if ex.preview else ''}}}"
    )


# -- random finished exchanges -------------------------------------------------------------------
durations = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.integers(0, 10**9).map(lambda us: us / 1e6),  # whole microseconds: ties for rounding
    st.integers(0, 10**9).map(lambda n: n / 2e7),  # near ties at the third decimal of a ms
)


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    routed = draw(st.booleans())
    ex = exchange(STATE, "shop" if routed else None)
    ex.conn.peer_ip = draw(st.sampled_from(["", "127.0.0.1", "2001:db8::7", "203.0.113.7"]))
    ex.method = draw(st.sampled_from([b"GET", b"POST", b"PURGE", b"M\xe9"]))
    ex.target = draw(st.binary(max_size=40).map(lambda b: b"/" + b))
    ex.http11 = draw(st.booleans())
    # (the text format takes codes under 1000 from a table, others formatted)
    ex.status = draw(st.one_of(st.sampled_from([101, 200, 404, 499, 502]), st.integers(0, 1200)))
    ex.bytes_out = draw(st.integers(0, 10**9))
    ex.duration = draw(durations)
    ex.request_id = draw(st.binary(max_size=20))
    ex.snapshot = draw(st.sampled_from([STATE.snapshot, None]))
    ex.error_kind = draw(st.sampled_from(["", "connect", "timeout", "client_closed"]))
    ex.preview = draw(st.booleans())
    if routed:
        ex.version = draw(st.sampled_from(["stable", "candidate", ""]))
        reason = draw(st.sampled_from(["weight", "sticky", "preview", None]))
        ex.decision = Decision(ex.version or "stable", reason) if reason else None  # type: ignore[arg-type]
        ex.upstream_url = draw(st.sampled_from(["", "http://shop-v2:8080", "http://é:1"]))
        ex.upstream_status = draw(st.sampled_from([0, 200, 500, 999, 1000, 1234]))
        ex.upstream_duration = draw(durations)
    return ex


class Clock:
    def __init__(self, times: list[float]) -> None:
        self.times = iter(times)

    def __call__(self) -> float:
        return next(self.times)


class Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


times = st.floats(min_value=1e9, max_value=4e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(exchanges(), times), min_size=1, max_size=12),
    st.sampled_from(["text", "json"]),
)
def test_a_batch_is_the_lines_one_at_a_time_byte_for_byte(
    batch: list[tuple[Exchange, float]], log_format: str
) -> None:
    sink = Sink()
    log = AccessLog(log_format, sink, clock=Clock([now for _, now in batch]))  # type: ignore[arg-type]
    for ex, _ in batch:
        log._pending.append(log._capture(ex))  # what `log` keeps, as within one loop pass
    log.flush()
    reference = reference_json if log_format == "json" else reference_text
    assert sink.text == "".join(reference(ex, now) + "\n" for ex, now in batch)


@settings(max_examples=100, deadline=None)
@given(exchanges(), times)
def test_the_json_line_parses_to_its_fields(ex: Exchange, now: float) -> None:
    log = AccessLog("json", Sink(), clock=lambda: now)  # type: ignore[arg-type]
    assert json.loads(log.line(ex)) == {"logger": "splitproxy.access", **log.fields(ex)}


# -- a stalled stream ------------------------------------------------------------------------------
@contextmanager
def pipe() -> Iterator[tuple[int, IO[str]]]:
    """A real pipe: its read end (a descriptor) and its write end as a text stream."""
    r, w = os.pipe()
    stream = os.fdopen(w, "w", encoding="utf-8")
    try:
        yield r, stream
    finally:
        stream.close()
        os.close(r)


def read_all(fd: int, until: int) -> bytes:
    """What the pipe holds until ``until`` bytes (the writer thread writes as we read)."""
    data = b""
    while len(data) < until:
        data += os.read(fd, 1 << 16)
    return data


async def test_a_pipe_nobody_reads_does_not_stall_the_loop_and_counts_drops() -> None:
    with pipe() as (r, stream):
        log = AccessLog("text", stream, buffer_bytes=64 * 1024)
        ex = exchange(STATE, "shop", "candidate", "sticky")
        line = len(log.line(ex)) + 1
        logged = 0
        # far more than the pipe (64 KiB) and the buffer (64 KiB) hold: with a writer that
        # blocked the loop, this test would hang on the first full pipe (the test timeout)
        for _ in range(100):
            for _ in range(50):
                log.log(ex)
                logged += 1
            await asyncio.sleep(0)  # the next loop pass (every 128 lines: handed over at once)
        log.flush()  # the lines still waiting for their hand-over (50 ms)
        assert log.dropped > 0
        assert log.writer.backlog <= 64 * 1024
        # the reader comes back: what was kept is written whole, and only that
        kept = logged - log.dropped
        data = read_all(r, kept * line)
        log.close()
        lines = data.decode().splitlines()
        assert len(lines) == kept
        assert all(text.endswith(f"rev={STATE.snapshot.revision}") for text in lines)  # type: ignore[union-attr]


def test_a_writer_stuck_at_close_gives_up_after_its_timeout() -> None:
    with pipe() as (r, stream):
        writer = BatchWriter(stream, limit=1 << 20, linger=0)
        block = "x" * 1023 + "\n"
        for _ in range(200):  # 200 KiB: the pipe takes 64 KiB, the thread blocks on the rest
            writer.write(block, 1)
        closing = threading.Thread(target=writer.close, args=(0.2,))
        closing.start()
        closing.join(5)
        assert not closing.is_alive()
        assert writer.dropped_total > 0  # what it had not written when close gave up
        thread = writer._thread
        assert thread is not None
        os.set_blocking(r, False)
        while thread.is_alive():  # the reader comes back: the thread finishes and ends
            try:
                os.read(r, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)


def test_a_stream_without_a_descriptor_is_written_at_once() -> None:
    sink = Sink()
    writer = BatchWriter(sink)  # type: ignore[arg-type]
    writer.write("a\nb\n", 2)
    assert sink.text == "a\nb\n"
    assert writer.fd is None


def test_the_bytes_a_text_line_shows_as_they_are_are_exactly_the_safe_ones() -> None:
    # `_text_lines` deletes the safe bytes with translate: what remains must be the unsafe ones
    for b in range(256):
        one = bytes([b])
        assert bool(one.translate(None, logs._SAFE)) == (_UNSAFE.search(one) is not None)


def test_each_loop_pass_flushes_its_lines_on_the_loop_that_runs_now() -> None:
    # The log keeps the loop it scheduled its last flush on (asking asyncio costs a system
    # call); a loop that has stopped must not be used again: a new loop gets the next flush,
    # and a caller without a loop is written at once.
    sink = Sink()
    log = AccessLog("text", sink)  # type: ignore[arg-type]
    ex = exchange(STATE, "shop", "candidate", "sticky")

    async def one_pass(n: int) -> tuple[str, str]:
        for _ in range(n):
            log.log(ex)
        before = sink.text  # nothing written within the pass
        await asyncio.sleep(0)
        return before, sink.text

    for n in (2, 3):  # two loops, one after the other
        before, after = asyncio.run(one_pass(n))
        assert after.count("\n") - before.count("\n") == n
    log.log(ex)  # no loop running now: at once
    assert sink.text.count("\n") == 6


async def test_a_writer_threads_lines_wait_their_hand_over_then_go_whole_and_in_order() -> None:
    # Lines for a writer thread (a stream with a descriptor) are handed over `_HAND_OVER` s
    # after the first of them, all together, or at once when `_HAND_OVER_LINES` wait; each
    # line is the one `line` gives for its exchange.
    with pipe() as (r, stream):
        log = AccessLog("text", stream, clock=lambda: 1_700_000_000.25)
        exchanges = [exchange(STATE, "shop", "candidate", "sticky") for _ in range(3)]
        for i, ex in enumerate(exchanges):
            ex.request_id = b"rid-%d" % i
            log.log(ex)
        await asyncio.sleep(0)
        assert log.writer.handed_lines == 0  # not at the next loop pass
        await asyncio.sleep(logs._HAND_OVER * 4)
        assert log.writer.handed_lines == 3  # one batch, after its wait
        expected = "".join(log.line(ex) + "\n" for ex in exchanges)
        assert read_all(r, len(expected)).decode() == expected
        for _ in range(logs._HAND_OVER_LINES):  # a full batch goes at once, within the pass
            log.log(exchanges[0])
        assert log.writer.handed_lines == 3 + logs._HAND_OVER_LINES
        log.log(exchanges[1])  # the next one waits for the hand-over already due
        await asyncio.sleep(logs._HAND_OVER * 4)
        assert log.writer.handed_lines == 4 + logs._HAND_OVER_LINES
        log.close()
        rest = (1 + logs._HAND_OVER_LINES) * (len(log.line(exchanges[0])) + 1)
        assert len(read_all(r, rest)) == rest  # every line written, none twice
