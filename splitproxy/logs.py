"""Logging: the process log (text or JSON lines on stderr) and the access log (a line a request).

The access log does not go through `logging`: a record, a handler and a formatter cost about
10 µs a line, a large share of what the proxy spends on a request. `AccessLog` keeps each
finished exchange with its time (its fields are read when the batch is formatted), formats
the lines of 50 ms (at most 128 of them) together, and hands them to a writer thread
(`logwriter.BatchWriter`) as one text: the loop never waits on stderr, and a stalled stderr
costs dropped lines (counted), not a stalled proxy (measurements in ``docs/observability.md``).
Its switch is ``Settings.access_log``, not the log level.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from math import floor
from typing import IO, TYPE_CHECKING, Any, Final

from splitproxy import logwriter

if TYPE_CHECKING:
    from splitproxy.config.vocabulary import FailureKind, Version
    from splitproxy.dataplane.context import ExchangeObserver
    from splitproxy.dataplane.exchange import Exchange
    from splitproxy.dataplane.state import Snapshot

ACCESS_LOGGER = "splitproxy.access"
_PREVIEW_JSON = ',"listener":"preview"'  # the JSON line's key for the preview listener
_TEXT_HTTP11 = ' HTTP/1.1" '  # a text line's protocol with what follows it
_TEXT_HTTP10 = ' HTTP/1.0" '
_JSON_HTTP11 = ',"protocol":"HTTP/1.1","status":'
_JSON_HTTP10 = ',"protocol":"HTTP/1.0","status":'
_REMEMBER = 1024  # entries of a formatting cache (methods, routing parts) before it starts over
_REMEMBER_TARGET = 256  # bytes of the longest request target a formatting cache keeps
# Seconds the lines of a writer thread's log wait before the loop formats and hands them over
# (the thread lingers as long after a wake-up): a loop pass carries one or two lines below
# saturation, and handing each pass's lines over cost ~4 k instructions (a callback, the
# batch's set-up, the queue). At most this many lines wait: past it they go at once (a batch's
# formatting holds the loop ~1.5 µs a line).
_HAND_OVER: Final = 0.05
_HAND_OVER_LINES: Final = 128


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds keys; ``worker``: the
    worker process's index, on every line of a worker (``serve --workers N``)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            data["worker"] = self.worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


def configure(log_format: str = "text", level: str = "info", worker: int | None = None) -> None:
    """Send the process log to stderr in the chosen format; a worker of ``serve --workers N``
    names itself on every line (``worker``: its index)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {who}%(name)s: %(message)s")
        )
    root = logging.getLogger("splitproxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# bytes of a request target that a text line shows escaped: controls, space, '"', '\', non-ASCII
_UNSAFE = re.compile(rb'[^\x21-\x7e]|["\\]')
# The bytes a text line shows as they are (`_UNSAFE`'s complement): ``target.translate(None,
# _SAFE)`` deletes them, so what is left is the unsafe bytes; a quarter to half the cost of
# `_UNSAFE.search` on the short targets most requests carry (one C loop, no regex engine).
_SAFE: Final = bytes(b for b in range(0x21, 0x7F) if b not in b'"\\')
# Status codes as text, indexed by the code: a tuple lookup where formatting an int costs
# several times more (the upstream's code is part of the routing text, formatted once)
_CODES: Final = tuple(str(code) for code in range(1000))
# the end of a time stamp, from the millisecond on: ``.123Z``; as a text line goes on (a
# space), and as a JSON line does (the client's key)
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))
_TEXT_MILLIS: Final = tuple(f"{millis} " for millis in _MILLIS)
_JSON_MILLIS: Final = tuple(f'{millis}","client":' for millis in _MILLIS)
# `AccessLog._stamp_span`: a time stamp's interval leaves this much of a millisecond out at either
# end; below `_SPAN_SECONDS` (year 2242) a clock value's spacing is under 2 µs, well inside it.
_SPAN_MARGIN: Final = 0.005
_SPAN_SECONDS: Final = 2**33
# where the interval of a time stamp ends, from the start of its second, by millisecond
_SPAN_ENDS: Final = tuple((ms + 1 - _SPAN_MARGIN) / 1000 for ms in range(1000))
_NO_SPAN: Final = (1.0, 0.0)  # an interval that holds no clock value
# A duration's ``f"{seconds * 1000:.3f}"`` (text) or ``repr(round(seconds * 1000, 3))`` (JSON)
# from its whole microseconds ``n``: `_CODES[n // 1000]` and these by ``n % 1000``. The float
# formatting costs ~2.4 k instructions a number, this ~1.6 k. ``n`` is ``floor(seconds * 1e6 +
# 0.5)``, exact unless the fraction is within `_TIE` of a rounding tie: below 10**6 µs the two
# products' rounding errs by under 10**-9 µs, so outside that margin both round to the same
# integer; at a tie, or from 1 s on, or for what is not a positive number, the lines format the
# float (tests/unit/test_access_log_numbers.py pits both against every float).
_FRACS: Final = tuple(f".{n:03d}" for n in range(1000))
_JSON_FRACS: Final = tuple(f".{n:03d}".rstrip("0") if n else ".0" for n in range(1000))
_TIE: Final = 1e-6
_UNTIE: Final = 1 - _TIE
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _escape(raw: bytes) -> str:
    """A request target with unsafe bytes (`_UNSAFE`), as a text line shows it."""
    return raw.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _text_ms(seconds: float) -> str:
    """A duration as a text line writes it: milliseconds, three decimals."""
    return f"{seconds * 1000:.3f}"


def _json_ms(seconds: float) -> str:
    """``repr(round(seconds * 1000, 3))`` at half the cost: both round the same binary value to
    three decimals (correctly rounded), and the repr of a number of at most 3 decimals and
    under 10**12 is those digits without their trailing zeros."""
    text = f"{seconds * 1000:.3f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


def _text_end(preview: bool, error: str) -> str:
    """The end of a text line from a preview request or a failed one."""
    return f"{' listener=preview' if preview else ''}{f' error={error}' if error else ''}"


def _remember(cache: dict[Any, str], key: Any, text: str) -> str:
    """Keep ``text`` in ``cache``, which starts over when full: the keys come from requests
    (a method is any token), so the cache must stay bounded whatever clients send."""
    if len(cache) >= _REMEMBER:
        cache.clear()
    cache[key] = text
    return text


def _text_routing(
    route: str | None, version: str, reason: str | None, upstream: str, up_status: int
) -> str:
    """The routing part of a text line, with what comes before and after it."""
    return (
        f"ms route={route or '-'} version={version or '-'} reason={reason or '-'} "
        f"upstream={upstream or '-'} upstream_status={up_status or '-'} upstream_ms="
    )


def _json_routing(route: str | None, version: str, reason: str | None, upstream: str) -> str:
    """The routing part of a JSON line (route, version, reason, upstream)."""
    q = _quote
    return (
        f'"route":{q(route) if route is not None else "null"},'
        f'"version":{q(version) if version else "null"},'
        f'"reason":{q(reason) if reason is not None else "null"},'
        f'"upstream":{q(upstream) if upstream else "null"}'
    )


# What `AccessLog` keeps of a finished exchange until its batch is formatted (`_capture`): the
# line's time and the exchange itself, whose fields are read then. A tuple of the eighteen
# fields cost ~1.5 k instructions more per request than the pair (their reads moved to the
# formatting cost ~1 k of it back). An exchange's fields do not change once it has finished
# (the data path tells the log last, and every later event checks ``finished``), and it is not
# reused: the next request gets an exchange of its own (it lets go of the mirror's copy).
Row = tuple[float, "Exchange"]


class AccessLog:
    """Writes one line per finished exchange: text (``log_format="text"``) or JSON.

    Text::

        2025-01-31T12:00:00.123Z 10.0.0.7 "GET /cart HTTP/1.1" 200 512 3.215ms route=shop
        version=candidate reason=weight upstream=http://shop-v2:8080 upstream_status=200
        upstream_ms=2.901 rid=5f0c2a91e3b4-1a rev=2.4+3ad0c9e1b2f4

    (one line; ``-`` for what does not apply, `` listener=preview`` when the request came in on
    the preview listener, `` error=KIND`` at the end when something failed). JSON: an object
    with the keys of `fields` plus ``"logger": "splitproxy.access"`` (and ``"listener":
    "preview"`` for the preview listener's requests).

    Per request, `log` only keeps the exchange and the time (`Row`); the lines of `_HAND_OVER`
    seconds (at most `_HAND_OVER_LINES`; of one event-loop pass for a stream without a file
    descriptor) are formatted together and handed to a `logwriter.BatchWriter` as one text,
    written by a thread of its own when ``stream`` is a file descriptor, so a slow disk or a
    pipe nobody reads never stalls serving (lines that do not fit its buffer are dropped and
    counted in `dropped`).
    Lines go to ``stream``, stderr by default (the one in force when the log is created).
    """

    def __init__(
        self,
        log_format: str = "text",
        stream: IO[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        buffer_bytes: int | None = None,
    ) -> None:
        self.json = log_format == "json"
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        # lines waiting while the stream is stalled: past this, new lines are dropped
        limit = logwriter.DEFAULT_LIMIT if buffer_bytes is None else buffer_bytes
        self.writer = logwriter.BatchWriter(self.stream, limit=limit)
        self._format = self._json_lines if self.json else self._text_lines
        self._second = -1  # the last line's second and millisecond, and their text
        self._ms = -1
        self._stamp = ""
        self._when = ""
        # a batch's last time stamp and the clock values it surely stands for (`_stamp_span`;
        # kept apart from `_when`, which `fields` may move meanwhile)
        self._span = ("", "", 1.0, 0.0, 1.0, 0.0)
        self._second_span = _NO_SPAN  # `_second` as an interval of clock values, if covered
        # the last line's snapshot, and its revision as the format writes it
        self._snapshot: Snapshot | None = None
        self._rev = "-" if log_format != "json" else "null"
        self._text_rev = " rev=-"  # `_rev` as a text line ends with it
        # formatted once: a method, the routing part of a line (route, version, reason, upstream)
        self._methods: dict[bytes, str] = {}
        self._routed: dict[tuple[str | None, str, str | None, str, int], str] = {}
        # the JSON format's own: each part with the keys around it (`_json_lines`)
        self._json_head = self._json_head_second = ""  # a line's start, and its second
        self._json_methods: dict[bytes, str] = {}
        self._json_routed: dict[tuple[str | None, str, str | None, str, int], str] = {}
        self._json_peers: dict[str, str] = {}
        self._json_tails: dict[tuple[str, str, bool], str] = {}
        # a request target as each format writes it (escaped / quoted): most requests ask for
        # a target asked for lately, and a look-up costs less than checking and decoding it
        self._targets: dict[bytes, str] = {}
        self._json_targets: dict[bytes, str] = {}
        self._pending: list[Row] = []
        # the loop the lines' flush was last scheduled on: `asyncio.get_running_loop()` makes a
        # getpid system call on each call (Python 3.11), and `log` would ask once per batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = False  # a hand-over (`_hand_over`) is scheduled on `_loop`

    @property
    def dropped(self) -> int:
        """Lines lost: the buffer was full (the stream stalled), or the stream refused them."""
        return self.writer.dropped_total

    def _capture(self, ex: Exchange) -> Row:
        return (self.clock(), ex)

    def fields(self, ex: Exchange) -> dict[str, Any]:
        """The line's fields, as the JSON format writes them."""
        snap = ex.snapshot
        route = ex.route
        decision = ex.decision
        upstream_ms = round(ex.upstream_duration * 1000, 3) if ex.upstream_duration else None
        listener = {"listener": "preview"} if ex.preview else {}
        return {
            "time": self._clock_text(self.clock()),
            "client": ex.conn.peer_ip or None,
            "method": ex.method.decode("latin-1"),
            "path": ex.target.decode("latin-1"),
            "protocol": "HTTP/1.1" if ex.http11 else "HTTP/1.0",
            "status": ex.status,
            "bytes": ex.bytes_out,
            "duration_ms": round(ex.duration * 1000, 3),
            "route": route.name if route is not None else None,
            "version": ex.version or None,
            "reason": decision.reason if decision is not None else None,
            "upstream": ex.upstream_url or None,
            "upstream_status": ex.upstream_status or None,
            "upstream_duration_ms": upstream_ms,
            "request_id": ex.request_id.decode("latin-1") or None,
            "config_revision": snap.revision if snap is not None else None,
            "error": ex.error_kind or None,
            **listener,
        }

    def line(self, ex: Exchange) -> str:
        """The access log line for ``ex`` (without the newline)."""
        return self._format([self._capture(ex)])[:-1]

    def _text_lines(self, rows: list[Row]) -> str:
        """The text lines of ``rows``, each with its newline.

        The hot loop of the access log. What lines of a batch share is formatted once: the
        time to the millisecond (`_stamp_span`), a snapshot's revision, a method, and the
        routing part (route, version, reason, upstream, upstream status) per combination;
        status codes come from a table (`_CODES`), and a target is checked for bytes to
        escape with one ``translate`` (`_SAFE`)."""
        out: list[str] = []
        add = out.append
        codes, safe, ints, fracs = _CODES, _SAFE, _CODES, _FRACS
        ends, millis_of, tie, untie = _SPAN_ENDS, _TEXT_MILLIS, _TIE, _UNTIE
        second, millis, lo, hi, sec_lo, sec_hi = self._span
        last_snap, rev = self._snapshot, self._text_rev
        methods, routed, targets = self._methods, self._routed, self._targets
        for now, ex in rows:
            if not lo <= now < hi:  # another millisecond (or near the edge of one)
                if sec_lo <= now < sec_hi:  # of the same second: `_stamp_span`'s first step
                    k = floor((now - sec_lo) * 1000.0)
                    millis, lo, hi = millis_of[k], now, sec_lo + ends[k]
                else:
                    when, lo, hi = self._stamp_span(now)
                    second, millis = self._stamp, f"{when[-5:]} "
                    sec_lo, sec_hi = self._second_span
            snap = ex.snapshot
            if snap is not last_snap:
                last_snap, rev = snap, f" rev={snap.revision}" if snap is not None else " rev=-"
            method = ex.method
            verb = methods.get(method)
            if verb is None:
                verb = _remember(methods, method, f'"{method.decode("latin-1")} ')
            route = ex.route
            decision = ex.decision
            up_status = ex.upstream_status
            key = (
                route.name if route is not None else None, ex.version,
                decision.reason if decision is not None else None, ex.upstream_url, up_status,
            )  # fmt: skip
            routing = routed.get(key)
            if routing is None:
                routing = _remember(routed, key, _text_routing(*key))
            target = ex.target
            path = targets.get(target)
            if path is None:
                path = _escape(target) if target.translate(None, safe) else target.decode("latin-1")
                if len(target) <= _REMEMBER_TARGET:
                    _remember(targets, target, path)
            # the durations' ``:.3f`` from the whole microseconds (`_ms3`), where exact
            duration = ex.duration
            u = duration * 1e6 + 0.5
            try:
                if duration > 0.0 and tie < u - (n := floor(u)) < untie:
                    ms, ms3 = ints[n // 1000], fracs[n % 1000]
                else:
                    ms, ms3 = _text_ms(duration), ""
            except (IndexError, OverflowError):  # a second or more (past `ints`), infinite
                ms, ms3 = _text_ms(duration), ""
            up_duration = ex.upstream_duration
            u = up_duration * 1e6 + 0.5
            try:
                if up_duration > 0.0 and tie < u - (n := floor(u)) < untie:
                    up, up3 = ints[n // 1000], fracs[n % 1000]
                else:
                    up, up3 = _text_ms(up_duration) if up_duration else "-", ""
            except (IndexError, OverflowError):
                up, up3 = _text_ms(up_duration), ""
            status = ex.status
            preview = ex.preview
            error = ex.error_kind
            add(
                f"{second}{millis}{ex.conn.peer_ip or '-'} {verb}{path}"
                f"{_TEXT_HTTP11 if ex.http11 else _TEXT_HTTP10}"
                f"{codes[status] if 0 <= status < 1000 else status} {ex.bytes_out} "
                f"{ms}{ms3}{routing}{up}{up3} rid={ex.request_id.decode('latin-1') or '-'}{rev}"
                f"{_text_end(preview, error) if preview or error else ''}"
            )
        self._snapshot, self._text_rev = last_snap, rev
        self._span = (second, millis, lo, hi, sec_lo, sec_hi)
        add("")
        return "\n".join(out)

    def _json_lines(self, rows: list[Row]) -> str:
        """The JSON lines of ``rows``, each with its newline: what
        ``json.dumps({"logger": ..., **self.fields(ex)})`` writes, at a fraction of the cost.

        As in `_text_lines`, what lines share is formatted once, here with the keys around it,
        so a line is a dozen pieces: the start up to the client (per millisecond), the client
        (per address), the method, the routing part with the upstream status (per
        combination), and the end from the revision on (per revision, error and listener)."""
        out: list[str] = []
        add = out.append
        q, ints, fracs = _quote, _CODES, _JSON_FRACS
        ends, millis_of, tie, untie = _SPAN_ENDS, _JSON_MILLIS, _TIE, _UNTIE
        second, millis, lo, hi, sec_lo, sec_hi = self._span
        head, head_second = self._json_head, self._json_head_second
        last_snap, rev = self._snapshot, self._rev
        methods, routed, peers, tails, targets = (
            self._json_methods, self._json_routed, self._json_peers, self._json_tails,
            self._json_targets,
        )  # fmt: skip
        for now, ex in rows:
            if not lo <= now < hi:  # another millisecond (or near the edge of one)
                if sec_lo <= now < sec_hi:  # of the same second: `_stamp_span`'s first step
                    k = floor((now - sec_lo) * 1000.0)
                    millis, lo, hi = millis_of[k], now, sec_lo + ends[k]
                else:
                    when, lo, hi = self._stamp_span(now)
                    second, millis = self._stamp, f'{when[-5:]}","client":'
                    sec_lo, sec_hi = self._second_span
                    if second is not head_second:
                        head_second = second
                        head = f'{{"logger":"{ACCESS_LOGGER}","time":"{second}'
            snap = ex.snapshot
            if snap is not last_snap:
                last_snap, rev = snap, q(snap.revision) if snap is not None else "null"
            peer = ex.conn.peer_ip
            client = peers.get(peer)
            if client is None:
                client = _remember(peers, peer, q(peer) if peer else "null")
            method = ex.method
            verb = methods.get(method)
            if verb is None:
                verb = f',"method":{q(method.decode("latin-1"))},"path":'
                verb = _remember(methods, method, verb)
            route = ex.route
            decision = ex.decision
            up_status = ex.upstream_status
            key = (
                route.name if route is not None else None, ex.version,
                decision.reason if decision is not None else None, ex.upstream_url, up_status,
            )  # fmt: skip
            routing = routed.get(key)
            if routing is None:
                routing = _remember(
                    routed, key,
                    f"{_json_routing(*key[:4])},"
                    f'"upstream_status":{up_status or "null"},"upstream_duration_ms":',
                )  # fmt: skip
            error = ex.error_kind
            preview = ex.preview
            end = (rev, error, preview)
            tail = tails.get(end)
            if tail is None:
                tail = _remember(
                    tails, end,
                    f',"config_revision":{rev},"error":{q(error) if error else "null"}'
                    f"{_PREVIEW_JSON if preview else ''}}}",
                )  # fmt: skip
            target = ex.target
            path = targets.get(target)
            if path is None:
                path = q(target.decode("latin-1"))
                if len(target) <= _REMEMBER_TARGET:
                    _remember(targets, target, path)
            # repr(round(x, 3)) without its cost (`_json_ms`), from the whole microseconds
            # where exact (as in `_text_lines`)
            duration = ex.duration
            u = duration * 1e6 + 0.5
            try:
                if duration > 0.0 and tie < u - (n := floor(u)) < untie:
                    ms, ms3 = ints[n // 1000], fracs[n % 1000]
                else:
                    ms, ms3 = _json_ms(duration), ""
            except (IndexError, OverflowError):  # a second or more (past `ints`), infinite
                ms, ms3 = _json_ms(duration), ""
            up_duration = ex.upstream_duration
            u = up_duration * 1e6 + 0.5
            try:
                if up_duration > 0.0 and tie < u - (n := floor(u)) < untie:
                    up, up3 = ints[n // 1000], fracs[n % 1000]
                else:
                    up, up3 = _json_ms(up_duration) if up_duration else "null", ""
            except (IndexError, OverflowError):
                up, up3 = _json_ms(up_duration), ""
            rid = ex.request_id
            add(
                f"{head}{millis}{client}{verb}{path}"
                f"{_JSON_HTTP11 if ex.http11 else _JSON_HTTP10}{ex.status}"
                f',"bytes":{ex.bytes_out},"duration_ms":{ms}{ms3},{routing}{up}{up3}'
                f',"request_id":{q(rid.decode("latin-1")) if rid else "null"}{tail}'
            )
        self._snapshot, self._rev = last_snap, rev
        self._json_head, self._json_head_second = head, head_second
        self._span = (second, millis, lo, hi, sec_lo, sec_hi)
        add("")
        return "\n".join(out)

    def _stamp_span(self, now: float) -> tuple[str, float, float]:
        """``now``'s time stamp (what `_clock_text` gives) and an interval ``[now, hi)`` of
        clock values that surely have the same one: the lines that follow within it take the
        text with two float comparisons, where `_clock_text`'s two ``int()`` conversions cost
        about a tenth of a line.

        ``hi`` stops `_SPAN_MARGIN` short of the next millisecond, further than the float
        arithmetic here can err (within a second, a clock value's millisecond never decreases
        as the value grows, so every value between ``now`` and ``hi`` has ``now``'s). A new
        millisecond of the same second costs a subtraction, a product and a ``floor`` (the
        ``int()`` of a non-negative number); clocks the interval does not cover (before
        second 1, from `_SPAN_SECONDS` on, not a number) get an empty one."""
        start, end = self._second_span
        if start <= now < end:
            # (`now - start` is exact: below one and a multiple of `now`'s spacing)
            ms = floor((now - start) * 1000)
            return self._stamp + _MILLIS[ms], now, start + _SPAN_ENDS[ms]
        when = self._clock_text(now)
        start, end = self._second_span
        if start <= now < end:
            return when, now, start + _SPAN_ENDS[self._ms]
        return when, 1.0, 0.0

    def _clock_text(self, now: float) -> str:
        """``now`` as the line writes it; the lines of one millisecond share the text."""
        second = int(now)
        ms = int((now - second) * 1000)
        if ms != self._ms or second != self._second:
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second_span = (
                    (float(second), float(second + 1)) if 1 <= second < _SPAN_SECONDS else _NO_SPAN
                )
            self._ms = ms
            self._when = self._stamp + _MILLIS[ms]
        return self._when

    def log(self, ex: Exchange) -> None:
        """Keep the exchange and its time; its line is formatted and handed over with the
        others of its batch (`_schedule`; without a running loop, at once)."""
        # (`_capture`, inlined: test_observer_shortcuts.py checks that both keep the same row)
        pending = self._pending
        pending.append((self.clock(), ex))
        n = len(pending)
        if n == 1:
            self._schedule()
        elif n >= _HAND_OVER_LINES:
            self.flush()

    def _schedule(self) -> None:
        """Have the loop hand the lines over: after `_HAND_OVER` s when a writer thread
        writes them (the thread waits that long for more anyway), at the next loop pass for
        a stream without a descriptor (written at once: a caller reads it after the pass);
        at once without a running loop."""
        loop = self._loop
        if loop is None or not loop.is_running():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self._loop = None
                self.flush()
                return
        elif self._due:  # a hand-over is already due on this loop: it takes these too
            return
        self._due = True
        if self.writer.fd is None:
            loop.call_soon(self._hand_over)
        else:
            loop.call_later(_HAND_OVER, self._hand_over)

    def _hand_over(self) -> None:
        self._due = False
        self.flush()

    def flush(self) -> None:
        """Format the lines kept so far and hand them to the writer as one text."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self.writer.write(self._format(pending), len(pending))

    def close(self, timeout: float = 2.0) -> None:
        """Write what is kept and queued, waiting at most ``timeout`` s for the stream."""
        self.flush()
        self.writer.close(timeout)


class Observers:
    """Fans one exchange out to the recorder and the access log.

    The data path no longer goes through it: an exchange tells the recorder and then the access
    log itself (`ProxyContext.log`), one Python call fewer per request. It stays as one object
    for whoever wants both (benchmarks, tests), and as the order the data path is held to
    (`tests/unit/dataplane/test_finish_fanout.py`).

    What only the recorder hears (``exchange_started``, ``attempt_failed``) is the recorder's
    own bound method, not a method of this class that calls it: one Python call per event
    instead of two."""

    exchange_started: Callable[[Exchange], None]
    attempt_failed: Callable[[Exchange, Version, FailureKind], None]

    def __init__(self, recorder: ExchangeObserver, access_log: AccessLog | None) -> None:
        self.recorder = recorder
        self.access_log = access_log
        self.exchange_started = recorder.exchange_started
        self.attempt_failed = recorder.attempt_failed
        self._finished = recorder.exchange_finished
        self._log = access_log.log if access_log is not None else None

    def exchange_finished(self, ex: Exchange) -> None:
        self._finished(ex)
        log = self._log
        if log is not None:
            log(ex)
