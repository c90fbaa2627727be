"""How a response reaches the client's transport: a small response that arrives whole goes out
in one write (head and body together), with the same bytes however the upstream's reads split
it; a head is never held back past the read that brought it."""

from __future__ import annotations

import re

import pytest

from tests.unit.dataplane.harness import Proxy, dechunk, get, header, split_response, status_of

SMALL = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Up: 1\r\n\r\nhello world"


async def answer(reads: list[bytes], request: bytes | None = None) -> list[bytes]:
    """The client transport's write calls for one request answered in ``reads``."""
    proxy = Proxy()
    client = proxy.client()
    client.send(request if request is not None else get("/r"))
    await client.settle()
    up = await proxy.upstream()
    for data in reads:
        up.reply(data)
    return client.transport.calls


def sent(calls: list[bytes]) -> bytes:
    """The bytes written, with the request id (new in every proxy) blanked."""
    return re.sub(rb"(?i)x-request-id: [^\r]*", b"X-Request-ID: -", b"".join(calls))


def framed(data: bytes) -> tuple[bytes, bytes]:
    """Head and body; a chunked body decoded (its chunks follow the upstream's reads)."""
    head, body = split_response(data)
    if header(head, "Transfer-Encoding") == "chunked":
        payload, ended = dechunk(body)
        assert ended
        return head, payload
    return head, body


def splits(raw: bytes) -> list[list[bytes]]:
    """The response in one read, at every split point in two, and byte by byte."""
    return [[raw], *([raw[:i], raw[i:]] for i in range(1, len(raw))), [bytes([b]) for b in raw]]


async def test_a_small_whole_response_goes_out_in_one_write() -> None:
    calls = await answer([SMALL])
    assert len(calls) == 1
    head, body = split_response(calls[0])
    assert status_of(head) == 200
    assert header(head, "Content-Length") == "11"
    assert body == b"hello world"


@pytest.mark.parametrize(
    "raw",
    [
        SMALL,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["length", "chunked", "204", "empty"],
)
async def test_the_bytes_do_not_depend_on_how_the_upstream_reads_split(raw: bytes) -> None:
    whole = framed(sent(await answer([raw])))
    assert b"X-Request-ID: -" in whole[0]
    for reads in splits(raw):
        assert framed(sent(await answer(reads))) == whole, reads


async def test_a_head_is_written_at_the_end_of_its_read_when_the_body_is_late() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get("/slow"))
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    head = client.transport.take()
    assert status_of(head) == 200  # the client has the head while the body is on its way
    up.reply(b"body")
    assert client.transport.take() == b"body"


async def test_a_large_body_goes_out_with_its_head_in_one_call() -> None:
    body = b"x" * (64 * 1024)
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    calls = await answer([raw])
    assert len(calls) == 1
    assert split_response(calls[0])[1] == body


async def test_a_head_request_is_answered_with_the_head_alone() -> None:
    request = b"HEAD /r HTTP/1.1\r\nHost: app.test\r\n\r\n"
    calls = await answer([b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"], request)
    assert len(calls) == 1
    assert header(calls[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n", "Content-Length") == "11"
    assert calls[0].endswith(b"\r\n\r\n")


async def test_an_upstream_that_dies_after_the_head_cuts_a_started_response() -> None:
    proxy = Proxy()
    client = proxy.client()
    client.send(get("/r"))
    await client.settle()
    up = await proxy.upstream()
    up.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    up.lost()
    head, body = split_response(bytes(client.transport.written))
    assert status_of(head) == 200
    assert body == b"half"
    assert client.transport.aborted  # not a clean end: the client knows the body is short
