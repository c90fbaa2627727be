"""The synthetic-traffic marker: how the proxy knows a request is its own (pure).

``traffic.py`` sends each synthetic request through the proxy's own listener with the header
``X-Splitproxy-Synthetic: <marker>``, where the marker names the route, the version to serve it
and a random token made once per process (`PROCESS_TOKEN`)::

    X-Splitproxy-Synthetic: 5f0c...e1 shop candidate

The data path consumes this header on every request. When its value is exactly a marker of the
current routing snapshot, the request is synthetic: it goes to that route and version (reason
``synthetic``), is counted apart, and reaches the upstream with ``X-Splitproxy-Synthetic: 1``
instead, so an application can tell synthetic requests from users'. Any other value is
dropped and the request is an ordinary one. The token never leaves the process (it is not
forwarded, logged or shown), so a client outside cannot force a version with the header, and
an upstream can trust ``X-Splitproxy-Synthetic: 1``: only the proxy sets it.

Worker processes (``splitproxy/workers``) share one token: the leader sends synthetic requests
through the shared listener, and whichever worker accepts them must know them. Their supervisor
makes it and hands it to each worker in `TOKEN_ENV`, which the worker reads and removes at
import (so no child process of the worker, such as git, inherits it).
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Final, Literal

HEADER: Final = "X-Splitproxy-Synthetic"
HEADER_LOWER: Final = b"x-splitproxy-synthetic"
UPSTREAM_LINE: Final = b"X-Splitproxy-Synthetic: 1\r\n"  # what the upstream sees
TOKEN_ENV: Final = "SPLITPROXY_WORKER_SYNTHETIC_TOKEN"  # set by the supervisor of workers
# 128 random bits, new at every start (of the supervisor, with workers)
PROCESS_TOKEN: Final = os.environ.pop(TOKEN_ENV, "") or secrets.token_hex(16)

Target = Literal["stable", "candidate"]
TARGETS: Final[tuple[Target, ...]] = ("stable", "candidate")


def marker(route: str, target: Target, token: str = PROCESS_TOKEN) -> str:
    """The header value that sends a synthetic request to ``route``'s ``target``. Route names
    are ``[A-Za-z0-9_.-]`` (the model checks them), so the value is a valid header value."""
    return f"{token} {route} {target}"


def read_marker(value: bytes, token: bytes) -> tuple[bool, str, Target | None]:
    """Read a synthetic header's value: (ours, route name, target). ``ours`` is whether the
    value starts with this process's token (compared in constant time); the name and target
    are set only when the whole value is a well-formed marker. A value that is ours but not
    well formed, or that names a route the snapshot no longer has, must never pass as a
    user's request. Parsing the value (rather than holding every marker of the snapshot in a
    table) keeps a reload from rebuilding three strings per route."""
    head, _, rest = value.partition(b" ")
    if not hmac.compare_digest(head, token):
        return False, "", None
    name, _, target = rest.partition(b" ")
    if target == b"candidate":
        return True, name.decode("latin-1"), "candidate"
    if target == b"stable":
        return True, name.decode("latin-1"), "stable"
    return True, "", None
