"""The comparisons' and the guard's detail texts, made once per input (`evidence`), read as
the formatting written out in full would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from splitproxy.rollout.evidence import guard_detail, latency_detail

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
QUANTILES = st.sampled_from([0.5, 0.9, 0.95, 0.99, 0.999]) | st.floats(0, 1)


def _latency_detail(thresholds: dict[float, float], tolerance: float) -> str:
    detail = ", ".join(f"stable p{q * 100:g} {c * 1000:.4g}ms" for q, c in thresholds.items())
    if thresholds and tolerance:
        detail += f", slow beyond +{tolerance * 100:g}%"
    return detail


@given(
    st.dictionaries(QUANTILES, st.floats(0, 100) | FLOATS, max_size=3),
    st.sampled_from([0.0, -0.0, 0.1, 0.25]) | st.integers(0, 2) | FLOATS,
)
def test_the_latency_detail_is_the_formatting(
    thresholds: dict[float, float], tolerance: float
) -> None:
    for _ in range(2):  # made, then kept
        assert latency_detail(tuple(thresholds.items()), tolerance) == _latency_detail(
            thresholds, tolerance
        )


@given(st.floats(0, 1) | st.sampled_from([0.05, 1e-9, 0.5]))
def test_the_guard_detail_is_the_formatting(cap: float) -> None:
    for _ in range(2):
        assert guard_detail(cap) == f"candidate error rate far above {cap:g}"


def test_a_zeros_sign_is_its_own_text() -> None:
    """``0.0`` and ``-0.0`` are equal keys to the cache: each still reads as its formatting
    (hypothesis met them in turn in one worker, the second read the first's text)."""
    assert latency_detail(((0.5, -0.0),), 0.0) == "stable p50 -0ms"
    assert latency_detail(((0.5, 0.0),), 0.0) == "stable p50 0ms"
    assert latency_detail(((-0.0, 0.25),), 0.0) == "stable p-0 250ms"
    assert latency_detail(((0.0, 0.25),), 0.0) == "stable p0 250ms"
