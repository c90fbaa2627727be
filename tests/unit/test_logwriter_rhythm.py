"""The log writer's rhythm: a busy writer lingers between writes instead of waiting on its
queue (whose next put would wake it: one more GIL hand-over per write for the loop's thread),
and still writes every line, in order; a quiet one waits on the queue. The thread's linger is
scripted (`BatchWriter`'s ``sleep``), so what arrives while it lingers does not depend on
the machine's timing."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
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


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "the writer thread did not get there"
        time.sleep(0.001)


def test_a_busy_writer_lingers_instead_of_waiting_on_its_queue() -> None:
    # Busy, scripted: while the thread lingers, the next batch arrives (its `sleep` hands it
    # over, as the loop would during those 50 ms), so after each write there is more waiting.
    lines = [f"line {n}\n" for n in range(120)]
    script = iter(lines[1:])

    def linger(seconds: float) -> None:
        assert seconds == 0.05
        line = next(script, None)
        if line is not None:
            writer.write(line, 1)

    with drained_pipe() as (stream, got):
        writer = BatchWriter(stream, linger=0.05, sleep=linger)
        waiting = CountingQueue()
        writer._queue = waiting  # type: ignore[assignment]
        writer.write(lines[0], 1)
        wait_until(lambda: writer.written_lines == 120)
        writer.close(timeout=5)
    assert b"".join(got).decode() == "".join(lines)
    assert writer.dropped_total == 0
    # one wait for the first batch, one for the end (close): a writer that went back to its
    # queue after each write would wait ~120 times, and each of those is a wake-up the loop
    # thread pays for
    assert waiting.waits == 2
    # the first write takes two batches (one arrived during the first linger), then one each
    assert writer.writes == 119


def test_a_quiet_writer_waits_on_its_queue_and_writes_each_batch() -> None:
    # Quiet: nothing arrives while the thread lingers; each batch is put only once the
    # thread waits on its queue again, so each is its own write and its own wake-up.
    with drained_pipe() as (stream, got):
        writer = BatchWriter(stream, linger=0.01, sleep=lambda seconds: None)
        waiting = CountingQueue()
        writer._queue = waiting  # type: ignore[assignment]
        for n in range(3):  # (the first batch starts the thread)
            writer.write(f"quiet {n}\n", 1)
            waits = n + 2  # written, and waiting on its queue again
            wait_until(lambda: waiting.waits == waits)  # noqa: B023 (called at once)
        writer.close(timeout=5)
    assert b"".join(got).decode() == "quiet 0\nquiet 1\nquiet 2\n"
    assert writer.writes == 3
    assert waiting.waits == 4
