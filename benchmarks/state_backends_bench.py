"""Rollout state backends: the time to save and to load one route's document, files vs Redis.

A document the size of a busy route's (``--kb``, default 200 KiB of ledger) is saved and loaded
``--rounds`` times through `StateStore` (a temporary directory, fsync per save) and through
`RedisStateStore` (a ``redis-server`` on loopback started here, append-only with an fsync per
write, as the tests run it). Prints the median and the 95th percentile per operation.

    .venv/bin/python benchmarks/state_backends_bench.py [--rounds 200] [--kb 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitproxy.replicas.redisstore import RedisStateStore
from splitproxy.rollout.store import StateBackend, StateStore
from tests.helpers import held_port
from tests.redis_server import RedisServer


def document(kb: int) -> dict[str, Any]:
    entry = {"kind": "step", "at": 1_700_000_000.0, "message": "x" * 160}
    return {"format": 1, "route": "shop", "ledger": [entry] * (kb * 1024 // 200)}


def timed(op: Callable[[], object], rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        op()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def run(name: str, store: StateBackend, doc: dict[str, Any], rounds: int) -> None:
    save = timed(lambda: store.save("shop", doc, 1), rounds)
    load = timed(lambda: store.load("shop"), rounds)
    print(f"{name:6} save median {save[0]:6.2f} ms p95 {save[1]:6.2f} ms | "
          f"load median {load[0]:6.2f} ms p95 {load[1]:6.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--kb", type=int, default=200)
    args = parser.parse_args()
    doc = document(args.kb)
    with tempfile.TemporaryDirectory() as tmp:
        run("files", StateStore(Path(tmp) / "state"), doc, args.rounds)
        with held_port() as held:  # held until the server has bound it
            server = RedisServer(Path(tmp) / "redis", int(held.getsockname()[1]))
            server.start()
        try:
            redis_store = RedisStateStore(server.url, "bench")
            run("redis", redis_store, doc, args.rounds)
            redis_store.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
