"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

from typing import Any


def route(stable: str, candidate: str | None = None, **fields: Any) -> dict[str, Any]:
    """A one-route routing config named ``app``."""
    r: dict[str, Any] = {"name": "app", "stable": stable, **fields}
    if candidate is not None:
        r["candidate"] = candidate
    return {"routes": [r]}
