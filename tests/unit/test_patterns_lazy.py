"""RE2 is imported by the first regex compiled, not with the config package, and the lazily
made options are the ones every pattern gets (a bounded program, no stderr)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from splitproxy.config.patterns import _re2, compile_pattern

_PROBE = """
import sys
import splitproxy.config
from splitproxy.config.patterns import compile_pattern
before = 're2' in sys.modules
p = compile_pattern('v[0-9]+')
print(before, 're2' in sys.modules, bool(p.fullmatch('v12')), p.fullmatch('v12x') is None)
"""


def test_re2_is_imported_by_the_first_pattern_only() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == ["False", "True", "True", "True"]


def test_the_options_are_made_once_and_bound_the_program() -> None:
    module, options = _re2()
    assert _re2() == (module, options)
    assert options.max_mem == 1 << 20
    assert options.log_errors is False
    with pytest.raises(ValueError, match="linear time"):
        compile_pattern(r"(a)\1")


def test_a_pattern_nested_too_deeply_is_a_value_error_not_a_crash() -> None:
    # under the length limit, but deeper than Python's parser recurses (it checks first)
    with pytest.raises(ValueError, match="nested too deeply"):
        compile_pattern("(" * 500 + "a" + ")" * 500)
    assert compile_pattern("(" * 50 + "a" + ")" * 50).fullmatch("a")
