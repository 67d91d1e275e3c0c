#!/usr/bin/env bash
# Run Bastion's whole test suite.  Installs what it needs on a bare Debian machine: the Debian peers
# the compatibility tests run against (clamav, clamav-daemon, clamdscan, clamav-testfiles, yara)
# and the Python packages (into ./.venv).  Usage:  bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_python_venv
ensure_debian_peers
make_venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
