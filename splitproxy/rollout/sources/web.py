"""A web check: GET a URL; 2xx passes, or a field of its JSON answer is the value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


class SourceError(Exception):
    """An external source gave no usable value (unreachable, bad answer, missing field)."""


@dataclass(frozen=True, slots=True)
class WebReading:
    status: int
    value: float | None  # the JSON field's value, when a field was asked for


def json_field(data: Any, path: str) -> Any:
    """``a.b.0.c`` (or ``a.b[0].c``) into nested JSON (list indexes as numbers)."""
    node = data
    for part in re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".").split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SourceError(f"the answer has no field {path!r}")
    return node


async def read_web(
    session: aiohttp.ClientSession,
    url: str,
    *,
    field: str | None = None,
    timeout: float = 10.0,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
) -> WebReading:
    """Fetch ``url`` (GET, or ``method`` with ``headers`` and ``body``); with ``field``, the
    number at that JSON path is the reading."""
    try:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            data=body.encode() if body is not None else None,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if field is None:
                await resp.read()
                return WebReading(resp.status, None)
            if not 200 <= resp.status < 300:
                raise SourceError(f"HTTP {resp.status} from {url}")
            data = await resp.json(content_type=None)
    except TimeoutError:
        raise SourceError(f"no answer from {url} within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise SourceError(f"{url}: {type(exc).__name__}: {exc}") from None
    except ValueError:
        raise SourceError(f"{url} did not answer JSON") from None
    value = json_field(data, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(f"field {field!r} is not a number: {value!r}")
    return WebReading(resp.status, float(value))
