#!/usr/bin/env bash
# mypy --strict over the package as it installs: strategies/ and verifiers/ become
# ttscale.strategies and ttscale.verifiers (setuptools package-dir), which mypy cannot map by
# itself, so it checks a tree of links laid out like the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/ttscale"
for entry in ttscale/*; do
  ln -s "$root/$entry" "$tree/ttscale/$(basename "$entry")"
done
ln -s "$root/strategies" "$tree/ttscale/strategies"
ln -s "$root/verifiers" "$tree/ttscale/verifiers"
ln -s "$root/examples/data" "$tree/ttscale/data"
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p ttscale "$@"
