"""A bounded writer for log batches: the event loop hands text over and never waits for it.

The access log (`logs.AccessLog`) formats the lines of one event-loop pass together and gives
them to a `BatchWriter`. When its stream is a real file descriptor (stderr redirected to a file,
a pipe, a terminal), a thread of its own writes the batches: a write that blocks (a full pipe
nobody reads, a slow disk) blocks that thread, never the loop. While the thread is stuck, new
batches wait in memory up to ``limit`` bytes; past that they are dropped and counted
(``dropped``, exported as ``splitproxy_access_log_dropped_total``), since a proxy that stops
serving because its log reader stalled is worse than a log with a gap.

A stream without a file descriptor (an ``io.StringIO``, a test's capture) is written at once,
in the caller's thread: nothing there can block.
"""

from __future__ import annotations

import io
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import IO, Final

DEFAULT_LIMIT: Final = 4 * 1024 * 1024  # bytes of lines waiting for a stuck writer
# After a wake-up the thread waits this long for more batches before it writes: under load
# that is one wake-up (and one write) per 50 ms instead of one per loop pass. Each wake-up
# costs the loop GIL hand-overs: at 10 ms they still cost ~20 % of the throughput on 1 KB
# responses, at 50 ms they are lost in the noise. A quiet proxy's lines go out within it.
LINGER: Final = 0.05


def _fileno(stream: IO[str]) -> int | None:
    """The stream's file descriptor, or None when it has none (an in-memory stream)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class BatchWriter:
    """Writes text batches to ``stream``, from a thread when the stream is a file descriptor.

    `write` hands a batch over (``lines`` is how many log lines it holds, for the drop count)
    and returns at once; `close` writes what is left, waiting at most its timeout.
    Counters each have one writer thread (the caller's, or the writer's), so no lock is needed
    to keep them exact: ``handed`` and ``dropped`` are the caller's, ``written`` the thread's.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        limit: int = DEFAULT_LIMIT,
        linger: float = LINGER,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.linger = linger
        self.sleep = sleep  # how the thread lingers (tests script what arrives meanwhile)
        self.fd = _fileno(stream)
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.errors = getattr(stream, "errors", None) or "backslashreplace"
        self.dropped = 0  # lines not written: buffer full, or the stream refused them
        self.handed = 0  # characters handed to the thread (caller's counter)
        self.handed_lines = 0
        self.written = 0  # characters the thread has written or failed to (thread's counter)
        self.written_lines = 0
        self.failed = 0  # lines the thread could not write (thread's counter)
        self.writes = 0  # writes the thread made (thread's counter)
        # (a C queue: a put costs a fraction of a microsecond, and wakes the thread if idle)
        self._queue: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def backlog(self) -> int:
        """Characters handed over and not yet written."""
        return self.handed - self.written

    @property
    def dropped_total(self) -> int:
        """Every line lost so far: dropped while the writer was stuck, or refused."""
        return self.dropped + self.failed

    def write(self, text: str, lines: int) -> None:
        """Write ``text`` (``lines`` log lines), without ever waiting on the stream."""
        if self.fd is None or self._closed:
            thread = self._thread
            if thread is not None and thread.is_alive():  # closed, still stuck: never wait
                self.dropped += lines
            else:
                self._write_stream(text, lines)
            return
        if self.handed - self.written + len(text) > self.limit:
            self.dropped += lines
            return
        self.handed += len(text)
        self.handed_lines += lines
        self._queue.put((text, lines))
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="splitproxy-access-log", daemon=True
            )
            self._thread.start()

    def _write_stream(self, text: str, lines: int) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not break the proxy
            self.dropped += lines

    def _run(self) -> None:
        # Idle, the thread waits on the queue, and the first batch wakes it. Busy, it does not
        # go back to waiting on the queue after a write: it lingers again and takes what came
        # meanwhile. Waiting on the queue would make the loop's next `put` wake it (a futex
        # call in the loop's thread) and cost one more hand-over of the GIL per write: the
        # loop thread pays each one (test_logwriter_rhythm.py counts the waits).
        waiting = self._queue
        linger = self.linger
        sleep = self.sleep
        item = waiting.get()
        lingered = False
        while True:
            if item is not None and linger and not lingered:
                sleep(linger)
            parts: list[str] = []
            lines = 0
            end = False
            while item is not None:  # everything waiting goes out in one write
                parts.append(item[0])
                lines += item[1]
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
            else:
                end = True  # close(): the sentinel is the last item
            if parts:
                text = "".join(parts)
                if not self._write_fd(text.encode(self.encoding, self.errors)):
                    self.failed += lines
                self.written += len(text)
                self.written_lines += lines
            if end:
                return
            self.writes += 1
            lingered = False
            if linger:  # busy: the next batch is most likely on its way
                sleep(linger)
                lingered = True
            try:
                item = waiting.get_nowait()
            except queue.Empty:  # quiet: wait on the queue, the next batch lingers anew
                item = waiting.get()
                lingered = False

    def _write_fd(self, data: bytes) -> bool:
        fd = self.fd
        assert fd is not None
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:  # someone made the descriptor non-blocking
                    select.select([], [fd], [], 1.0)
        except OSError:
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting at most ``timeout`` s for a stuck stream; later
        batches are written at once, in the caller's thread."""
        thread = self._thread
        if self._closed or thread is None:
            self._closed = True
            return
        self._closed = True
        self._queue.put(None)  # after the last batch: the thread ends there
        thread.join(timeout)
        if thread.is_alive():  # still stuck: what it has not written is lost
            self.dropped += self.handed_lines - self.written_lines
