#!/usr/bin/env bash
# Set up and run the main job: majority voting over 8 samples per problem from the embedded model
# (Qwen2.5-Coder-0.5B-Instruct on llama.cpp, CPU) on the bundled arithmetic set. Prints the
# coverage table and the law fit, and writes runs/arithmetic.jsonl and a PNG plot beside it.
# Each stage prints its time; building llama-server (first run only) shows cmake's progress.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {
  local name=$1 started=$SECONDS
  shift
  echo "== $name..."
  "$@"
  echo "== $name: $((SECONDS - started)) s"
}

stage "install (scripts/setup.sh)" env TTSCALE_EXTRAS="${TTSCALE_EXTRAS:-local,laws}" \
  bash scripts/setup.sh
stage "model and llama-server (ttscale local-setup)" .venv/bin/ttscale local-setup
stage "solve" .venv/bin/ttscale solve arithmetic --strategy majority -n 8 --max-tokens 256 \
  --limit 12 --out runs/arithmetic.jsonl "$@"
echo "== total: $SECONDS s"
