"""The bucket decoders' quick paths (the usual path class, the usual sketch bin, the classes'
sums taken as they are read) accept and refuse exactly what every check made one by one does,
with the same reason."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.replicas import wire
from splitproxy.replicas.wire import MAX_BIN, MAX_COUNT, MIN_BIN, WireError
from splitproxy.rollout.sketch import MAX_BINS, LatencySketch

# values around every bound a check has, and of every JSON type
numbers = st.one_of(
    st.sampled_from([0, 1, 2, 3, -1, MAX_COUNT, MAX_COUNT + 1, MIN_BIN, MAX_BIN, MAX_BIN + 1]),
    st.integers(-5, 40),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=5),
    st.none(),
    st.text(max_size=3),
)
names = st.one_of(st.sampled_from(["/", "/api", "x" * 2048, "x" * 2049]), numbers)
ids = st.lists(st.one_of(st.integers(0, 6), numbers), max_size=3)


@st.composite
def near(draw: st.DrawFn, valid: st.SearchStrategy[list[Any]]) -> Any:
    """A value of ``valid``, often with one item made odd (any type, any bound)."""
    items: list[Any] = draw(valid)
    odd: bool = draw(st.booleans())
    if items and odd:
        where: int = draw(st.integers(0, len(items) - 1))
        items[where] = draw(numbers)
    return items


# six small counts in any order (so every "of" check is crossed), sometimes one odd, or
# a list of the wrong length
counts = st.one_of(
    near(st.lists(st.integers(0, 6), min_size=6, max_size=6)),
    st.lists(st.integers(0, 6), min_size=5, max_size=7),
    numbers,
)
class_docs = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["/", "/api"]), "counts": counts}),
    st.fixed_dictionaries(
        {"name": names, "counts": counts},
        optional={"units": st.one_of(st.lists(ids, max_size=3), numbers), "extra": numbers},
    ),
)


def outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except WireError as exc:
        return ("refused", str(exc))


@settings(max_examples=600, deadline=None)
@given(st.one_of(class_docs, numbers), st.sets(st.integers(0, 6)))
def test_a_class_decodes_as_every_check_says(doc: Any, stable_seen: set[int]) -> None:
    quick_seen: tuple[set[int], set[int]] = (set(stable_seen), set())
    checked_seen: tuple[set[int], set[int]] = (set(stable_seen), set())
    quick = outcome(lambda: wire._decode_class(doc, "p", 3, quick_seen))
    checked = outcome(lambda: wire._checked_class(doc, "p.classes[3]", checked_seen))
    assert quick == checked
    assert quick_seen == checked_seen


def sketch_one_by_one(data: Any, where: str = "latency") -> LatencySketch:
    """The sketch decoder with every bin checked one by one (as it was before its quick path)."""
    doc = wire._object(data, where, frozenset({"bins", "sum"}))
    sketch = LatencySketch()
    for i, pair in enumerate(wire._list(doc["bins"], f"{where}.bins", MAX_BINS)):
        key, n = wire._checked_bin(pair, f"{where}.bins[{i}]", sketch.bins)
        sketch.bins[key] = n
    sketch.count = sum(sketch.bins.values())
    if sketch.count > MAX_COUNT:
        raise WireError(f"{where}: {sketch.count} latencies, over the limit of {MAX_COUNT}")
    sketch.total = wire._number(doc["sum"], f"{where}.sum", 0.0)
    return sketch


# keys from a few (so some come twice), near the bounds, counts around 0
keys = st.sampled_from([0, 1, 2, MIN_BIN, MAX_BIN, MIN_BIN - 1, MAX_BIN + 1])
pair = near(st.tuples(keys, st.integers(0, 2)).map(list))
bins = st.lists(st.one_of(pair, pair, st.lists(numbers, max_size=3), numbers), max_size=6)


@settings(max_examples=600, deadline=None)
@given(bins, st.one_of(st.floats(0, 10), numbers))
def test_a_sketch_decodes_as_every_check_says(pairs: list[Any], total: Any) -> None:
    doc = {"bins": pairs, "sum": total}

    def state(sketch: LatencySketch) -> Any:
        return (sketch.bins, sketch.count, sketch.total)

    quick = outcome(lambda: state(wire.decode_sketch(doc)))
    assert quick == outcome(lambda: state(sketch_one_by_one(doc)))
