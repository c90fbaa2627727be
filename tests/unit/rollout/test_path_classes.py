"""Path classes and synthetic cells in the live windows: bounded, stable, exact counts."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.config.vocabulary import CANDIDATE, STABLE, VERSIONS, Version
from splitproxy.rollout.sequential import OVERFLOW_CLASS, PathClassTests
from splitproxy.rollout.windows import (
    OTHER_CLASS,
    PATH_CLASS_LIMIT,
    PathClasses,
    Window,
    Windows,
)

T0 = 1_700_000_000.0

segments = st.text(alphabet="abcdefxyz0123456789-_.%~ ", min_size=0, max_size=12)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
prefixes = st.sampled_from(["/", "/api", "/api/", "/a"])


def name_of(classes: PathClasses, path: str, prefix: str = "/") -> str:
    return classes.names[classes.classify(path, prefix)]


@pytest.mark.parametrize(
    ("prefix", "path", "name"),
    [
        ("/", "/", "/"),
        ("/", "/api", "/api"),
        ("/", "/api/", "/api"),
        ("/", "/api/users/7", "/api"),
        ("/", "/favicon.ico", "/favicon.ico"),
        ("/api", "/api", "/api"),
        ("/api", "/api/users/7", "/api/users"),
        ("/api/", "/api/users", "/api/users"),
        ("/api", "/apix/y", "/api/y"),  # named after the prefix and the segment at its depth
        ("/api/v1/", "/api/v1/orders/9", "/api/v1/orders"),
        ("/", "/v2/orders", "/v2"),
        ("/", "*", "/"),  # OPTIONS *: the route's root
    ],
)
def test_a_class_is_the_path_up_to_the_first_segment_after_the_prefix(
    prefix: str, path: str, name: str
) -> None:
    assert name_of(PathClasses(), path, prefix) == name


@pytest.mark.parametrize(
    "path",
    [
        "/123",  # an id
        "/2024-06-01",  # a date
        "/5f2b1c9a7e3d",  # a hash
        "/550e8400-e29b-41d4-a716-446655440000",  # a UUID
        "/" + "a" * 33,  # too long to be a name
        "/caf%C3%A9",  # percent-encoded
        "/a b",
    ],
)
def test_ids_hashes_and_odd_segments_are_other(path: str) -> None:
    classes = PathClasses()
    assert classes.classify(path, "/") == 0
    assert len(classes) == 0  # and they take no class


def test_names_are_short_whatever_the_path() -> None:
    classes = PathClasses()
    assert classes.classify("/api" + "x" * 5000 + "/y", "/api") == 1
    assert classes.names[1] == "/api/y"
    assert classes.classify("/apix/y", "/api") == 1


def test_the_first_k_names_get_classes_the_rest_share_other() -> None:
    classes = PathClasses(limit=3)
    got = [name_of(classes, p) for p in ("/a/1", "/b", "/c/x", "/d", "/a/2", "/e")]
    assert got == ["/a", "/b", "/c", OTHER_CLASS, "/a", OTHER_CLASS]
    assert classes.names == [OTHER_CLASS, "/a", "/b", "/c"]


def test_other_is_the_analyzers_overflow_slot() -> None:
    assert OTHER_CLASS == OVERFLOW_CLASS


@settings(max_examples=200)
@given(st.lists(paths, max_size=200), prefixes, st.integers(min_value=0, max_value=10))
def test_classes_are_bounded_and_never_change_once_given(
    requests: list[str], prefix: str, limit: int
) -> None:
    classes = PathClasses(limit)
    first: dict[str, int] = {}
    for path in requests:
        index = classes.classify(path, prefix)
        assert 0 <= index <= limit
        assert first.setdefault(path, index) == index  # stable: the same answer every time
    assert len(classes.names) <= limit + 1
    assert len(set(classes.names)) == len(classes.names)
    assert all(len(name) <= len(prefix) + 34 for name in classes.names)
    # a replay of the same paths (e.g. after the window is read) keeps every answer
    for path, index in first.items():
        assert classes.classify(path, prefix) == index


@given(st.lists(paths, min_size=1, max_size=50))
def test_a_class_named_is_given_while_slots_last(requests: list[str]) -> None:
    classes = PathClasses(limit=PATH_CLASS_LIMIT)
    for path in requests:
        index = classes.classify(path, "/")
        if index == 0 and len(classes) < PATH_CLASS_LIMIT:
            segment = path[1:].split("/", 1)[0]
            # only a segment that does not look like a name is refused while slots are free
            assert not (
                len(segment) <= 32
                and all(c.isalnum() or c in "._~-" for c in segment)
                and sum(c.isdigit() for c in segment) < 3
            )


# --- in the windows -------------------------------------------------------------------------

Request = tuple[Version, bool, str]  # version, error, path
requests_st = st.lists(
    st.tuples(st.sampled_from([STABLE, CANDIDATE]), st.booleans(), paths), max_size=300
)


@settings(max_examples=100)
@given(requests_st)
def test_class_counts_add_up_exactly(requests: list[Request]) -> None:
    window = Window(capacity=10, path_classes=4)
    classes = PathClasses(4)  # a twin fed the same paths: the reference mapping
    expected: Counter[tuple[str, Version, bool]] = Counter()
    for version, error, path in requests:
        window.observe(T0 + 0.5, version, 0.01, error, 0.1, path, "/")
        expected[classes.names[classes.classify(path, "/")], version, error] += 1
    obs = window.observations(T0)
    if not requests:
        assert obs == []
        return
    (bucket,) = obs
    for version in (STABLE, CANDIDATE):
        total = bucket.candidate if version == CANDIDATE else bucket.stable
        assert sum(c.counts(version)[0] for c in bucket.path_classes) == total.requests
        assert sum(c.counts(version)[1] for c in bucket.path_classes) == total.errors
    for c in bucket.path_classes:
        for version in (STABLE, CANDIDATE):
            n = expected[c.name, version, True] + expected[c.name, version, False]
            assert c.counts(version) == (n, expected[c.name, version, True])
    named = {c.name for c in bucket.path_classes}
    assert named == {name for name, _, _ in expected}
    assert len(named) <= 5


def test_requests_without_a_path_are_other() -> None:
    window = Window()
    window.observe(T0, CANDIDATE, 0.01, True, 0.5)
    (obs,) = window.observations(T0)
    assert [(c.name, c.counts(CANDIDATE)) for c in obs.path_classes] == [(OTHER_CLASS, (1, 1))]


def test_classes_outlive_buckets() -> None:
    window = Window(capacity=3, path_classes=1)
    window.observe(T0, STABLE, 0.01, False, 0.1, "/a/1")
    window.observe(T0 + 1, STABLE, 0.01, False, 0.1, "/b/1")
    window.observe(T0 + 2, STABLE, 0.01, False, 0.1, "/a/2")
    assert [[c.name for c in o.path_classes] for o in window.observations(T0)] == [
        ["/a"],
        [OTHER_CLASS],
        ["/a"],
    ]


def test_windows_carry_the_limit() -> None:
    windows = Windows(path_classes=3)
    assert windows.window("shop").classes.limit == 3


# --- synthetic cells ------------------------------------------------------------------------


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([STABLE, CANDIDATE]), st.booleans()),
        max_size=200,
    )
)
def test_synthetic_requests_are_counted_apart_and_split_no_bucket(
    requests: list[tuple[bool, Version, bool]],
) -> None:
    window = Window()
    user: Counter[tuple[Version, bool]] = Counter()
    synthetic: Counter[tuple[Version, bool]] = Counter()
    for is_synthetic, version, error in requests:
        # user traffic at one probability, synthetic traffic (not random) interleaved
        window.observe(T0 + 0.5, version, 0.02, error, 0.25, "/a", "/", is_synthetic)
        (synthetic if is_synthetic else user)[version, error] += 1
    obs = window.observations(T0)
    assert len(obs) <= 1  # interleaved synthetic requests start no bucket of their own
    if not obs:
        return
    (b,) = obs
    assert b.probability == (0.25 if user else None)
    for version in VERSIONS:
        n = user[version, True] + user[version, False]
        assert (b.version(version).requests, b.version(version).errors) == (n, user[version, True])
        assert b.version(version).latency.count == n
        s = synthetic[version, True] + synthetic[version, False]
        syn = b.synthetic(version)
        assert (syn.requests, syn.errors, syn.latency.count) == (s, synthetic[version, True], s)
    assert sum(c.stable_requests + c.candidate_requests for c in b.path_classes) == sum(
        user.values()
    )
    # the status summary is the users' traffic only
    totals = window.totals(T0)
    assert totals[STABLE].requests + totals[CANDIDATE].requests == sum(user.values())


def test_a_synthetic_request_after_a_quiet_second_opens_a_bucket() -> None:
    window = Window()
    window.observe(T0, CANDIDATE, 0.01, False, 0.1, "/a")
    window.observe(T0 + 3.2, CANDIDATE, 0.01, True, None, "/a", "/", True)
    _, second = window.observations(T0)
    assert second.start == T0 + 3
    assert second.probability == 0.1  # carried over: the users' next request joins it
    assert (second.candidate.requests, second.synthetic_candidate.errors) == (0, 1)
    window.observe(T0 + 3.5, CANDIDATE, 0.01, False, 0.1, "/a")
    assert len(window.observations(T0)) == 2


# --- the analyzer's side of OTHER_CLASS --------------------------------------------------------


def test_other_goes_to_the_overflow_slot_and_takes_no_named_one() -> None:
    family = PathClassTests(slots=2)
    for name in (OTHER_CLASS, "/a", "/b", "/c"):
        family.update(0.1, 1, 5, name)
    assert set(family.classes) == {OTHER_CLASS, "/a", "/b"}
    assert family.classes[OTHER_CLASS].events == 12  # itself and /c, the third name
    # every slot is in use: none counts as an unused 1 any more
    assert len(family.classes) == family.slots + 1
