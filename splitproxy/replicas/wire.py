"""What replicas write to Redis for each other, as JSON, read back as hostile input (pure).

Redis is shared: anything another process (another version of splitproxy, an operator with
``redis-cli``, a bug) left there is input. So every decoder here checks types, signs, bounds
and consistency before it builds a value, and refuses with `WireError` and the reason (a
field path and what is wrong), never with another exception and never after allocating more
than the bounds below allow. Encoders write exactly what the decoders accept.

Documents carry a format version ``"v"`` (`FORMAT`; another version is refused,
``kind = "format"``):

*A harvest* (`encode_harvest`, `decode_harvest`): the closed live-window buckets of one
replica (`rollout.windows.Period`, by route), the tallies of its mirrored copies' answers
(`rollout.mirrored.MirrorTally`), complete up to a watermark (Unix time), a follower's A/B
events and the leader's word on the A/B tests (`dataplane.abpool`)::

    {"v": 1, "watermark": 1700000000.25,
     "periods": {"<route>": [<period>, ...]}, "mirrors": {"<route>": <tally>},
     "ab": {"<route>": {"test": 1700000000.0, "events": [[user, kind, value], ...],
                        "untracked": 0}},
     "ab_lead": {"epoch": <fencing token>, "tests": {"<route>": 1700000000.0}}}

An A/B event's user is a 64-bit keyed hash (no user identifier is written); `abwire.py`.

A period is ``{"start", "end", "probability", "stable", "candidate", "classes",
"synthetic_stable", "synthetic_candidate", "sticky"}`` (the synthetic cells and the classes
are left out when empty); a version's counts ``{"requests", "errors", "latency"}``; a latency
sketch ``{"bins": [[key, count], ...], "sum": seconds}`` (its count is the sum of its bins, so
the two cannot disagree); a path class ``{"name", "counts": [stable requests, stable errors,
candidate requests, candidate errors, stable sticky errors, candidate sticky errors],
"units": [[stable user ids], [candidate user ids]]}``.

The routing state a leader writes for its followers is `routingwire.py`'s, on the checks here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from splitproxy.config.fields import ROUTE_NAME
from splitproxy.dataplane.abpool import AbEvents, AbLead
from splitproxy.rollout.mirrored import MirrorTally
from splitproxy.rollout.sketch import MAX_BINS, MAX_LATENCY, MIN_LATENCY, LatencySketch
from splitproxy.rollout.windows import UNITS_PER_BUCKET, PathClassCounts, Period, VersionCounts

FORMAT: Final = 1
MAX_HARVEST_BYTES: Final = 16 * 1024 * 1024  # one stream entry's JSON
MAX_ROUTES: Final = 100_000  # routes in one document
MAX_PERIODS: Final = 1024  # buckets of one route in one harvest (a window holds 120)
MAX_CLASSES: Final = 256  # path classes of one bucket (a window names at most 9 by default)
MAX_TEXT: Final = 2048  # characters of a class name, a weight's source, a candidate identity
MAX_REPLICA_ID: Final = 256
MAX_COUNT: Final = 2**53  # a count beyond this is not a count (and loses float precision)
MAX_SPAN: Final = 3600.0  # seconds one bucket may cover
MAX_UNIT: Final = 2**64  # sticky users are 64-bit hashes


def _sketch_key(value: float) -> int:
    sketch = LatencySketch()
    sketch.add(value)
    return next(iter(sketch.bins))


# the bin keys a sketch can hold: others would overflow its histogram's arithmetic
MIN_BIN: Final = _sketch_key(MIN_LATENCY)
MAX_BIN: Final = _sketch_key(MAX_LATENCY)


class WireError(ValueError):
    """A document that cannot be used, and why. ``kind`` groups reasons for logging:
    ``json`` (not JSON, or too big), ``format`` (another format version) or ``invalid``."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.kind = kind


# -- JSON text ---------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not a number JSON allows", "json")


def dumps(document: Mapping[str, Any]) -> str:
    """Compact JSON (NaN and infinities refused: a decoder would refuse them)."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes, limit: int = MAX_HARVEST_BYTES) -> Any:
    """The JSON value of ``text`` (at most ``limit`` bytes; NaN and infinities refused)."""
    if len(text) > limit:
        raise WireError(f"{len(text)} bytes, over the limit of {limit}", "json")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(f"not JSON: {exc}", "json") from None


# -- checks ------------------------------------------------------------------------------------
def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(
    value: object, where: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected an object, got {_kind(value)}")
    for key in value:
        if key not in required and key not in optional:
            raise WireError(f"{where}: unknown field {str(key)[:64]!r}")
    for key in required:
        if key not in value:
            raise WireError(f"{where}: missing field {key!r}")
    return value


def _list(value: object, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{where}: expected a list, got {_kind(value)}")
    if len(value) > limit:
        raise WireError(f"{where}: {len(value)} items, over the limit of {limit}")
    return value


def _count(value: object, where: str, limit: int = MAX_COUNT) -> int:
    if type(value) is not int:  # a boolean is an int to Python, not to the wire
        raise WireError(f"{where}: expected a whole number, got {_kind(value)}")
    if value < 0:
        raise WireError(f"{where}: {value} is negative")
    if value > limit:
        raise WireError(f"{where}: {value} is over the limit of {limit}")
    return value


def _number(value: object, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    if type(value) is not int and type(value) is not float:
        raise WireError(f"{where}: expected a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise WireError(f"{where}: {number} is not a finite number")
    if not low <= number <= high:
        raise WireError(f"{where}: {number} is not between {low} and {high}")
    return number


def _text(value: object, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise WireError(f"{where}: expected a string, got {_kind(value)}")
    if len(value) > limit:
        raise WireError(f"{where}: {len(value)} characters, over the limit of {limit}")
    return value


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"{where}: expected true or false, got {_kind(value)}")
    return value


def _routes(value: object, where: str) -> dict[str, Any]:
    """A mapping keyed by route names."""
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected an object, got {_kind(value)}")
    if len(value) > MAX_ROUTES:
        raise WireError(f"{where}: {len(value)} routes, over the limit of {MAX_ROUTES}")
    for name in value:
        if not isinstance(name, str) or not ROUTE_NAME.fullmatch(name):
            raise WireError(f"{where}: {str(name)[:80]!r} is not a route name")
    return value


def _format(data: object, where: str) -> None:
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected an object, got {_kind(data)}")
    version = data.get("v")
    if version != FORMAT or type(version) is not int:
        shown = repr(version)[:32] if isinstance(version, (str, float, type(None))) else None
        if type(version) is int and abs(version) < 10**9:
            shown = str(version)
        raise WireError(f"{where}: format {shown or _kind(version)}, this replica reads {FORMAT}",
                        "format")  # fmt: skip


# -- sketches, counts, periods -----------------------------------------------------------------
def encode_sketch(sketch: LatencySketch) -> dict[str, Any]:
    return {"bins": [[k, n] for k, n in sorted(sketch.bins.items())], "sum": float(sketch.total)}


_SKETCH: Final = frozenset({"bins", "sum"})


def decode_sketch(data: object, where: str = "latency") -> LatencySketch:
    doc = _object(data, where, _SKETCH)
    sketch = LatencySketch()
    bins = sketch.bins
    for i, pair in enumerate(_list(doc["bins"], f"{where}.bins", MAX_BINS)):
        # the usual bin in one test (a bin's path is written only for its error)
        if type(pair) is list and len(pair) == 2:
            key, n = pair
            if (type(key) is int and MIN_BIN <= key <= MAX_BIN and key not in bins
                    and type(n) is int and 0 < n <= MAX_COUNT):  # fmt: skip
                bins[key] = n
                continue
        key, n = _checked_bin(pair, f"{where}.bins[{i}]", bins)
        bins[key] = n
    sketch.count = sum(bins.values())
    if sketch.count > MAX_COUNT:
        raise WireError(f"{where}: {sketch.count} latencies, over the limit of {MAX_COUNT}")
    sketch.total = _number(doc["sum"], f"{where}.sum", 0.0)
    return sketch


def _checked_bin(pair: object, at: str, bins: dict[int, int]) -> tuple[int, int]:
    """A bin ``[key, count]`` with every check made one by one (the reason of a refusal)."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise WireError(f"{at}: expected [key, count]")
    key, n = pair
    if type(key) is not int or not MIN_BIN <= key <= MAX_BIN:
        raise WireError(f"{at}: {str(key)[:32]} is not a bin between {MIN_BIN} and {MAX_BIN}")
    if key in bins:
        raise WireError(f"{at}: bin {key} twice")
    if _count(n, f"{at}.count") == 0:
        raise WireError(f"{at}: an empty bin")
    return key, n


def _encode_counts(counts: VersionCounts) -> dict[str, Any]:
    return {
        "requests": counts.requests,
        "errors": counts.errors,
        "latency": encode_sketch(counts.latency),
    }


_COUNTS: Final = frozenset({"requests", "errors", "latency"})


def _decode_counts(data: object, where: str) -> VersionCounts:
    doc = _object(data, where, _COUNTS)
    requests = _count(doc["requests"], f"{where}.requests")
    errors = _count(doc["errors"], f"{where}.errors")
    if errors > requests:
        raise WireError(f"{where}: {errors} errors of {requests} requests")
    latency = decode_sketch(doc["latency"], f"{where}.latency")
    if latency.count > requests:
        raise WireError(f"{where}: {latency.count} latencies of {requests} requests")
    return VersionCounts(requests, errors, latency)


def _empty(counts: VersionCounts) -> bool:
    return not counts.requests and not counts.latency.count


def _encode_class(cls: PathClassCounts) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": cls.name,
        "counts": [cls.stable_requests, cls.stable_errors, cls.candidate_requests,
                   cls.candidate_errors, cls.stable_unit_errors, cls.candidate_unit_errors],
    }  # fmt: skip
    if cls.stable_units or cls.candidate_units:
        doc["units"] = [list(cls.stable_units), list(cls.candidate_units)]
    return doc


_CLASS: Final = frozenset({"name", "counts"})
_CLASS_OPTIONAL: Final = frozenset({"units"})


def _decode_class(
    data: object, period: str, index: int, seen: tuple[set[int], set[int]]
) -> PathClassCounts:
    """The ``index``-th path class of the bucket at ``period``; ``seen`` holds each version's
    sticky users of the bucket so far (a user is noted once per bucket, in the class of its
    first error)."""
    # The usual class (no list of sticky users) in one test; anything else, valid or not,
    # goes through every check (`_checked_class`), which says what is wrong.
    if type(data) is dict and len(data) == 2:
        name, counts = data.get("name"), data.get("counts")
        if (type(name) is str and len(name) <= MAX_TEXT
                and type(counts) is list and len(counts) == 6):  # fmt: skip
            sr, se, cr, ce, sue, cue = counts
            if (type(sr) is int and type(se) is int and type(cr) is int and type(ce) is int
                    and type(sue) is int and type(cue) is int
                    and 0 <= sue <= se <= sr <= MAX_COUNT
                    and 0 <= cue <= ce <= cr <= MAX_COUNT):  # fmt: skip
                return PathClassCounts(name, sr, se, cr, ce, sue, cue)
    return _checked_class(data, f"{period}.classes[{index}]", seen)


def _checked_class(data: object, where: str, seen: tuple[set[int], set[int]]) -> PathClassCounts:
    """`_decode_class` with every check made one by one."""
    doc = _object(data, where, _CLASS, _CLASS_OPTIONAL)
    name = _text(doc["name"], f"{where}.name")
    counts = _list(doc["counts"], f"{where}.counts", 6)
    if len(counts) != 6:
        raise WireError(f"{where}.counts: expected 6 numbers, got {len(counts)}")
    sr, se, cr, ce, sue, cue = (_count(n, f"{where}.counts[{i}]") for i, n in enumerate(counts))
    for version, requests, errors, unit_errors in (("stable", sr, se, sue),
                                                   ("candidate", cr, ce, cue)):  # fmt: skip
        if errors > requests:
            raise WireError(f"{where}: {errors} {version} errors of {requests} requests")
        if unit_errors > errors:
            raise WireError(f"{where}: {unit_errors} {version} sticky errors of {errors} errors")
    units: list[tuple[int, ...]] = [(), ()]
    if "units" in doc:
        pair = _list(doc["units"], f"{where}.units", 2)
        if len(pair) != 2:
            raise WireError(f"{where}.units: expected [stable ids, candidate ids]")
        for v, (ids, unit_errors) in enumerate(zip(pair, (sue, cue), strict=True)):
            at = f"{where}.units[{v}]"
            ids = _list(ids, at, UNITS_PER_BUCKET)
            if len(ids) > unit_errors:
                raise WireError(f"{at}: {len(ids)} users for {unit_errors} sticky errors")
            for unit in ids:
                _count(unit, at, MAX_UNIT - 1)
                if unit in seen[v]:
                    raise WireError(f"{at}: user {unit} twice in one bucket")
                if len(seen[v]) >= UNITS_PER_BUCKET:
                    raise WireError(f"{at}: over {UNITS_PER_BUCKET} users in one bucket")
                seen[v].add(unit)
            units[v] = tuple(ids)
    return PathClassCounts(name, sr, se, cr, ce, sue, cue, units[0], units[1])


def encode_period(period: Period) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "start": float(period.start),
        "end": float(period.end),
        "probability": None if period.probability is None else float(period.probability),
        "stable": _encode_counts(period.stable),
        "candidate": _encode_counts(period.candidate),
        "sticky": period.sticky,
    }
    if period.path_classes:
        doc["classes"] = [_encode_class(c) for c in period.path_classes]
    if not _empty(period.synthetic_stable):
        doc["synthetic_stable"] = _encode_counts(period.synthetic_stable)
    if not _empty(period.synthetic_candidate):
        doc["synthetic_candidate"] = _encode_counts(period.synthetic_candidate)
    return doc


_PERIOD: Final = frozenset({"start", "end", "probability", "stable", "candidate", "sticky"})
_PERIOD_OPTIONAL: Final = frozenset({"classes", "synthetic_stable", "synthetic_candidate"})


def decode_period(data: object, where: str = "period") -> Period:
    doc = _object(data, where, _PERIOD, _PERIOD_OPTIONAL)
    start = _number(doc["start"], f"{where}.start", 0.0)
    end = _number(doc["end"], f"{where}.end", 0.0)
    if not start < end <= start + MAX_SPAN:
        raise WireError(f"{where}: [{start}, {end}) is not a bucket of at most {MAX_SPAN} s")
    raw = doc["probability"]
    probability = None if raw is None else _number(raw, f"{where}.probability", 0.0, 1.0)
    stable = _decode_counts(doc["stable"], f"{where}.stable")
    candidate = _decode_counts(doc["candidate"], f"{where}.candidate")
    seen: tuple[set[int], set[int]] = (set(), set())
    names: set[str] = set()
    classes = []
    sr = se = cr = ce = 0
    for i, item in enumerate(_list(doc.get("classes", []), f"{where}.classes", MAX_CLASSES)):
        cls = _decode_class(item, where, i, seen)
        if cls.name in names:
            raise WireError(f"{where}.classes[{i}]: class {cls.name[:64]!r} twice")
        names.add(cls.name)
        classes.append(cls)
        sr += cls.stable_requests
        se += cls.stable_errors
        cr += cls.candidate_requests
        ce += cls.candidate_errors
    # the classes split the user traffic: together they are the bucket's counts
    if (sr, se, cr, ce) != (stable.requests, stable.errors, candidate.requests, candidate.errors):
        raise WireError(f"{where}: the path classes do not add up to the versions' counts")
    return Period(
        start, end, probability, stable, candidate, tuple(classes),
        _synthetic(doc, "synthetic_stable", where), _synthetic(doc, "synthetic_candidate", where),
        _flag(doc["sticky"], f"{where}.sticky"),
    )  # fmt: skip


def _synthetic(doc: dict[str, Any], key: str, where: str) -> VersionCounts:
    if key not in doc:  # left out when empty
        return VersionCounts(0, 0, LatencySketch())
    return _decode_counts(doc[key], f"{where}.{key}")


def encode_mirror(tally: MirrorTally) -> dict[str, Any]:
    return {
        "answered": tally.answered,
        "errors": tally.errors,
        "compared": tally.compared,
        "diverged": tally.diverged,
        "latency": encode_sketch(tally.latency),
    }


_MIRROR: Final = frozenset({"answered", "errors", "compared", "diverged", "latency"})


def decode_mirror(data: object, where: str = "mirror") -> MirrorTally:
    doc = _object(data, where, _MIRROR)
    tally = MirrorTally()
    tally.answered = _count(doc["answered"], f"{where}.answered")
    tally.errors = _count(doc["errors"], f"{where}.errors")
    tally.compared = _count(doc["compared"], f"{where}.compared")
    tally.diverged = _count(doc["diverged"], f"{where}.diverged")
    if tally.errors > tally.answered or tally.compared > tally.answered:
        raise WireError(f"{where}: more errors or comparisons than answers")
    if tally.diverged > tally.compared:
        raise WireError(f"{where}: {tally.diverged} diverged of {tally.compared} compared")
    tally.latency = decode_sketch(doc["latency"], f"{where}.latency")
    if tally.latency.count > tally.answered:
        raise WireError(f"{where}: {tally.latency.count} latencies of {tally.answered} answers")
    return tally


# -- harvests ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Harvest:
    """What one replica published at once: its buckets that closed since its previous
    harvest (route -> buckets, oldest first), its mirrored copies' answers (route -> tally),
    complete up to ``watermark`` (Unix time)."""

    replica: str
    watermark: float
    periods: dict[str, list[Period]] = field(default_factory=dict)
    mirrors: dict[str, MirrorTally] = field(default_factory=dict)
    ab: dict[str, AbEvents] = field(default_factory=dict)  # a follower's A/B events
    lead: AbLead | None = None  # the leader's word on the A/B tests


def encode_harvest(
    watermark: float,
    periods: Mapping[str, list[Period]],
    mirrors: Mapping[str, MirrorTally],
    ab: Mapping[str, AbEvents] | None = None,
    lead: AbLead | None = None,
) -> dict[str, Any]:
    """A harvest's document (the replica's id travels beside it, in the stream entry)."""
    doc: dict[str, Any] = {"v": FORMAT, "watermark": float(watermark)}
    if any(periods.values()):
        doc["periods"] = {r: [encode_period(p) for p in ps] for r, ps in periods.items() if ps}
    if mirrors:
        doc["mirrors"] = {route: encode_mirror(t) for route, t in mirrors.items()}
    from splitproxy.replicas.abwire import encode_ab_events, encode_ab_lead  # imports this

    if ab:
        doc["ab"] = {route: encode_ab_events(b) for route, b in ab.items()}
    if lead is not None:
        doc["ab_lead"] = encode_ab_lead(lead)
    return doc


_HARVEST: Final = frozenset({"v", "watermark"})
_HARVEST_OPTIONAL: Final = frozenset({"periods", "mirrors", "ab", "ab_lead"})


def decode_harvest(replica: object, data: object) -> Harvest:
    """The harvest that ``replica`` published as ``data`` (a decoded JSON value)."""
    name = _text(replica, "replica", MAX_REPLICA_ID)
    if not name:
        raise WireError("replica: an empty id")
    _format(data, "harvest")
    doc = _object(data, "harvest", _HARVEST, _HARVEST_OPTIONAL)
    watermark = _number(doc["watermark"], "watermark", 0.0)
    periods: dict[str, list[Period]] = {}
    for route, items in _routes(doc.get("periods", {}), "periods").items():
        at = f"periods.{route}"
        buckets = [
            decode_period(p, f"{at}[{i}]") for i, p in enumerate(_list(items, at, MAX_PERIODS))
        ]
        if any(b.start < a.start for a, b in pairwise(buckets)):
            raise WireError(f"{at}: buckets out of order")
        if buckets:
            periods[route] = buckets
    mirrors = {
        route: decode_mirror(item, f"mirrors.{route}")
        for route, item in _routes(doc.get("mirrors", {}), "mirrors").items()
    }
    from splitproxy.replicas.abwire import decode_ab_events, decode_ab_lead  # imports this

    ab = {
        route: decode_ab_events(item, f"ab.{route}")
        for route, item in _routes(doc.get("ab", {}), "ab").items()
    }
    lead = decode_ab_lead(doc["ab_lead"]) if "ab_lead" in doc else None
    return Harvest(name, watermark, periods, mirrors, ab, lead)


__all__ = [
    "FORMAT",
    "MAX_HARVEST_BYTES",
    "Harvest",
    "WireError",
    "decode_harvest",
    "decode_mirror",
    "decode_period",
    "decode_sketch",
    "dumps",
    "encode_harvest",
    "encode_mirror",
    "encode_period",
    "encode_sketch",
    "loads",
]
