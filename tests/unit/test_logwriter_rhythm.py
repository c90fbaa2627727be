"""The log writer's rhythm: a busy writer lingers between writes instead of waiting on its
queue (whose next put would wake it: one more GIL hand-over per write for the loop's thread),
and still writes every line, in order; a quiet one waits on the queue."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from splitproxy.logwriter import BatchWriter


class CountingQueue:
    """The writer's queue, counting the waits on it (blocking gets)."""

    def __init__(self) -> None:
        self.inner: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self.waits = 0

    def put(self, item: tuple[str, int] | None) -> None:
        self.inner.put(item)

    def get(self) -> tuple[str, int] | None:
        self.waits += 1
        return self.inner.get()

    def get_nowait(self) -> tuple[str, int] | None:
        return self.inner.get_nowait()


@contextmanager
def drained_pipe() -> Iterator[tuple[IO[str], list[bytes]]]:
    """A pipe's write end as a text stream, its read end drained by a thread into a list."""
    r, w = os.pipe()
    stream = os.fdopen(w, "w", encoding="utf-8")
    got: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(r, 65536):
            got.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield stream, got
    finally:
        stream.close()
        reader.join(5)
        os.close(r)


def test_a_busy_writer_lingers_instead_of_waiting_on_its_queue() -> None:
    with drained_pipe() as (stream, got):
        writer = BatchWriter(stream, linger=0.05)
        waiting = CountingQueue()
        writer._queue = waiting  # type: ignore[assignment]
        lines = [f"line {n}\n" for n in range(120)]
        for line in lines:  # a batch every 5 ms for 0.6 s: busy all along
            writer.write(line, 1)
            time.sleep(0.005)
        writer.close(timeout=5)
    assert b"".join(got).decode() == "".join(lines)
    assert writer.written_lines == 120
    assert writer.dropped_total == 0
    # one wait for the first batch; a writer that waited after each write waits ~12 times
    # (a stalled test thread may leave the queue empty for a whole linger now and then)
    assert waiting.waits <= 3
    assert 2 <= writer.writes <= 16


def test_a_quiet_writer_waits_on_its_queue_and_writes_each_batch() -> None:
    with drained_pipe() as (stream, got):
        writer = BatchWriter(stream, linger=0.01)
        waiting = CountingQueue()
        writer._queue = waiting  # type: ignore[assignment]
        for n in range(3):  # far apart: each batch is its own write
            writer.write(f"quiet {n}\n", 1)
            deadline = time.monotonic() + 5
            while writer.written_lines <= n and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)  # past the linger after the write: back to waiting
        writer.close(timeout=5)
    assert b"".join(got).decode() == "quiet 0\nquiet 1\nquiet 2\n"
    assert writer.writes == 3
    assert waiting.waits >= 3
