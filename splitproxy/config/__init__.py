"""The routing file: its schema (validated, immutable models) and its parser.

Everything here is pure: it imports the standard library, pydantic and PyYAML, never asyncio,
aiohttp, a socket or a clock (only `read_routing_file` reads the file it is given), so
``splitproxy check`` can validate a file without loading the proxy.

By topic: `fields` (names, durations, rates, the `Frozen` base), `routes` (routes and their
backends), `rollout` (steps, checks, guard, hooks, strategies), `traffic` (synthetic traffic),
`mirror` (copies of requests to the candidate), `testjob` (the blue/green test job),
`parse` (YAML to models, problems with their paths, reading the file), `vocabulary` (words
every layer shares).
"""

from __future__ import annotations

from splitproxy.config.fields import parse_duration
from splitproxy.config.mirror import Mirror, MirrorCompare, check_warnings
from splitproxy.config.parse import (
    content_hash,
    known_routes,
    load_document,
    parse_routing,
    read_routing_bytes,
    read_routing_file,
    summary,
    validate_routing,
)
from splitproxy.config.rollout import (
    LATENCY_QUANTILES,
    CompareCheck,
    Guard,
    Hook,
    MetricCheck,
    PrometheusCheck,
    Rollout,
    Step,
    WebCheck,
)
from splitproxy.config.routes import Backend, Match, Override, Route, RoutingConfig, Sticky
from splitproxy.config.testjob import TestJob
from splitproxy.config.traffic import Traffic

__all__ = [
    "LATENCY_QUANTILES",
    "Backend",
    "CompareCheck",
    "Guard",
    "Hook",
    "Match",
    "MetricCheck",
    "Mirror",
    "MirrorCompare",
    "Override",
    "PrometheusCheck",
    "Rollout",
    "Route",
    "RoutingConfig",
    "Step",
    "Sticky",
    "TestJob",
    "Traffic",
    "WebCheck",
    "check_warnings",
    "content_hash",
    "known_routes",
    "load_document",
    "parse_duration",
    "parse_routing",
    "read_routing_bytes",
    "read_routing_file",
    "summary",
    "validate_routing",
]
