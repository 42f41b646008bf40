#!/usr/bin/env bash
# Set up and run the main job: majority voting over 8 samples per problem from the embedded model
# (Qwen2.5-Coder-0.5B-Instruct on llama.cpp, CPU) on the bundled arithmetic set. Prints the
# coverage table and the law fit, and writes runs/arithmetic.jsonl and a PNG plot beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
TTSCALE_EXTRAS=${TTSCALE_EXTRAS:-local,laws} bash scripts/setup.sh
.venv/bin/ttscale local-setup
.venv/bin/ttscale solve arithmetic --strategy majority -n 8 --max-tokens 256 \
  --limit 12 --out runs/arithmetic.jsonl "$@"
