"""``rollout.test`` in the routing file: `splitproxy.config.TestJob`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.config import TestJob
from splitproxy.config.parse import problems_from


def problems(data: dict[str, Any]) -> list[str]:
    """What the user is told about a bad ``test:`` section, as ``path: message``."""
    with pytest.raises(ValidationError) as info:
        TestJob.model_validate(data)
    return [str(p) for p in problems_from(info.value)]


def test_a_full_test_job_parses_as_written() -> None:
    job = TestJob.model_validate(
        {
            "command": ["./smoke.sh", "--fast", " "],
            "timeout": "90s",
            "env": {"BASE_PATH": "/api", "_X1": " padded ", "EMPTY": ""},
            "cwd": "/srv/tests",
        }
    )
    assert job.command == ("./smoke.sh", "--fast", " ")  # arguments are passed verbatim
    assert job.timeout == 90.0
    assert job.env == {"BASE_PATH": "/api", "_X1": " padded ", "EMPTY": ""}
    assert job.cwd == "/srv/tests"
    assert TestJob.model_validate(job.model_dump()) == job


def test_defaults_are_five_minutes_no_env_and_the_proxys_directory() -> None:
    job = TestJob.model_validate({"command": ["true"]})
    assert (job.timeout, job.env, job.cwd) == (300.0, {}, None)


@pytest.mark.parametrize(("timeout", "seconds"), [("500ms", 0.5), ("1h", 3600.0), (2, 2.0)])
def test_timeouts_up_to_an_hour_are_accepted(timeout: Any, seconds: float) -> None:
    assert TestJob.model_validate({"command": ["true"], "timeout": timeout}).timeout == seconds


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (
            "./smoke.sh --fast",
            'command: must be a list of arguments, e.g. ["./smoke.sh", "--fast"]',
        ),
        ([], "command: must not be empty"),
        (["sleep", 5], "command[1]: an argument must be a string (quote it: '5')"),
        (["run", True], "command[1]: an argument must be a string"),
        (["run", ""], "command[1]: must not be empty"),
        (["ru\0n"], "command[0]: must not contain a NUL character"),
        (["x"] * 65, "command: must have at most 64 arguments"),
    ],
)
def test_a_bad_command_is_named_with_its_argument(command: Any, problem: str) -> None:
    assert problems({"command": command}) == [problem]


def test_a_command_is_required_and_may_have_64_arguments() -> None:
    assert problems({"timeout": "1m"}) == ["command: is required"]
    assert len(TestJob.model_validate({"command": ["x"] * 64}).command) == 64


@pytest.mark.parametrize("timeout", ["0s", 0, "1h1s", "2h"])
def test_a_timeout_must_be_positive_and_at_most_an_hour(timeout: Any) -> None:
    assert problems({"command": ["true"], "timeout": timeout}) == [
        "timeout: must be a duration > 0 and <= 1h"
    ]


def test_a_timeout_that_is_not_a_duration_is_refused() -> None:
    assert problems({"command": ["true"], "timeout": "soon"}) == [
        "timeout: 'soon' is not a duration such as 30s, 5m, 1h30m or 500ms"
    ]


VARIABLE = "must be a variable name: letters, digits and '_', not a digit first"
PRINTABLE = "must be printable (no NUL, line breaks or other controls)"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"1ST": "x"}, f"env.1ST: {VARIABLE}"),
        ({"A-B": "x"}, f"env.A-B: {VARIABLE}"),
        ({"SPLITPROXY_X": ""}, "env.SPLITPROXY_X: names starting SPLITPROXY_ are set by the proxy"),
        ({"A": "x\ny"}, f"env.A: {PRINTABLE}"),
        ({"A": "x\0"}, f"env.A: {PRINTABLE}"),
        ({"PORT": 8080}, "env.PORT: a value must be a string (quote it: '8080')"),
        (["A=b"], "env: must be a mapping of variable names to values"),
    ],
)  # fmt: skip
def test_a_bad_environment_is_named_with_its_variable(env: Any, problem: str) -> None:
    assert problems({"command": ["true"], "env": env}) == [problem]


def test_a_bad_cwd_and_an_unknown_key_are_named() -> None:
    assert problems({"command": ["true"], "cwd": "", "shell": True}) == [
        "cwd: must be a directory path (not empty, no NUL character)",
        "shell: unknown key",
    ]
