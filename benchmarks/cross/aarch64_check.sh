#!/usr/bin/env bash
# The aarch64 build, checked on an x86 machine: cross-compiles llama.cpp (patched) and native/ with Debian's
# aarch64 cross compiler, then runs engine_check under qemu-user on the default model and on the host build,
# and compares. Needs: apt-get install g++-aarch64-linux-gnu qemu-user; the host package installed (pip install .).
#
#   benchmarks/cross/aarch64_check.sh [MODEL.gguf] [BUILD_DIR]     (BUILD_DIR default /tmp/sirius-aarch64)
#
# Prints both runs' token lines; exits non-zero if the build fails, if strict Sirius differs from dense greedy
# on either, or if the aarch64 dense tokens differ from the host's (reported, as ggml's NEON and AVX kernels
# round differently, but on the default model and prompt they agree).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
model="${1:-$(python3 -c 'from sirius_local import registry; print(registry.resolve(None))')}"
build="${2:-/tmp/sirius-aarch64}"
sysroot=/usr/aarch64-linux-gnu
command -v aarch64-linux-gnu-g++ >/dev/null || { echo "needs g++-aarch64-linux-gnu (apt-get install g++-aarch64-linux-gnu)"; exit 2; }
command -v qemu-aarch64 >/dev/null || { echo "needs qemu-user (apt-get install qemu-user)"; exit 2; }

mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod >"$build/configure.log"
start=$(date +%s)
ninja -C "$build" sirius >"$build/build.log"
echo "aarch64 build: $(( $(date +%s) - start )) s ($(nproc) cores)"
aarch64-linux-gnu-gcc -O2 -Wall -o "$build/engine_check" "$here/engine_check.c" -I"$root/native" \
  -L"$build/native" -lsirius -Wl,-rpath,"$build/native:$build/bin"
file "$build/native/libsirius.so" | sed 's/, BuildID.*//'

hostlib="$(python3 -c "from sirius_local._native import LIB_DIR; print(LIB_DIR)")"
gcc -O2 -Wall -o "$build/engine_check_host" "$here/engine_check.c" -I"$root/native" -L"$hostlib" -lsirius \
  -Wl,-rpath,"$hostlib"

echo "== host"
"$build/engine_check_host" "$model" 24 | tee "$build/host.txt"
echo "== aarch64 under qemu-user"
start=$(date +%s)
qemu-aarch64 -L "$sysroot" "$build/engine_check" "$model" 24 | tee "$build/aarch64.txt"
echo "(aarch64 run: $(( $(date +%s) - start )) s under emulation)"
if ! diff <(grep '^dense:' "$build/host.txt") <(grep '^dense:' "$build/aarch64.txt") >/dev/null; then
  echo "aarch64 dense greedy differs from the host's"; exit 1
fi
echo "aarch64 dense greedy equals the host's; strict Sirius equals dense greedy on both"
