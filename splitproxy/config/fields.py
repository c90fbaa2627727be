"""The small pieces every part of the routing file is built from.

Name patterns, durations, rates and percentages, the `Frozen` base every model derives from,
and the helpers that shape an error's path and wording. Pure: the standard library and
pydantic only.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# RFC 9110 token characters: what a header field name may contain.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
COOKIE_NAME = HEADER_NAME


def _name(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise ValueError(f"must be a {what}")
        return v

    return AfterValidator(check)


HeaderName = Annotated[str, _name(HEADER_NAME, "header field name")]
CookieName = Annotated[str, _name(COOKIE_NAME, "cookie name")]


def check_header_names(headers: dict[str, str]) -> dict[str, str]:
    """Check a ``headers:`` mapping's names; the error's path names the bad header."""
    for header in headers:
        if not HEADER_NAME.fullmatch(header):
            raise sub_path_error(f".{header}", "must be a header field name")
    return headers


HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4096}")


def check_added_headers(headers: dict[str, str], reserved: frozenset[str]) -> dict[str, str]:
    """Check headers the proxy adds to requests it makes itself (synthetic traffic, mirrored
    copies): valid names, none the proxy sets (``reserved``, lower-case), printable values."""
    check_header_names(headers)
    for header, value in headers.items():
        if header.lower() in reserved:
            raise sub_path_error(f".{header}", "is set by the proxy, not in the routing file")
        if not HEADER_VALUE.fullmatch(value):
            raise sub_path_error(f".{header}", "must be printable ASCII (no line breaks)")
    return headers


class Frozen(BaseModel):
    """The base of every model of the file: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# --- durations, rates and percentages ----------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
CHECK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


def parse_duration(value: Any, *, unit_required: bool = False) -> float:
    """A duration in seconds: ``30s``, ``5m``, ``1h30m``, ``500ms``, ``1.5s`` or a number of
    seconds (a whole number is refused when ``unit_required``: ``500`` could be either)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 500ms")
    if isinstance(value, int | float):
        if unit_required and isinstance(value, int):  # 500: milliseconds or seconds?
            raise ValueError(f"give a unit, e.g. {value}ms or {value}s")
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 1h30m or 500ms")
    else:
        raise ValueError("must be a duration such as 30s, 5m or 500ms")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration >= 0")
    return seconds


def parse_fraction(value: Any) -> Any:
    """A rate: a number in [0, 1] or a percentage string (``"1%"``, ``"0.5 %"``)."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Fraction = Annotated[float, BeforeValidator(parse_fraction)]


def percent_resolution(v: float) -> float:
    """A weight in percent, refused when finer than the routing decision's 0.01 percent."""
    if round(v * 100) != round(v * 100, 6):
        raise ValueError("has a resolution of 0.01 percent")
    return v


def sub_path_error(sub: str, message: str) -> PydanticCustomError:
    """An error about an element below the validated field (``steps`` + ``[2]``)."""
    return PydanticCustomError("sub_path", "{message}", {"sub": sub, "message": message})


def fmt_number(v: Any) -> str:
    """A bound as an error message shows it: ``100`` rather than ``100.0``."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def status_codes(value: Any, classes: str, hint: str) -> tuple[int, ...]:
    """A status class (``2xx``, for each first digit in ``classes``), a status code or a
    list of codes, as the sorted codes it accepts. ``hint`` names the classes in the error of
    a code that is not one (``"2xx, 3xx"``); with every class allowed (``"12345"``), ``6xx``
    is refused as a class."""
    if isinstance(value, str) and len(value.strip()) == 3 and value.strip()[1:].lower() == "xx":
        first = value.strip()[0]
        if first in classes:
            return tuple(range(int(first) * 100, int(first) * 100 + 100))
        if classes == "12345":
            raise ValueError(f"{value!r} is not a status class (1xx to 5xx)")
    codes = value if isinstance(value, list | tuple) else [value]
    if not codes:
        raise ValueError("give at least one status code")
    out = []
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int | str):
            raise ValueError(f"{code!r} is not a status code")
        try:
            number = int(code)
        except ValueError:
            raise ValueError(f"{code!r} is not a status code (or {hint})") from None
        if not 100 <= number <= 599:
            raise ValueError(f"{number} is not a status code (100-599)")
        out.append(number)
    return tuple(sorted(set(out)))
