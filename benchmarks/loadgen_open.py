#!/usr/bin/env python3
"""Open-loop (constant arrival rate) HTTP/1.1 load generator, a small stand-in for wrk2.

Request i is due at t0 + i/rate whatever happened to earlier requests. Two latencies are
kept per request:
  * from its *intended* time (p50_us, p99_us, ...): a stall in the server shows up as
    queueing delay instead of being hidden (no coordinated omission, as wrk2);
  * from the moment it was actually written (svc_p50_us, ...): service time, free of this
    generator's own timer jitter (asyncio timers tick in ~1 ms steps, so requests go out
    in small per-tick batches; send_lag_* reports that lag).
Requests go out on keep-alive connections; when none is idle a new one is opened (up to
--max-conns), past that they queue. Loopback targets only; bounded by --duration plus
--drain seconds.

usage: loadgen_open.py --host 127.0.0.1 --port 18081 --path /1k --rate 2000 --duration 10 \
           [--header 'Cookie: splitproxy_id=bench-user-1']
prints one line: OPENJSON {...}   (latencies in microseconds)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import math
import socket
import sys
import time
from array import array
from typing import Any, cast

perf = time.perf_counter
Item = tuple[float, bool]  # (intended send time, record it)


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    tr: asyncio.Transport

    def __init__(self, gen: Gen) -> None:
        self.gen, self.buf = gen, bytearray()
        self.inflight: Item | None = None
        self.t_sent = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.remaining: int | None = None
        self.chunked = False
        self.close_after = False

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        self.tr = cast(asyncio.Transport, tr)  # uvloop's transports do not subclass it

    def send(self, item: Item) -> None:
        self.inflight = item
        self.t_sent = perf()
        self.tr.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.inflight is not None:
            if not self._parse():
                return

    def _parse(self) -> bool:
        """Consume what we can; True when a whole response was consumed."""
        buf = self.buf
        if self.status is None:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return False
            head = bytes(buf[:i]).split(b"\r\n")
            del buf[: i + 4]
            self.status = int(head[0].split(b" ", 2)[1])
            self.remaining = 0
            for line in head[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    self.remaining = int(v)
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    self.chunked, self.remaining = True, None
                elif k == b"connection" and b"close" in v.lower():
                    self.close_after = True
        if self.chunked:
            while True:
                if self.remaining is None:  # expecting a chunk-size line
                    j = buf.find(b"\r\n")
                    if j < 0:
                        return False
                    size = int(bytes(buf[:j]).split(b";")[0], 16)
                    del buf[: j + 2]
                    if size == 0:  # last chunk; skip (empty) trailers
                        self.remaining = -1
                    else:
                        self.remaining = size + 2  # data + CRLF
                if self.remaining == -1:
                    j = buf.find(b"\r\n")
                    if j < 0:
                        return False
                    del buf[: j + 2]
                    if j == 0:
                        break
                    continue
                n = min(self.remaining, len(buf))
                del buf[:n]
                self.remaining -= n
                if self.remaining:
                    return False
                self.remaining = None
        else:
            n = min(self.remaining or 0, len(buf))
            del buf[:n]
            self.remaining = (self.remaining or 0) - n
            if self.remaining:
                return False
        status, close, item = self.status, self.close_after, self.inflight
        assert status is not None
        assert item is not None
        self._reset()
        self.inflight = None
        self.gen.done(self, status, item, self.t_sent, close)
        if close:
            self.tr.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class Gen:
    stopping = False

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        extra = "".join(h.strip() + "\r\n" for h in a.header)
        self.request = (
            f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
            f"User-Agent: loadgen_open\r\n{extra}\r\n"
        ).encode()
        self.idle: list[Conn] = []
        self.backlog: collections.deque[Item] = collections.deque()
        self.conns: set[Conn] = set()
        self.connecting = 0
        self.tasks: set[asyncio.Future[None]] = set()
        self.lat = array("d")
        self.svc = array("d")
        self.lag = array("d")
        self.status: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.opened = 0
        self.max_backlog = 0
        self.outstanding = 0

    async def _open(self) -> Conn | None:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, c = await loop.create_connection(lambda: Conn(self), self.a.host, self.a.port)
            c.tr.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self.errors["connect"] += 1
            return None
        finally:
            self.connecting -= 1
        self.conns.add(c)
        self.opened += 1
        return c

    async def _open_and_send(self, item: Item) -> None:
        c = await self._open()
        if c is None:
            self.outstanding -= 1
            return
        self._next(c, item)

    def _next(self, c: Conn, item: Item | None = None) -> None:
        if item is None and self.backlog:
            item = self.backlog.popleft()
        if item is None:
            self.idle.append(c)
        else:
            c.send(item)

    def dispatch(self, item: Item) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(item)
        elif len(self.conns) + self.connecting < self.a.max_conns:
            task = asyncio.ensure_future(self._open_and_send(item))
            self.tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self.tasks.discard)
        else:
            self.backlog.append(item)
            self.max_backlog = max(self.max_backlog, len(self.backlog))

    def done(self, c: Conn, status: int, item: Item, t_sent: float, close: bool) -> None:
        t = perf()
        self.outstanding -= 1
        t_int, record = item
        if record:
            self.lat.append(t - t_int)
            self.svc.append(t - t_sent)
            self.lag.append(t_sent - t_int)
            self.status[status] += 1
        if not close:
            self._next(c)

    def lost(self, c: Conn) -> None:
        self.conns.discard(c)
        if c in self.idle:
            self.idle.remove(c)
        if c.inflight is not None:
            self.outstanding -= 1
            self.errors["conn_lost"] += 1
            c.inflight = None
        if self.backlog and not self.stopping:
            item = self.backlog.popleft()
            self.outstanding -= 1
            self.dispatch(item)

    async def run(self) -> tuple[int, float, float, int]:
        a = self.a
        for c in await asyncio.gather(*(self._open() for _ in range(a.preconnect))):
            if c is not None:
                self.idle.append(c)
        total = round(a.rate * a.duration)
        t0 = perf() + 0.01
        i = 0
        while i < total:
            due = min(total, int((perf() - t0) * a.rate) + 1)
            while i < due:
                self.dispatch((t0 + i / a.rate, True))
                i += 1
            delay = t0 + i / a.rate - perf()
            # event-loop timers have ~1 ms granularity; never spin on 0-delay sleeps
            await asyncio.sleep(delay if delay > 0.001 else 0.001)
        t_sent = perf()
        deadline = t_sent + a.drain
        while self.outstanding > 0 and perf() < deadline:  # noqa: ASYNC110 (bounded poll)
            await asyncio.sleep(0.005)
        self.stopping = True
        unfinished = self.outstanding
        for c in list(self.conns):
            c.tr.close()
        await asyncio.sleep(0.05)
        return total, t0, t_sent, unfinished


def pct(sorted_vals: list[float], q: float) -> float | None:
    """nearest-rank percentile"""
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def us(v: float | None) -> float | None:
    return None if v is None else round(v * 1e6, 1)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ok")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--preconnect", type=int, default=8)
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for stragglers")
    p.add_argument("--header", action="append", default=[], help="extra request header line")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args()
    if not ipaddress.ip_address(socket.gethostbyname(a.host)).is_loopback:
        sys.exit("loadgen_open: refusing a non-loopback target")
    if a.duration > 600:
        sys.exit("loadgen_open: duration capped at 600 s")
    g = Gen(a)
    if a.no_uvloop:
        total, t0, t_sent, unfinished = asyncio.run(g.run())
    else:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        total, t0, t_sent, unfinished = uvloop.run(g.run())
    lat, svc, lag = sorted(g.lat), sorted(g.svc), sorted(g.lag)
    ok = sum(n for s, n in g.status.items() if 200 <= s < 300)
    out: dict[str, Any] = {
        "target_rate": a.rate,
        "duration_s": a.duration,
        "scheduled": total,
        "completed": len(lat),
        "ok_2xx": ok,
        "non_2xx": len(lat) - ok,
        "unfinished": unfinished,
        "errors": dict(g.errors),
        "achieved_rps": round(len(lat) / max(1e-9, (t_sent - t0)), 1),
        "send_lag_ms": round((t_sent - (t0 + (total - 1) / a.rate)) * 1e3, 2),
        "connections_opened": g.opened,
        "max_backlog": g.max_backlog,
        "lat_mean_us": us(sum(lat) / len(lat)) if lat else None,
        "p50_us": us(pct(lat, 50)),
        "p90_us": us(pct(lat, 90)),
        "p99_us": us(pct(lat, 99)),
        "p999_us": us(pct(lat, 99.9)),
        "lat_max_us": us(lat[-1] if lat else None),
        "svc_mean_us": us(sum(svc) / len(svc)) if svc else None,
        "svc_p50_us": us(pct(svc, 50)),
        "svc_p90_us": us(pct(svc, 90)),
        "svc_p99_us": us(pct(svc, 99)),
        "svc_p999_us": us(pct(svc, 99.9)),
        "svc_max_us": us(svc[-1] if svc else None),
        "send_lag_p50_us": us(pct(lag, 50)),
        "send_lag_p99_us": us(pct(lag, 99)),
    }
    print("OPENJSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
