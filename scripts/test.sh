#!/usr/bin/env bash
# Set up and run every check: ruff, mypy --strict, and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
