#!/usr/bin/env bash
# Prepares .device/ for benchmarks/device/run.sh, here (the GPU machine has no network and no llama.cpp
# source): the package built with CUDA for one architecture, packed, and the wheels that machine lacks.
#
#   benchmarks/device/prepare.sh [ARCH]       ARCH: CUDA architecture, default 90-real (H100 / H200)
#
# Needs nvcc and cuBLAS (cmake/Cuda.cmake: the toolkit's, or `pip install nvidia-cublas` in the active venv).
# SIRIUS_CUDA_BUILD names the build folder (default /tmp/sirius-cuda-build; kept, so a rerun is incremental).
# .device/ is git-ignored (.git/info/exclude) and travels with the device tool's `carry: [".device"]`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
arch="${1:-90-real}"
build="${SIRIUS_CUDA_BUILD:-/tmp/sirius-cuda-build}"
dev="$root/.device"
mkdir -p "$dev/wheels" "$build"
grep -qx '/.device/' "$root/.git/info/exclude" 2>/dev/null || echo '/.device/' >> "$root/.git/info/exclude"

start=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch" \
  python3 -m pip wheel "$root" --no-deps -w "$build/wheel" -C build-dir="$build/cmake" >"$build/wheel.log" 2>&1 \
  || { tail -30 "$build/wheel.log"; exit 1; }
echo "CUDA build ($arch): $(( $(date +%s) - start )) s on $(nproc) cores (log: $build/wheel.log)"

stage="$build/stage"
rm -rf "$stage" && mkdir -p "$stage"
whl="$(ls -t "$build"/wheel/sirius_local-*.whl | head -1)"
python3 -m zipfile -e "$whl" "$stage"
test -f "$stage/sirius_local/lib/libggml-cuda.so" || { echo "no libggml-cuda.so in $whl: not a CUDA build"; exit 1; }
tar -C "$stage" -cJf "$dev/sirius_local-cuda.tar.xz" sirius_local
ls -la "$stage/sirius_local/lib" "$dev/sirius_local-cuda.tar.xz"

# What the GPU machine's Python (3.12) lacks; numpy, pyyaml, requests and tqdm are there.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dev/wheels" cffi==2.1.1 pycparser==3.12 gguf==0.19.0
du -sh "$dev"
