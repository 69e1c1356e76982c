#!/usr/bin/env bash
# Installs everything the tests need, then runs the linters, the type checker and the whole
# test suite. A run that collects no tests fails (pytest exits 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
