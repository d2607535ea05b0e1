#!/usr/bin/env bash
# Make the project runnable on a fresh Debian machine: a venv with the project installed,
# and redis-server, chromium and curl on PATH (installed from Debian's packages when absent and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"

apt_install() {
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "bootstrap: please install: $*" >&2
    exit 1
  fi
}

# redis-server: every test starts its own; redis-cli (Debian's redis-tools, which redis-server
# pulls in): the Redis Cluster tests make their cluster with `redis-cli --cluster create`;
# chromium: the status page tests load /_status in a real browser; curl: the README's commands
# (tests/integration/test_readme.py)
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first, pinned, so nothing else can pull another build of it
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e '.[test]'
  touch "$STAMP"
fi
