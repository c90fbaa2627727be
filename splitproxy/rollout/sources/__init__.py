"""External metric sources for rollout checks: a Prometheus query, or a web endpoint.

Each source turns a URL (and a query or a JSON field) into one number or a pass/fail; the
analyzer compares it with the check's bounds like any built-in metric.
"""

from __future__ import annotations

from splitproxy.rollout.sources.prometheus import query_prometheus
from splitproxy.rollout.sources.web import SourceError, WebReading, read_web

__all__ = ["SourceError", "WebReading", "query_prometheus", "read_web"]
