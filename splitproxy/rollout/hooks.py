"""Outbound webhooks: rollout hooks (gates and notifications) with timeouts and retries.

A hook is an HTTP POST of a JSON body to a URL the user configured. Gating hooks
(``pre-rollout``, ``step``, ``confirm-promotion``) pass only on a 2xx answer; notifications
(``event``, ``post-rollout``, ``rollback``) are fire-and-report. A failed attempt (connection
error, timeout, non-2xx) is retried with a growing delay; the result tells how it went, so the
controller can record it as evidence and count a failing gate as a failed check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class HookResult:
    """How a hook call ended: ``ok`` when some attempt got a 2xx answer."""

    ok: bool
    status: int | None
    attempts: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
        }


def slack_text(event: Mapping[str, Any]) -> dict[str, str]:
    """A Slack-compatible body (``{"text": ...}``) for a rollout event: the route (and the
    candidate's revision when known), what happened, the candidate's weight (``weight_after``,
    the weight once the decision is applied, when given) and the message."""
    route = event.get("route", "?")
    revision = event.get("revision")
    if revision:
        route = f"{route} {revision}"
    kind = event.get("type", "event")
    detail = event.get("message") or ""
    weight = event.get("weight_after", event.get("weight"))
    tail = f" (candidate at {weight:g}%)" if isinstance(weight, int | float) else ""
    return {"text": f"splitproxy · {route}: {kind}{tail}. {detail}".strip()}


class HookClient:
    """Makes hook calls on one shared aiohttp session (the proxy's own outbound calls)."""

    def __init__(self, session: aiohttp.ClientSession, *, backoff: float = 0.5) -> None:
        self.session = session
        self.backoff = backoff

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
    ) -> HookResult:
        """POST ``payload`` as JSON; up to ``1 + retries`` attempts, each bounded by ``timeout``."""
        status: int | None = None
        error: str | None = None
        attempts = 0
        for attempt in range(retries + 1):
            attempts = attempt + 1
            try:
                async with self.session.post(
                    url,
                    json=dict(payload),
                    headers=dict(headers or {}),
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    status = resp.status
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return HookResult(True, status, attempts)
                    error = f"HTTP {resp.status}"
            except TimeoutError:
                status, error = None, f"no answer within {timeout:g}s"
            except aiohttp.ClientError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                await asyncio.sleep(self.backoff * (2**attempt))
        return HookResult(False, status, attempts, error)
