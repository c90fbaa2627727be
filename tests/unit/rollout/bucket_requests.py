"""Requests as a live window observes them, drawn by hypothesis: the input of the tests that
hold the controller's bucket paths (samples, tally) to the `Period` path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE
from splitproxy.rollout.windows import Window

PATHS = ["/api/users/7", "/api/orders", "/static/x.js", "/", "/a/b", "/x1", "/x2", "/x3", None]
REQUEST = st.tuples(
    st.floats(0.0, 6.0),  # seconds after the start (buckets of 1 s)
    st.sampled_from([STABLE, CANDIDATE]),
    st.none() | st.floats(0.0001, 5.0),  # latency
    st.booleans(),  # error
    st.sampled_from([0, 0, 0, 1]),  # which of the second's two probabilities
    st.sampled_from(PATHS),
    st.booleans(),  # synthetic
    st.none() | st.integers(0, 6),  # sticky user
)


def observe_requests(
    window: Window, t0: float, requests: Sequence[Any], probabilities: Sequence[float | None]
) -> None:
    """Each of ``requests`` (drawn from `REQUEST`), in time order, observed by ``window`` at
    ``t0`` plus its time, routed with its second's probability (two per second)."""
    for at, version, latency, error, which, path, synthetic, unit in sorted(
        requests, key=lambda r: r[0]
    ):
        p = probabilities[2 * int(at) + which]  # mostly one per second: buckets of many
        window.observe(
            t0 + at,
            STABLE if version == STABLE else CANDIDATE,
            latency,
            error,
            p,
            path,
            "/",
            synthetic=synthetic,
            unit=unit,
        )
