"""ggml-cpu's quantised matrix products on random data, through sirius_test_ggml_mul_mat: every path a batch size can
take (vec_dot per column at 1; for Q6_K, patch 0004's small-batch kernel from 2 columns and tiled past 16 on AVX-512
builds, past 32 on AVX2 ones; for
Q4_K in the file layout, tiled from 8 columns; for Q4_K repacked as llama.cpp loads it, ggml's gemv at 1 column and
patch 0005's multi-column kernel from 2; for Q4_1, patch 0007's kernel from 2 columns) against a NumPy reference with
gguf's own dequantisation, and each small-batch kernel bit for bit against the one-column product it replaces
(vec_dot, the repacked gemv)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from kernels import BLOCK, X86_AVX2, cpu_has, ggml_mul_mat, q8_bound, random_blocks
from sirius_local._native import ffi, lib, check

needs_avx2 = pytest.mark.skipif(not X86_AVX2, reason="the small-batch kernels of patches 0004 and 0007 are AVX2 code")
# llama.cpp repacks Q4_K weights (8 rows interleaved) on x86 CPUs with AVX2, where patch 0005's kernel runs
needs_q4_k_repack = pytest.mark.skipif(not X86_AVX2, reason="Q4_K is repacked for the AVX2 kernels on x86 only")


@pytest.mark.parametrize("qtype", [QT.Q6_K, QT.Q4_K, QT.Q4_1])
@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 24, 32])
def test_matmul_matches_the_numpy_reference(qtype, cols):
    rng = np.random.default_rng(cols)
    rows, n = 40, 768  # 40 rows: not a multiple of the 16-row chunks; 3 super-blocks per row
    w = random_blocks(qtype, rows, n, rng)
    wf = dequantize(w, qtype).reshape(rows, n).astype(np.float64)
    x = rng.standard_normal((cols, n)).astype(np.float32)
    got = ggml_mul_mat(qtype, w, x)
    ref = x.astype(np.float64) @ wf.T
    err = np.abs(got - ref)
    # the activations are quantised in blocks as wide as the weights' (Q8_K for K-quants, Q8_1 for Q4_1)
    assert (err <= q8_bound(wf, x.astype(np.float64), block=BLOCK[qtype][0])).all(), float(err.max())


@pytest.mark.parametrize("threads", [1, 2])
def test_q6_k_small_batch_is_bit_identical_to_vec_dot(threads):
    """2..16 columns (2..32 where tiled is AVX2's, in pieces of 16) take patch 0004's kernel (tiled would from 8);
    one column takes ggml's vec_dot. The kernel keeps vec_dot's integer lanes and float order, so each column must
    come out bit for bit the same."""
    rng = np.random.default_rng(7)
    rows, n = 48, 1536
    most = 16 if cpu_has("avx512f") else 32
    w = random_blocks(QT.Q6_K, rows, n, rng)
    x = (rng.standard_normal((most, n)) * rng.uniform(0.1, 10, size=(most, 1))).astype(np.float32)
    single = np.stack([ggml_mul_mat(QT.Q6_K, w, x[c:c + 1], threads)[0] for c in range(most)])
    for cols in range(2, most + 1):
        np.testing.assert_array_equal(ggml_mul_mat(QT.Q6_K, w, x[:cols], threads), single[:cols])


@needs_avx2
@pytest.mark.parametrize("threads", [1, 2])
def test_q4_1_small_batch_is_bit_identical_to_vec_dot(threads):
    """Patch 0007: 2+ Q4_1 columns (pieces of 16; the rest of 1-3 interleaved) keep vec_dot's integer sums and
    float steps per column, so every column is bit for bit the one-column product, at row lengths of one run of
    unpacked blocks and of more (64 blocks a run), and row counts off the 16-row groups. Changing one input must
    change its column, so the equality is not vacuous."""
    rng = np.random.default_rng(5)
    most = 40
    for rows, n in [(48, 576), (37, 2560 + 64)]:
        w = random_blocks(QT.Q4_1, rows, n, rng)
        x = (rng.standard_normal((most, n)) * rng.uniform(0.1, 10, size=(most, 1))).astype(np.float32)
        single = np.stack([ggml_mul_mat(QT.Q4_1, w, x[c:c + 1], threads)[0] for c in range(most)])
        for cols in [2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 19, 32, 33, 40]:
            np.testing.assert_array_equal(ggml_mul_mat(QT.Q4_1, w, x[:cols], threads), single[:cols])
    x[2, 7] += np.abs(x[2]).max() / 10
    assert not np.array_equal(ggml_mul_mat(QT.Q4_1, w, x[:5], threads)[2], single[2])


@needs_q4_k_repack
@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 31, 32, 33, 40, 64])
def test_repacked_q4_k_matches_the_numpy_reference(cols):
    """Through CPU_REPACK, as llama.cpp loads Q4_K weights: 1 column takes ggml's gemv, 2+ patch 0005's kernel
    (past 32 columns in several calls)."""
    rng = np.random.default_rng(100 + cols)
    rows, n = 40, 768  # 5 groups of 8 interleaved rows; 3 super-blocks per row
    w = random_blocks(QT.Q4_K, rows, n, rng)
    wf = dequantize(w, QT.Q4_K).reshape(rows, n).astype(np.float64)
    x = rng.standard_normal((cols, n)).astype(np.float32)
    got = ggml_mul_mat(QT.Q4_K, w, x, repack=True)
    err = np.abs(got - x.astype(np.float64) @ wf.T)
    assert (err <= q8_bound(wf, x.astype(np.float64))).all(), float(err.max())


@needs_q4_k_repack
@pytest.mark.parametrize("threads", [1, 2])
def test_repacked_q4_k_batch_is_bit_identical_to_the_one_token_product(threads):
    """Patch 0005 keeps the gemv's exact integer sums and its float steps per column, so a K-token verify batch
    gets, column by column, the bits a one-token decode gets (ggml's own gemm, which it replaces, differs from the
    gemv in the last bits from 4 columns on: GGML_CPU_Q4_K_COLS=0 makes this test fail). A change of one input
    must change its column's bits, so the equality is not vacuous. On AVX-512 builds the patch takes fewer than
    16 columns only (ggml's 16-column AVX-512 gemm keeps the rest, patches/README.md), so only those are checked."""
    rng = np.random.default_rng(11)
    rows, n, most = 48, 1536, 40
    w = random_blocks(QT.Q4_K, rows, n, rng)
    x = (rng.standard_normal((most, n)) * rng.uniform(0.1, 10, size=(most, 1))).astype(np.float32)
    single = np.stack([ggml_mul_mat(QT.Q4_K, w, x[c:c + 1], threads, repack=True)[0] for c in range(most)])
    widths = [2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 40]
    for cols in [c for c in widths if c < 16] if cpu_has("avx512f") else widths:
        np.testing.assert_array_equal(ggml_mul_mat(QT.Q4_K, w, x[:cols], threads, repack=True), single[:cols])
    x[1, 5] += np.abs(x[1]).max() / 10  # ~13 steps of its Q8_K quantisation
    assert not np.array_equal(ggml_mul_mat(QT.Q4_K, w, x[:4], threads, repack=True)[1], single[1])


def test_repack_refused_where_llama_cpp_would_not_repack():
    """Q4_K with a row count that is not a multiple of 8 stays in the file layout: a clear error, not a wrong path."""
    w = random_blocks(QT.Q4_K, 12, 256, np.random.default_rng(0))
    with pytest.raises(Exception, match="does not repack"):
        ggml_mul_mat(QT.Q4_K, w, np.zeros((2, 256), dtype=np.float32), repack=True)


def test_bad_arguments_are_errors_not_crashes():
    w = np.zeros(210, dtype=np.uint8)
    x = np.zeros((1, 256), dtype=np.float32)
    with pytest.raises(Exception, match="multiple of the type's block size"):
        check(lib.sirius_test_ggml_mul_mat(int(QT.Q6_K), 100, 1, 1, ffi.cast("void *", w.ctypes.data),
                                      ffi.cast("float *", x.ctypes.data), ffi.cast("float *", x.ctypes.data), 1, 0))
    with pytest.raises(Exception, match="unknown ggml type"):
        check(lib.sirius_test_ggml_mul_mat(9999, 256, 1, 1, ffi.cast("void *", w.ctypes.data),
                                      ffi.cast("float *", x.ctypes.data), ffi.cast("float *", x.ctypes.data), 1, 0))
