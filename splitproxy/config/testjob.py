"""The blue/green test job of the file: the command run against the candidate before switching.

A route's ``rollout.test`` becomes a `TestJob`: an argv list (never a shell line), a timeout,
extra environment and a working directory. The proxy runs it with the candidate's preview
address in ``SPLITPROXY_*`` variables (hence those names are reserved here); running it is
`splitproxy.rollout.testjob`'s job, not this module's.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import Field, StringConstraints, field_validator

from splitproxy.config.fields import Duration, Frozen, sub_path_error

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIX: Final = "SPLITPROXY_"
MAX_ARGS: Final = 64
MAX_TEST_TIMEOUT: Final = 3600.0

# An argument or an environment value is passed to the program byte for byte: the file-wide
# whitespace stripping would turn a deliberate " " argument into an empty one.
Verbatim = Annotated[str, StringConstraints(strip_whitespace=False)]


def _strings(value: Any, what: str) -> None:
    """Refuse a YAML number or boolean where a string is meant, naming the element."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if not isinstance(item, str):
            sub = f".{key}" if isinstance(value, dict) else f"[{key}]"
            number = isinstance(item, int | float) and not isinstance(item, bool)
            hint = f" (quote it: '{item}')" if number else ""
            raise sub_path_error(sub, f"{what} must be a string{hint}")


class TestJob(Frozen):
    """The test job of a blue/green rollout: ``command`` (an argv list, run without a shell)
    must exit 0 within ``timeout`` for the candidate to pass. ``env`` adds to the proxy's own
    environment; ``cwd`` is the directory it runs in (the proxy's own by default)."""

    __test__ = False  # a model, not a pytest test class

    command: tuple[Verbatim, ...] = Field(min_length=1)
    timeout: Duration = 300.0
    env: dict[str, Verbatim] = Field(default_factory=dict)
    cwd: str | None = None

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        if isinstance(v, str):
            # a shell line split on spaces would quote wrong; the user writes the list
            raise ValueError('must be a list of arguments, e.g. ["./smoke.sh", "--fast"]')
        if isinstance(v, list | tuple):
            if len(v) > MAX_ARGS:
                raise ValueError(f"must have at most {MAX_ARGS} arguments")
            _strings(v, "an argument")
        return v

    @field_validator("command")
    @classmethod
    def _args(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, arg in enumerate(v):
            if not arg:
                raise sub_path_error(f"[{i}]", "must not be empty")
            if "\0" in arg:
                raise sub_path_error(f"[{i}]", "must not contain a NUL character")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= MAX_TEST_TIMEOUT:
            raise ValueError("must be a duration > 0 and <= 1h")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_types(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of variable names to values")
        _strings(v, "a value")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME.fullmatch(name):
                raise sub_path_error(
                    f".{name}",
                    "must be a variable name: letters, digits and '_', not a digit first",
                )
            if name.startswith(RESERVED_ENV_PREFIX):
                raise sub_path_error(
                    f".{name}", f"names starting {RESERVED_ENV_PREFIX} are set by the proxy"
                )
            if not value.isprintable():
                raise sub_path_error(
                    f".{name}", "must be printable (no NUL, line breaks or other controls)"
                )
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        if v is not None and (not v or "\0" in v):
            raise ValueError("must be a directory path (not empty, no NUL character)")
        return v


__all__ = ["ENV_NAME", "MAX_TEST_TIMEOUT", "RESERVED_ENV_PREFIX", "TestJob"]
