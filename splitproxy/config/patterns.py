"""Regular expressions from the routing file, compiled with RE2.

An override's ``regex`` runs on every request, against a header or cookie any client chooses.
Python's ``re`` backtracks: ``(a+)+b`` against a few dozen ``a`` takes seconds and would stall
the event loop for every user. RE2 matches in time linear in the input, always; the price is
that backreferences and lookarounds are not supported, and `compile_pattern` refuses them with
a message `splitproxy check` shows.

RE2 (the module, its C++ runtime and libstdc++: 2.5 MiB of RSS) is imported by the first
`compile_pattern`, so a proxy whose routing file has no regex never loads it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final, Protocol

MAX_PATTERN: Final = 1024  # characters; a routing-file regex longer than this is a mistake


class Pattern(Protocol):
    """A compiled pattern: only full matches are used."""

    def fullmatch(self, text: str) -> object | None: ...


def compile_pattern(pattern: str) -> Pattern:
    """``pattern`` compiled for linear-time matching; `ValueError` saying why it cannot be."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"a regular expression longer than {MAX_PATTERN} characters")
    try:  # Python's parser words syntax errors best (compiling never backtracks)
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    except RecursionError:  # "((((...a))))": Python's parser recurses once per group
        raise ValueError("a regular expression nested too deeply") from None
    re2, options = _re2()
    try:
        compiled: Pattern = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"unsupported regular expression ({reason}): matching must take linear time, so "
            "backreferences and lookarounds are refused"
        ) from None
    return compiled


@functools.cache
def _re2() -> tuple[Any, Any]:
    """The ``re2`` module and the options every pattern is compiled with, made once."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the error comes back as an exception; no stderr noise
    options.max_mem = 1 << 20  # compiled program size, bytes
    return re2, options
