#!/usr/bin/env bash
# The GPU check, on the lent machine, from the repo root, with .device/ carried (made by prepare.sh here):
#
#   benchmarks/device/run.sh [check.py options]        writes $OUT/device_check.json and $OUT/device_check.log
#
# Installs nothing system-wide: the CUDA-built package and the missing wheels go to /tmp/sirius-site.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-/tmp/device-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
site=/tmp/sirius-site
rm -rf "$site" && mkdir -p "$site"
tar -C "$site" -xJf "$root/.device/sirius_local-cuda.tar.xz" || { echo "no .device/sirius_local-cuda.tar.xz: run prepare.sh here and carry .device"; exit 2; }
export PYTHONPATH="$site" SIRIUS_LOCAL_LIB_DIR="$site/sirius_local/lib"  # not the checkout's sirius_local/
# the wheels only where this Python lacks them (the GPU machine's has numpy, pyyaml, requests and tqdm)
python3 -c "import cffi, gguf" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$root"/.device/wheels/*.whl || exit 2
# cuBLAS and the CUDA runtime: the build took cuBLAS from a pip wheel here; there, PyTorch's environment has it
libs="$(python3 - <<'PY'
import glob, os, sys
found = set()
for p in sys.path + ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]:
    for pat in ("nvidia/cu13/lib/libcublas.so.13", "nvidia/cublas/lib/libcublas.so.13", "libcublas.so.13",
                "nvidia/cu13/lib/libcudart.so.13", "nvidia/cuda_runtime/lib/libcudart.so.13", "libcudart.so.13"):
        for f in glob.glob(os.path.join(p, pat)):
            found.add(os.path.dirname(f))
print(":".join(sorted(found)))
PY
)"
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
nproc
ldd "$site/sirius_local/lib/libggml-cuda.so" | grep -E "not found|cublas|cudart|libcuda" || true
(cd /tmp && python3 -c "from sirius_local import _native; print('libraries:', _native.LIB_DIR)" &&
  python3 -m sirius_local.cli --version) || { echo "the package does not load"; exit 2; }
start=$(date +%s)
# at most 8 minutes in all (the issue's budget, leaving a rerun inside the 15 minutes of device time); the JSON
# is rewritten after each shape, so a run cut short still reports what it finished
timeout 450 python3 "$root/benchmarks/device/check.py" --out "$OUT" "$@"
rc=$?
echo "check.py: rc $rc, $(( $(date +%s) - start )) s"
exit $rc
