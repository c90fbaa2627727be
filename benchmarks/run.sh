#!/usr/bin/env bash
# splitproxy benchmark: one command. See benchmarks/README.md.
#   benchmarks/run.sh [--quick] [--rounds N] [--duration S] [--warmup S] [--only a,b,c] ...
# Installs wrk and nginx (apt-get, when missing; needs root), uses $REPO/.venv (or creates it
# with the project installed), then runs the interleaved benchmark (run.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$here/.." && pwd)"

need=()
for b in wrk nginx taskset; do command -v "$b" >/dev/null 2>&1 || need+=("$b"); done
if ((${#need[@]})); then
  pkgs=()
  for b in "${need[@]}"; do case $b in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$b") ;; esac; done
  echo "installing ${pkgs[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if [[ ! -x "$REPO/.venv/bin/python" ]]; then
  echo "creating $REPO/.venv with the project installed" >&2
  python3 -m venv "$REPO/.venv"
  "$REPO/.venv/bin/pip" install -q -e "$REPO"
fi
py="$REPO/.venv/bin/python"
# run.py itself is stdlib only; the proxies and the open-loop generator need these
"$py" -c 'import aiohttp, uvloop' 2>/dev/null || "$REPO/.venv/bin/pip" install -q aiohttp uvloop

exec "$py" "$here/run.py" --py "$py" "$@"
