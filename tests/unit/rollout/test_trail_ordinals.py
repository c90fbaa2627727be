"""Stable's trailing sum keyed by ordinals, and the one pass over a sketch's bins.

- `histograms.ordinal` orders as the floats do (any two non-NaN floats), and `from_ordinal`
  gives the float back bit for bit; `sketch.ORDINALS`, `bound_of` and `ordinal_of` are the
  same numbers, looked up for the sketches' layout;
- `trailing.trail_sketch` adds a sketch's bins to its slot as `trail_pairs` adds its histogram
  (the same slots, the same sum once they close) and counts, on the way, what
  `histograms.slow_counts` counts over the histogram; the tally's `_window_add` is
  `hist_merge` and `slow_counts` of the candidate's histogram;
- `codec` saves the sum's bounds as floats, as before: any bound (not only the layout's,
  subnormal or infinite) comes back bit for bit, a document saved before reads the same, and a
  NaN bound (no order, so no bucket) is refused.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.rollout import sketch
from splitproxy.rollout.codec import _decode_evidence, _encode_evidence, decode, encode
from splitproxy.rollout.evidence import Evidence
from splitproxy.rollout.histograms import (
    from_ordinal,
    hist_add,
    hist_merge,
    hist_quantiles,
    ordinal,
    slow_counts,
)
from splitproxy.rollout.sketch import LatencySketch, bound_of, ordinal_of
from splitproxy.rollout.tally import _window_add
from splitproxy.rollout.trailing import (
    ABOVE_ALL,
    trail_add,
    trail_begin,
    trail_end,
    trail_quantiles,
    trail_sketch,
)
from tests.unit.rollout.drive import spec
from tests.unit.rollout.test_trailing import by_bound

FLOATS = st.floats(allow_nan=False)


@given(FLOATS, FLOATS)
def test_ordinals_order_as_their_floats_and_give_them_back(a: float, b: float) -> None:
    assert (ordinal(a) < ordinal(b)) == (a < b)
    assert (ordinal(a) == ordinal(b)) == (a == b)  # -0.0 and 0.0 alike
    assert ordinal(a) < ABOVE_ALL
    back = from_ordinal(ordinal(a))
    assert back == a
    assert math.copysign(1.0, back) == math.copysign(1.0, a) or a == 0.0
    assert ordinal_of(a) == ordinal(a)
    assert bound_of(ordinal(a)) == a


def test_the_layouts_ordinals_are_its_bounds() -> None:
    for key, bound in sketch.BOUNDS.items():
        assert sketch.ORDINALS[key] == ordinal(bound) == ordinal_of(bound)
        assert bound_of(sketch.ORDINALS[key]) == bound
    keys = sorted(sketch.BOUNDS)
    assert [sketch.ORDINALS[k] for k in keys] == sorted(sketch.ORDINALS[k] for k in keys)
    assert sketch.ORDINALS[10_000] == ordinal(sketch.BOUNDS[10_000])  # a key set by hand


def _evidence() -> Evidence:
    e = Evidence(spec(checks=[{"metric": "latency", "compare": "stable"}]), path_class_slots=2)
    e.fresh_tests()
    return e


LATENCIES = st.lists(st.floats(1e-7, 2e5, allow_nan=False), min_size=1, max_size=40)
CUTS = st.lists(st.floats(1e-6, 1e5), max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.0, 1.0, 4.0, 30.0]), LATENCIES), max_size=12),
    CUTS,
    st.lists(st.sampled_from([0.5, 0.9, 0.95, 0.99]), max_size=3),
)
def test_a_sketch_adds_up_as_its_histogram_and_counts_its_slow_requests(
    ticks: list[tuple[float, list[float]]], cuts: list[float], qs: list[float]
) -> None:
    """Over ticks (slots opening, quantiles kept between them): one `Evidence` fed the
    sketches, one their histograms; the same trail, the same quantiles, and the slow counts of
    each sketch those of its histogram."""
    by_sketch, by_pairs = _evidence(), _evidence()
    limits = [(0.5 + k / 10, c) for k, c in enumerate(cuts)]
    now = 0.0
    for gap, latencies in ticks:
        now += gap
        s = LatencySketch()
        for value in latencies:
            s.add(value)
        tick = trail_begin(by_sketch, now)
        above = [0] * len(cuts)
        ords = [ordinal(c) for c in cuts]
        trail_sketch(tick, s.bins, ords, min(ords, default=ABOVE_ALL), above)
        trail_end(by_sketch, now, s.count, 0, tick)
        trail_add(by_pairs, now, s.count, 0, [s.histogram()])
        wanted = slow_counts(s.histogram(), limits, min(cuts, default=0.0))
        assert [(limits[j][0], n) for j, n in enumerate(above) if n] == wanted
        assert by_bound(by_sketch.trail_total) == by_bound(by_pairs.trail_total)
        assert _encode_evidence(by_sketch) == _encode_evidence(by_pairs)
        assert by_sketch.trail_open == by_pairs.trail_open
        assert trail_quantiles(by_sketch, qs) == trail_quantiles(by_pairs, qs)
        assert trail_quantiles(by_sketch, qs) == hist_quantiles(by_bound(by_sketch.trail_total), qs)


LAYOUT = st.sampled_from(list(sketch.BOUNDS.values()))


@given(LATENCIES, CUTS, st.dictionaries(LAYOUT, st.integers(1, 9)))
def test_the_window_takes_a_sketch_as_hist_merge_and_slow_counts_did(
    latencies: list[float], cuts: list[float], window: dict[float, int]
) -> None:
    s = LatencySketch()
    for value in latencies:
        s.add(value)
    limits = [(0.5 + k / 10, c) for k, c in enumerate(cuts)]
    got, want = dict(window), dict(window)
    above = [0] * len(cuts)
    _window_add(got, s.bins, cuts, min(cuts, default=math.inf), above)
    hist_merge(want, s.histogram())
    assert got == want
    wanted = slow_counts(s.histogram(), limits, min(cuts, default=0.0))
    assert [(limits[j][0], n) for j, n in enumerate(above) if n] == wanted


BOUNDS_ANY = st.one_of(
    st.sampled_from(list(sketch.BOUNDS.values())),
    st.floats(0.0, math.inf, allow_nan=False, exclude_min=True),  # subnormal to infinite
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.dictionaries(BOUNDS_ANY, st.integers(1, 500), max_size=6), min_size=1, max_size=8)
)
def test_any_bound_saved_comes_back_bit_for_bit(hists: list[dict[float, int]]) -> None:
    e = _evidence()
    for k, h in enumerate(hists):  # a slot each, and one slot written out mid-slot
        trail_add(e, 10.0 * k, sum(h.values()), 0, [list(h.items())])
    saved = json.loads(json.dumps(_encode_evidence(e)))
    total: dict[float, int] = {}  # the closed slots' (the last saved is read as open)
    for h in [h for h in hists if h][:-1]:
        hist_add(total, h.items())
    assert [dict(map(tuple, h)) for _, _, h in saved["trail"]] == [h for h in hists if h]
    again = copy.copy(e)
    again.trail, again.trail_total, again.trail_requests = [], {}, 0
    _decode_evidence(again, saved)
    assert by_bound(again.trail_total) == total
    assert _encode_evidence(again) == saved
    qs = [0.5, 0.95, 0.99]
    assert trail_quantiles(again, qs) == hist_quantiles(total, qs) == trail_quantiles(e, qs)


def test_a_state_saved_before_the_ordinals_reads_and_saves_the_same() -> None:
    """``data/analyzer_state_trail.json``: saved by the code before this change (stable's
    trailing history of real sketches, mid-slot, thresholds in), with the thresholds it drew
    over every slot. Since the tenth round the saved slot still open (the last) joins the sum
    when the next tick's slot is a later one: from then on, the same thresholds."""
    saved = json.loads((Path(__file__).parent / "data" / "analyzer_state_trail.json").read_text())
    thresholds = {float(q): c for q, c in saved.pop("thresholds_then").items()}
    rollout = spec(checks=[{"metric": "latency", "compare": "stable"}])
    a = decode("shop", rollout, saved)
    e = a.evidence
    assert e.trail_open
    closed: dict[float, int] = {}
    for _, _, hist in saved["trail"][:-1]:
        hist_add(closed, [(b, c) for b, c in hist])
    assert by_bound(e.trail_total) == closed
    assert e._latency_thresholds() == hist_quantiles(closed, [0.95, 0.99])
    assert json.loads(json.dumps(encode(a))) == saved
    e.fold(saved["trail"][-1][0] + 10.0, [], tests=False)  # the next slot's first tick
    assert e.thresholds == thresholds


def test_a_nan_bound_is_refused() -> None:
    e = _evidence()
    trail_add(e, 0.0, 10, 0, [[(0.1, 10)]])
    saved = json.loads(json.dumps(_encode_evidence(e)))
    saved["trail"][0][2][0][0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        _decode_evidence(_evidence(), saved)
