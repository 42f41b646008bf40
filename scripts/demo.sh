#!/usr/bin/env bash
# Set up and run the main job. Until `ttscale solve` lands this shows the command line and what is
# registered.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ttscale --help
.venv/bin/ttscale plugins
