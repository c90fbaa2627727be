"""The blue/green demo's test job: a smoke test of the candidate through the proxy's preview URL.

``python -m splitproxy.demo.smoke`` sends a few GETs to ``SPLITPROXY_PREVIEW_URL`` (set by the
proxy when it runs a test job), prints one line per answer and exits 0 when every answer was a
200 naming the version it came from, 1 otherwise (2 without the variable). It is what a real
test job looks like at its smallest: the proxy judges it by its exit code alone, and shows the
last line it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

PATHS = ("/", "/cart", "/checkout")


def check(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """GET ``url``: did it answer 200 naming its version, and a line saying what came back."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return False, f"no answer: {exc}"
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        version = None
    ok = status == 200 and isinstance(version, str)
    return ok, f"{status} from {version or 'an unknown version'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitproxy.demo.smoke")
    parser.add_argument("--rounds", type=int, default=3, help="times through the paths")
    args = parser.parse_args(argv)
    base = os.environ.get("SPLITPROXY_PREVIEW_URL")
    if not base:
        print("smoke: SPLITPROXY_PREVIEW_URL is not set (the proxy sets it for a test job)")
        return 2
    passed = total = 0
    for _ in range(args.rounds):
        for path in PATHS:
            ok, what = check(base.rstrip("/") + path)
            total += 1
            passed += ok
            print(f"GET {path}: {what}", flush=True)
    print(f"smoke: {passed}/{total} requests passed against {base}")
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
