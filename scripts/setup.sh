#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install ttscale into it, editable, with the
# extras named in $TTSCALE_EXTRAS (default: dev). Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned in the hf extra: 2.13.0 has a CPU wheel on these machines, where an unpinned
# torch would pull gigabytes of CUDA packages.
.venv/bin/python -m pip install --quiet -e ".[${TTSCALE_EXTRAS:-dev}]"
