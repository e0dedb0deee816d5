#!/usr/bin/env bash
# llama.cpp's own command-line tools, built from the very source llama-cpp-python vendors (its pinned sdist on the
# package registry carries vendor/llama.cpp/tools/), so the library and the tools are one version:
#   llama-server (make serve), llama-imatrix (export.imatrix), llama-quantize (quantizing with a matrix).
# Called by `make setup` (scripts/setup_venv.sh); safe to rerun. Installs into .venv/bin/. The build (~8 min on
# 2 cores, once) is kept in ${XDG_CACHE_HOME:-~/.cache}/chat-tune/, keyed by version and CPU flags, so another
# checkout or a new .venv copies it in seconds. Nothing but the package registry is reached.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=(llama-server llama-imatrix llama-quantize)
VERSION="$(sed -n 's/^llama-cpp-python==\([^ ;]*\).*/\1/p' requirements.txt)"
[ -n "$VERSION" ] || { echo "error: requirements.txt pins no llama-cpp-python==<version>" >&2; exit 2; }
# The library's CPU flags (setup_venv.sh): not -march=native, so the tools run on any x86-64 CPU with AVX2 too.
FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
KEY="$VERSION-$(printf '%s ' "${FLAGS[@]}" | sha256sum | cut -c1-12)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/chat-tune/llama-tools-$KEY"
STAMP=".venv/bin/.llama-tools-$KEY"

[ -f "$STAMP" ] && exit 0
if ! [ -x "$CACHE/bin/llama-server" ] || ! [ -x "$CACHE/bin/llama-imatrix" ] || ! [ -x "$CACHE/bin/llama-quantize" ]; then
  echo "setup: building llama.cpp's ${TOOLS[*]} from the llama-cpp-python==$VERSION sdist (the library's own source;" \
       "~8 min on 2 cores, once; kept in $CACHE)"
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  .venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
  tar xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  # Static, so the binaries need no library path; no curl, no TLS, no web UI (it would be fetched from a hub).
  cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    "${FLAGS[@]}" >"$WORK/configure.log" 2>&1 || { tail -20 "$WORK/configure.log" >&2; exit 1; }
  cmake --build "$WORK/build" -j "$(nproc)" --target "${TOOLS[@]}" >"$WORK/build.log" 2>&1 \
    || { grep -iE "error" "$WORK/build.log" | tail -5 >&2; exit 1; }
  mkdir -p "$CACHE/bin.partial"
  for t in "${TOOLS[@]}"; do cp "$WORK/build/bin/$t" "$CACHE/bin.partial/"; done
  rm -rf "$CACHE/bin" && mv "$CACHE/bin.partial" "$CACHE/bin"
fi
for t in "${TOOLS[@]}"; do install -m 755 "$CACHE/bin/$t" ".venv/bin/$t"; done
.venv/bin/llama-server --version >/dev/null 2>&1 || { echo "error: .venv/bin/llama-server does not run" >&2; exit 1; }
rm -f .venv/bin/.llama-tools-* && echo "$VERSION" >"$STAMP"
echo "setup: llama.cpp tools ${TOOLS[*]} ($VERSION) in .venv/bin/"
