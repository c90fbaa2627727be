"""Integration tests run on asyncio's loop; the data path's tests also run on uvloop,
the loop production uses (its transports differ from asyncio's in small ways)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
import uvloop

LoopFactory = Any


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    if item.path.name.startswith("test_proxy_"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
