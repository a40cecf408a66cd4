"""ggml-cpu's matrix products on caller data, for the kernel tests: random quantised blocks, the product through
sirius_test_ggml_mul_mat, and the error bound of ggml's activation quantisation."""

import platform

import numpy as np
from gguf import GGMLQuantizationType as QT

from sirius_local._native import check, ffi, lib

# weights and bytes per block, offsets of the block's fp16 scales (Q4_1: the scale d and the minimum m)
BLOCK = {QT.Q6_K: (256, 210, [208]), QT.Q4_K: (256, 144, [0, 2]), QT.Q4_1: (32, 20, [0, 2])}


def random_blocks(qtype, rows: int, n: int, rng) -> np.ndarray:
    """Random bytes are valid blocks once the fp16 scales are finite and modest."""
    weights, size, f16 = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(rows * n // weights, size), dtype=np.uint8)
    for off in f16:
        raw[:, off:off + 2] = rng.uniform(-0.02, 0.02, size=len(raw)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def ggml_mul_mat(qtype, w: np.ndarray, x: np.ndarray, threads: int = 2, repack: bool = False) -> np.ndarray:
    rows, cols, n = w.shape[0], x.shape[0], x.shape[1]
    w = np.ascontiguousarray(w)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((cols, rows), dtype=np.float32)
    check(lib.sirius_test_ggml_mul_mat(int(qtype), n, rows, cols, ffi.cast("void *", w.ctypes.data),
                                  ffi.cast("float *", x.ctypes.data), ffi.cast("float *", out.ctypes.data), threads,
                                  int(repack)))
    return out


def cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False


X86_AVX2 = platform.machine() in ("x86_64", "AMD64") and cpu_has("avx2")


def q8_bound(wf: np.ndarray, x: np.ndarray, block: int = 256) -> np.ndarray:
    """ggml quantises each column to Q8_K (256-wide blocks; Q8_1 for Q4_1: 32-wide), step max|x|/127:
    |x - x_q| <= step/2 elementwise, so the product may differ from the float one by at most sum over blocks of
    step/2 * sum |w|, plus float rounding."""
    n = x.shape[1]
    step = np.abs(x.reshape(len(x), n // block, block)).max(axis=2) / 127.0        # [cols, blocks]
    wabs = np.abs(wf).reshape(len(wf), n // block, block).sum(axis=2)              # [rows, blocks]
    return (step[:, None, :] / 2 * wabs[None, :, :]).sum(axis=2) * 1.001 + 1e-4 * (np.abs(x) @ np.abs(wf).T)
