"""Integration tests run on asyncio's loop; the data path's tests also run on uvloop,
the loop production uses (its transports differ from asyncio's in small ways)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tests.helpers import held_port

LoopFactory = Any


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    if item.path.name.startswith("test_proxy_"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Loopback ports where connections are refused for the whole test.

    Each port stays bound (never listening) until the test ends: a port that was only bound
    and closed can be handed to the next ``bind(0)``, the proxy's own listener included,
    which turned "refused" into "answered by the proxy itself" once in CI.
    """
    held: list[socket.socket] = []

    def reserve() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield reserve
    for sock in held:
        sock.close()


@pytest.fixture
def late_port() -> Iterator[Callable[[], int]]:
    """Loopback ports for an upstream that starts listening later in the test.

    Each port is a `held_port` until the test ends: connections are refused until the upstream
    listens on it, and no other ``bind(0)`` is handed it meanwhile.
    """
    held: list[socket.socket] = []

    def reserve() -> int:
        held.append(held_port())
        return int(held[-1].getsockname()[1])

    yield reserve
    for sock in held:
        sock.close()
