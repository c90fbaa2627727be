"""An A/B test in the routing file: ``strategy: ab`` and its ``ab:`` section (pure).

An A/B test splits the users of an audience between stable and the candidate, stickily, and
measures business goals at the proxy (a request that matches, or a response header the app
sets); `splitproxy.rollout.ab` declares the winner with an anytime-valid test. The route must
have a sticky key (``sticky:`` with the seed cookie or a user header): it is the user's
identity, for the assignment and for counting::

    rollout:
      strategy: ab
      ab:
        split: 50                 # % of the audience's users on the candidate
        audience:                 # all must match; everyone else stays on stable, uncounted
          - {header: X-Plan, value: pro}
        goals:                    # the first is the primary goal (the decision's)
          - {name: signup, method: POST, path_prefix: /signup, status: 2xx}
          - {name: purchase, header: X-Goal, value: purchase, value_header: X-Goal-Value}
        min_duration: 24h
        max_duration: 14d
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BeforeValidator, Field, field_validator, model_validator

from splitproxy.config.fields import (
    CHECK_NAME,
    Duration,
    Frozen,
    HeaderName,
    percent_resolution,
    status_codes,
    sub_path_error,
)
from splitproxy.config.matching import HeaderOrCookieRule, RegexText

if TYPE_CHECKING:
    from splitproxy.config.rollout import Rollout, Step

MAX_GOALS: Final = 8
DEFAULT_MAX_USERS: Final = 100_000
_METHOD_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ-")


def _status_class(value: Any) -> Any:
    """``2xx`` (any class 1xx-5xx), a status code or a list of codes, as the accepted codes."""
    if isinstance(value, bool):
        raise ValueError("must be a status class (2xx), a status code or a list of codes")
    return status_codes(value, "12345", "2xx, 3xx, ...")


class AudienceRule(HeaderOrCookieRule):
    """Who takes part: a request header or a cookie, present (neither ``value`` nor
    ``regex``), equal to ``value``, or fully matching ``regex``."""


class Goal(Frozen):
    """A business goal, counted per user: a request that matches (``method``,
    ``path_prefix`` or ``path_regex``, ``status``), a response header the app sets
    (``header``, with ``value`` exactly), or both. ``value_header``: a response header whose
    number is summed per variant on each conversion (revenue-like, a secondary metric)."""

    name: str
    method: str | None = None
    path_prefix: str | None = None
    path_regex: RegexText | None = None
    status: Annotated[tuple[int, ...], BeforeValidator(_status_class)] | None = None
    header: HeaderName | None = None
    value: str | None = None
    value_header: HeaderName | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not CHECK_NAME.fullmatch(v):
            raise ValueError("must be 1-64 letters, digits, '_', '.', ':' or '-'")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | None) -> str | None:
        if v is not None and (not v or not set(v.upper()) <= _METHOD_CHARS):
            raise ValueError("must be an HTTP method such as GET or POST")
        return None if v is None else v.upper()

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @model_validator(mode="after")
    def _something(self) -> Goal:
        if self.path_prefix is not None and self.path_regex is not None:
            raise ValueError("give at most one of 'path_prefix' or 'path_regex'")
        if self.value is not None and self.header is None:
            raise ValueError("'value' is the value of a response 'header': give the header")
        request = (self.method, self.path_prefix, self.path_regex, self.status)
        if self.header is None and all(v is None for v in request):
            raise ValueError(
                "a goal is a request (method, path_prefix or path_regex, status) or a "
                "response 'header'"
            )
        return self


def _percent(value: Any) -> Any:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
    return value


class AbTest(Frozen):
    """The ``ab:`` section of a ``strategy: ab`` rollout (see the module docstring)."""

    split: Annotated[float, BeforeValidator(_percent)] = Field(default=50.0, gt=0.0, lt=100.0)
    audience: tuple[AudienceRule, ...] = ()
    goals: tuple[Goal, ...] = Field(min_length=1, max_length=MAX_GOALS)
    alpha: float = Field(default=0.01, gt=0.0, le=0.2, strict=True)
    min_duration: Duration = 24 * 3600.0
    max_duration: Duration = 14 * 24 * 3600.0
    max_users: int = Field(default=DEFAULT_MAX_USERS, ge=100, le=10_000_000, strict=True)

    @field_validator("split")
    @classmethod
    def _resolution(cls, v: float) -> float:
        return percent_resolution(v)

    @field_validator("goals")
    @classmethod
    def _unique(cls, v: tuple[Goal, ...]) -> tuple[Goal, ...]:
        seen: set[str] = set()
        for i, goal in enumerate(v):
            if goal.name in seen:
                raise sub_path_error(f"[{i}].name", f"goal name {goal.name!r} appears twice")
            seen.add(goal.name)
        return v

    @model_validator(mode="after")
    def _durations(self) -> AbTest:
        if self.max_duration <= 0:
            raise sub_path_error(".max_duration", "must be a duration > 0")
        if self.min_duration > self.max_duration:
            raise sub_path_error(".min_duration", "must not be longer than 'max_duration'")
        return self

    @property
    def primary(self) -> Goal:
        """The goal the decision is made on (the first)."""
        return self.goals[0]


_NOT_FOR_AB: Final = (
    "steps",
    "step_weight",
    "max_weight",
    "max_duration",
    "iterations",
    "bake",
    "test",
)


def check_ab_rollout(rollout: Rollout) -> Rollout:
    """A ``strategy: ab`` rollout: its ``ab:`` section, and none of the canary's step fields
    (its one step is the split, held until the test decides). Any other strategy: no ``ab:``."""
    if rollout.strategy != "ab":
        if rollout.ab is not None:
            raise sub_path_error(".ab", "applies to strategy: ab")
        return rollout
    if rollout.ab is None:
        raise sub_path_error(".ab", "strategy: ab needs an 'ab' section with its 'goals'")
    for name in _NOT_FOR_AB:
        if getattr(rollout, name) is not None:
            where = "ab.max_duration" if name == "max_duration" else "ab.split"
            raise sub_path_error(f".{name}", f"an A/B test has no '{name}' (see '{where}')")
    if not rollout.auto_promote:
        raise sub_path_error(".auto_promote", "applies to strategy: bluegreen")
    if rollout.shadow is not None:  # its users meet the candidate from the first second
        raise sub_path_error(".shadow", "applies to strategy: canary or bluegreen")
    if "step" in {h.on for h in rollout.hooks}:
        raise sub_path_error(".hooks", "an A/B test has no 'step' hooks (it has one step)")
    for i, check in enumerate(rollout.checks):
        if getattr(check, "traffic", "user") != "user":
            raise sub_path_error(f".checks[{i}]", "'traffic' applies to strategy: bluegreen")
    return rollout


def ab_plan(ab: AbTest) -> tuple[Step, ...]:
    """The plan of an A/B test: one step at the split, as long as the test may run."""
    from splitproxy.config.rollout import Step

    return (
        Step.model_construct(
            weight=ab.split, interval=ab.max_duration, min_requests=None, pause=None
        ),
    )


__all__ = ["AbTest", "AudienceRule", "Goal", "ab_plan", "check_ab_rollout"]
