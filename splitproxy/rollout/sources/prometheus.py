"""A Prometheus check: an instant PromQL query whose single value is compared with bounds."""

from __future__ import annotations

import math

import aiohttp

from splitproxy.rollout.sources.web import SourceError


async def query_prometheus(
    session: aiohttp.ClientSession, base_url: str, query: str, *, timeout: float = 10.0
) -> float | None:
    """The value of an instant query, or None when it returns no series (no data yet).

    A query returning several series is an error: a check must name one number.
    """
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(
            url, params={"query": query}, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            body = await resp.json(content_type=None)
    except TimeoutError:
        raise SourceError(f"Prometheus at {base_url} did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise SourceError(f"Prometheus at {base_url}: {type(exc).__name__}: {exc}") from None
    except ValueError:
        raise SourceError(f"Prometheus at {base_url} did not answer JSON") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise SourceError(f"Prometheus rejected the query: {error or body!r}")
    data = body.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = result[1]
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise SourceError(f"the query returned {len(result)} series; a check needs one")
        value = result[0]["value"][1]
    else:
        raise SourceError(f"the query returned a {kind}; a check needs a scalar or one series")
    number = float(value)
    return None if math.isnan(number) else number
