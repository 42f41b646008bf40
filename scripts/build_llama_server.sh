#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the source that the llama-cpp-python sdist on PyPI carries
# (vendor/llama.cpp), once, into a cache; later runs only print the path. CPU only.
#
#   scripts/build_llama_server.sh            prints the path of the built binary on stdout
#
# Cache: $TTSCALE_CACHE (default ~/.cache/ttscale)/llama-server/<version>/bin/llama-server.
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${TTSCALE_CACHE:-$HOME/.cache/ttscale}
PREFIX="$CACHE/llama-server/$VERSION"
BINARY="$PREFIX/bin/llama-server"
if [ -x "$BINARY" ]; then
  echo "$BINARY"
  exit 0
fi
for tool in cmake make cc c++; do
  command -v "$tool" >/dev/null || { echo "build_llama_server: $tool is needed (apt-get install cmake build-essential)" >&2; exit 1; }
done
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build_llama_server: fetching the llama-cpp-python $VERSION sdist from PyPI" >&2
"$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
  "llama-cpp-python==$VERSION" -d "$work" >&2
tar xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "build_llama_server: building llama-server (several minutes on 2 cores)" >&2
# Static libraries make one self-contained binary that survives the build tree's removal;
# no curl: the server never fetches models.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DGGML_NATIVE=ON >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$PREFIX/bin.tmp"
cp "$work/build/bin/llama-server" "$PREFIX/bin.tmp/"
rm -rf "$PREFIX/bin"
mv "$PREFIX/bin.tmp" "$PREFIX/bin"  # appears whole or not at all
echo "$BINARY"
