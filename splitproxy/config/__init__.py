"""The routing file: its schema (validated, immutable models) and its parser.

Everything here is pure: it imports the standard library, pydantic and PyYAML, never asyncio,
aiohttp, a socket or a clock, so ``splitproxy check`` can validate a file without loading the
proxy.
"""

from __future__ import annotations

from splitproxy.config.schema import (
    LATENCY_QUANTILES,
    Backend,
    CompareCheck,
    Guard,
    Hook,
    Match,
    MetricCheck,
    Override,
    PrometheusCheck,
    Rollout,
    Route,
    RoutingConfig,
    Step,
    Sticky,
    Traffic,
    WebCheck,
    parse_duration,
    parse_routing,
    summary,
)

__all__ = [
    "LATENCY_QUANTILES",
    "Backend",
    "CompareCheck",
    "Guard",
    "Hook",
    "Match",
    "MetricCheck",
    "Override",
    "PrometheusCheck",
    "Rollout",
    "Route",
    "RoutingConfig",
    "Step",
    "Sticky",
    "Traffic",
    "WebCheck",
    "parse_duration",
    "parse_routing",
    "summary",
]
