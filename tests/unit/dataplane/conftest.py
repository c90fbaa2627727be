"""The HTTP core's tests open no socket: any attempt to connect or resolve fails the test."""

from __future__ import annotations

import socket
from typing import Any

import pytest


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the socket-free tests must not touch the network")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "bind", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
