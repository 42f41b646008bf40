#!/usr/bin/env bash
# Set up and run every check: ruff, mypy --strict, and the test suite (which starts the embedded
# model, so the weights are assembled and llama-server is built first; both are cached).
set -euo pipefail
cd "$(dirname "$0")/.."
TTSCALE_EXTRAS=${TTSCALE_EXTRAS:-dev,math,local,laws,hf,server,ray} bash scripts/setup.sh
# bubblewrap gives the unit-test sandbox its strong backend; its tests skip, saying why, without it.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -q && apt-get install -y -q bubblewrap) >/dev/null 2>&1 || echo "bubblewrap not installed"
fi
.venv/bin/ttscale local-setup
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
