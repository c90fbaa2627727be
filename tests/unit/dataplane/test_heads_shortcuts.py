"""The response head's shortcuts give the bytes the full computation gives: a ``Connection``
header that is a lone option names nothing to drop, status lines are kept once made, and what
a header's name means is kept by its spelling."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane import heads, http11
from splitproxy.dataplane.heads import response_head
from splitproxy.dataplane.http11 import HOP_BY_HOP, RAW, RECHUNK, BodyRelay, connection_tokens

_OPTIONS = frozenset({b"close", b"keep-alive"})


def reference_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    http11_: bool,
    no_body: bool,
    closing: bool,
) -> tuple[bytes, BodyRelay, bool]:
    """`response_head` as it was: every Connection value tokenized, the lines always
    filtered and the length searched again, the status line formatted every time."""
    phrase = reason if reason else http11._REASONS.get(status, b"")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    chunked, length_at, has_length, echo_id = False, -1, False, True
    dropped: list[bytes] = []
    relay = RAW
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"connection":
                dropped.extend(connection_tokens(value))
            continue
        if lname == b"content-length":
            has_length = True
            length_at = len(parts)
        elif lname == b"x-request-id":
            echo_id = False
        parts += (name, b": ", value, b"\r\n")
    if dropped:
        drop = {n for n in dropped if n not in _OPTIONS}
        if drop:
            out = parts[:1]
            for i in range(1, len(parts), 4):
                if parts[i].lower() not in drop:
                    out.extend(parts[i : i + 4])
            parts = out
        length_at = -1
        if has_length:
            for i in range(1, len(parts), 4):
                if parts[i].lower() == b"content-length":
                    length_at = i
                    break
    if no_body:
        pass
    elif chunked or not has_length:
        if chunked and length_at >= 0:
            parts[length_at : length_at + 4] = []
        if http11_:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            relay = RECHUNK
        else:
            closing = True
    if echo_id:
        parts += (b"X-Request-ID: ", b"rid", b"\r\n")
    if closing:
        parts.append(b"Connection: close\r\n")
    elif not http11_:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), relay, closing


connection_values = st.one_of(
    st.sampled_from([b"keep-alive", b"Keep-Alive", b"close", b"CLOSE", b" keep-alive"]),
    st.lists(
        st.sampled_from([b"keep-alive", b"close", b"x-private", b"Content-Length", b"foo"]),
        min_size=1,
        max_size=3,
    ).map(b", ".join),
)
# names as upstreams spell them (any case; a long one is never kept by `heads._kind`)
framing_names = [b"Content-Length", b"content-length", b"CONTENT-length", b"Transfer-Encoding"]
other_names = [b"transfer-ENCODING", b"X-Private", b"x-private", b"Foo", b"X-" + b"a" * 70]
lines = st.one_of(
    st.tuples(st.sampled_from([b"Connection", b"connection", b"CONNECTION"]), connection_values),
    st.tuples(
        st.sampled_from(framing_names + other_names),
        st.sampled_from([b"10", b"chunked", b"gzip", b"v"]),
    ),
    st.tuples(
        st.sampled_from([b"X-Request-ID", b"x-request-id", b"Keep-Alive", b"TE", b"Server"]),
        st.just(b"a"),
    ),
)
reasons = st.sampled_from([b"", b"OK", b"Not Found", b"Whatever"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([200, 204, 404, 500, 599, 700, 999]),
            reasons,
            st.lists(lines, max_size=8),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([1, 3, 256]),
)
def test_the_response_head_is_the_full_computations_bytes(
    responses: list[tuple[int, bytes, list[tuple[bytes, bytes]], bool, bool, bool]],
    remembered: int,
) -> None:
    http11._STATUS_LINES.clear()
    heads._kinds.clear()
    with (
        mock.patch.object(http11, "_STATUS_LINES_MAX", remembered),
        mock.patch.object(heads, "_KINDS_MAX", remembered),
    ):
        for status, reason, headers, is11, no_body, closing in responses:
            got = response_head(
                status, reason, headers, request_id=b"rid", http11=is11, no_body=no_body,
                closing=closing, upgrade=None,
            )  # fmt: skip
            want = reference_head(
                status, reason, headers, http11_=is11, no_body=no_body, closing=closing
            )
            assert got == want
            assert len(http11._STATUS_LINES) <= remembered
            assert len(heads._kinds) <= remembered


def test_two_lengths_beside_chunked_and_a_lone_connection_option() -> None:
    """A head the parser refuses (two Content-Lengths beside chunked), found by the test above:
    with a ``Connection`` header, the first length is the one dropped, as in the reference."""
    headers = [
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"10"),
        (b"Content-Length", b"chunked"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    got = response_head(
        200, b"", headers, request_id=b"rid", http11=False, no_body=False, closing=False,
        upgrade=None,
    )  # fmt: skip
    assert got == reference_head(200, b"", headers, http11_=False, no_body=False, closing=False)
    assert b"Content-Length: chunked\r\n" in got[0]
