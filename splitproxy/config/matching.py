"""What the routing file matches requests by: a header or a cookie, present, equal to a value,
or fully matching a regular expression (RE2, `splitproxy.config.patterns`)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import AfterValidator, model_validator

from splitproxy.config.fields import CookieName, Frozen, HeaderName
from splitproxy.config.patterns import compile_pattern


def _compiles(v: str) -> str:
    compile_pattern(v)  # a ValueError says why (RE2: linear-time matching only)
    return v


RegexText = Annotated[str, AfterValidator(_compiles)]
"""A regular expression from the routing file, refused unless RE2 can compile it."""


class HeaderOrCookieRule(Frozen):
    """A request header or a cookie (exactly one), present, equal to ``value``, or fully
    matching ``regex`` (at most one of the two)."""

    header: HeaderName | None = None
    cookie: CookieName | None = None
    value: str | None = None
    regex: RegexText | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'header' or 'cookie'")
        if self.value is not None and self.regex is not None:
            raise ValueError("give at most one of 'value' or 'regex'")
        return self
