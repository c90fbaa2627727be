"""Reading a synthetic marker back: what the data path honours, and what it refuses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from splitproxy.dataplane.synthetic import TARGETS, Target, marker, read_marker

NAMES = st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True)
TOKEN = "ab" * 16


@given(NAMES, st.sampled_from(TARGETS))
def test_every_marker_reads_back_as_its_route_and_target(name: str, target: Target) -> None:
    value = marker(name, target, TOKEN).encode("latin-1")
    assert read_marker(value, TOKEN.encode()) == (True, name, target)


@given(NAMES, st.sampled_from(TARGETS), st.text(alphabet="0123456789abcdef", max_size=40))
def test_another_token_is_not_ours(name: str, target: Target, token: str) -> None:
    value = marker(name, target, token).encode("latin-1")
    ours, _, forced = read_marker(value, TOKEN.encode())
    assert ours is (token == TOKEN)
    assert (forced is not None) is ours


def test_our_token_with_a_garbled_rest_forces_nothing() -> None:
    good = marker("shop", "candidate", TOKEN)
    garbled = [good + " x", f"{TOKEN} shop", TOKEN, f"{TOKEN} shop canary"]
    for value in garbled:
        assert read_marker(value.encode("latin-1"), TOKEN.encode()) == (True, "", None)
    assert read_marker(good.upper().encode("latin-1"), TOKEN.encode()) == (False, "", None)
