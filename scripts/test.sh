#!/usr/bin/env bash
# The project's one test command (README, CI): sets up everything the tests need, then runs
# ruff, mypy and pytest, failing on any of them.
#   - a virtual environment in .venv with the project and its `dev` extra;
#   - Debian packages only where a test needs the real thing (prometheus, chromium, redis-server), when missing.
# Extra arguments go to pytest (e.g. scripts/test.sh -k reload; -n 0 for no worker processes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# The metrics test scrapes with a real Prometheus server.
if ! command -v prometheus >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing prometheus (Debian package) for the metrics integration test"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }) ||
    echo "warning: could not install prometheus" >&2
fi
# The dashboard test drives the page in a real headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing chromium (Debian package) for the dashboard browser test"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }) ||
    echo "warning: could not install chromium" >&2
fi
# The GitOps tests serve a routing file from a real (local, bare) git repository.
if ! command -v git >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing git (Debian package) for the git+ routing file tests"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >/dev/null; }) ||
    echo "warning: could not install git" >&2
fi
# The compose test validates docker-compose.yml with docker-compose (no engine needed).
if ! command -v docker-compose >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing docker-compose (Debian package) for the compose file test"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }) ||
    echo "warning: could not install docker-compose" >&2
fi

# The state backend and replica tests run a real Redis server on loopback.
if ! command -v redis-server >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing redis-server (Debian package) for the Redis state backend tests"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }) ||
    echo "warning: could not install redis-server" >&2
fi

echo "== ruff"
.venv/bin/ruff check splitproxy tests benchmarks
.venv/bin/ruff format --check splitproxy tests benchmarks
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# The project's bytecode, written once here: every test subprocess (`python -m splitproxy ...`)
# imports the package, and where PYTHONDONTWRITEBYTECODE is set each one would
# compile it from source again (about a quarter of its start-up CPU). Stale files are not a
# risk: Python checks each one against its source's mtime and size.
.venv/bin/python -m compileall -q splitproxy tests >/dev/null
# Four pytest-xdist workers, each test handed to the next free one (worksteal): the suite mostly
# waits (rollout intervals, bakes, subprocess proxies: its CPU time is under half its serial
# wall time), so four overlap those waits even on CI's two cores. Every test binds port 0 or
# holds its ports (tests/helpers.py, held_port) and writes under its own tmp_path.
# PYTEST_WORKERS=0 (or a later `-n 0`) runs them one after another in this process.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-4}" --dist worksteal "$@"
