"""splitproxy with the recorder's per-exchange verbs turned into no-ops: what metrics cost.

Benchmark only: the same command line as ``python -m splitproxy``; /metrics still answers,
with every request counter at zero.
"""

from __future__ import annotations

import sys

from splitproxy import metrics
from splitproxy.cli import main


def _nothing(self: metrics.Recorder, *args: object) -> None:
    return None


for verb in ("exchange_started", "exchange_finished", "attempt_failed"):
    setattr(metrics.Recorder, verb, _nothing)

sys.exit(main())
