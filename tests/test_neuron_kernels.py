"""The single-neuron FFN kernels of per-token sparsity (native/neuron_ffn.cpp) on random data, through
sirius_test_ggml_neuron_ffn (a ggml graph with the kernels' two custom ops, run with 1-3 threads): the kept set is the
exact top-k of |a| (ties to the lower index) or exactly the threshold's; the output matches a NumPy reference
for every up type the test models use and every neuron-major down type; with every neuron kept it matches
ggml's own dense path; the AVX2 and portable kernels agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from sirius_local._native import check, ffi, lib
from kernels import BLOCK, X86_AVX2, cpu_has, ggml_mul_mat, q8_bound, random_blocks

N_EMBD, N_FF = 768, 200  # 3 K-quant super-blocks, 24 blocks of 32 (thread splits of 4-12 blocks: vector tails); 200 neurons
UP_TYPES = [QT.Q4_K, QT.Q6_K, QT.Q4_1, QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.F16, QT.F32]
DOWN_TYPES = [QT.Q4_0, QT.Q8_0, QT.F16, QT.F32]


def make_up(qtype, rng):
    """Raw rows [N_FF, bytes] and their values [N_FF, N_EMBD]."""
    if qtype in BLOCK:
        raw = random_blocks(qtype, N_FF, N_EMBD, rng)
    else:
        raw = quantize((rng.standard_normal((N_FF, N_EMBD)) * 0.05).astype(np.float32), qtype)
    return np.ascontiguousarray(raw), dequantize(raw, qtype).reshape(N_FF, N_EMBD).astype(np.float64)


def make_down(qtype, rng):
    """The neuron-major down as the engine stores it (Q4_0 rows: their blocks' scales first, then the nibbles)
    and its values [N_FF, N_EMBD]."""
    w = (rng.standard_normal((N_FF, N_EMBD)) * rng.uniform(0.01, 0.1, size=(N_FF, 1))).astype(np.float32)
    raw = quantize(w, qtype)
    vals = dequantize(raw, qtype).reshape(N_FF, N_EMBD).astype(np.float64)
    if qtype == QT.Q4_0:
        blocks = raw.reshape(N_FF, N_EMBD // 32, 18)
        raw = np.concatenate([blocks[:, :, :2].reshape(N_FF, -1), blocks[:, :, 2:].reshape(N_FF, -1)], axis=1)
    return np.ascontiguousarray(raw.view(np.uint8).reshape(N_FF, -1)), vals, raw


def neuron_ffn(up_t, up, down_t, down, a, x, k=0, threshold=0.0, threads=2):
    y = np.zeros(N_EMBD, dtype=np.float32)
    kept = np.zeros(N_FF, dtype=np.int32)
    n = ffi.new("int32_t *")
    check(lib.sirius_test_ggml_neuron_ffn(int(up_t), int(down_t), N_EMBD, N_FF, ffi.cast("void *", up.ctypes.data),
                                     ffi.cast("void *", down.ctypes.data), ffi.cast("float *", a.ctypes.data),
                                     ffi.cast("float *", x.ctypes.data), k, threshold, threads,
                                     ffi.cast("float *", y.ctypes.data), ffi.cast("int32_t *", kept.ctypes.data), n))
    return y, kept[:n[0]].tolist()


def reference_topk(a, k):
    order = np.lexsort((np.arange(len(a)), -np.abs(a)))  # |a| descending, ties to the lower index
    return sorted(order[:k].tolist())


def up_bound(qtype, wf, x):
    """How far ggml's product of up rows with x may be from the float one: x is rounded to the type's
    vec_dot input (8 bits per block of 32 or 256; F16 for F16 weights; exact for F32)."""
    if qtype == QT.F32:
        return 1e-5 * (np.abs(wf) @ np.abs(x)) + 1e-7
    if qtype == QT.F16:
        return 2.0 ** -10 * (np.abs(wf) @ np.abs(x)) + 1e-7
    block = 256 if qtype in (QT.Q4_K, QT.Q6_K) else 32
    return q8_bound(wf, x[None, :], block=block)[0]


def down_bound(down_t, hk, raw_rows):
    """The int8 rounding of the AVX2 Q4_0 kernel: per group of 16 kept rows and block of 32 columns, each
    coefficient h * d moves by at most half a step (the group's largest |h * d| / 127), times |q - 8|."""
    if down_t != QT.Q4_0:
        return 0.0
    nb = N_EMBD // 32
    d = raw_rows[:, :2 * nb].copy().view(np.float16).astype(np.float64)                 # [k, nb]
    q = raw_rows[:, 2 * nb:].reshape(len(hk), nb, 16)
    q = np.concatenate([q & 15, q >> 4], axis=2).astype(np.float64) - 8                # [k, nb, 32]
    g = np.abs(hk[:, None] * d)
    bound = np.zeros((nb, 32))
    for j0 in range(0, len(hk), 16):
        half_step = g[j0:j0 + 16].max(axis=0) / 127 / 2                               # [nb]
        bound += half_step[:, None] * np.abs(q[j0:j0 + 16]).sum(axis=0)
    return bound.reshape(-1) * 1.01


@pytest.mark.parametrize("up_t", UP_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("down_t", DOWN_TYPES, ids=lambda t: t.name)
def test_kernels_match_the_numpy_reference(up_t, down_t):
    rng = np.random.default_rng(int(up_t) * 31 + int(down_t))
    up, upf = make_up(up_t, rng)
    down, downf, _ = make_down(down_t, rng)
    x = rng.standard_normal(N_EMBD).astype(np.float32)
    a = rng.standard_normal(N_FF).astype(np.float32)
    for k, threads in [(N_FF // 2, 2), (37, 3), (N_FF, 1), (1, 2), (150, 5)]:
        y, kept = neuron_ffn(up_t, up, down_t, down, a, x, k=k, threads=threads)
        assert kept == reference_topk(a, k)
        u = upf[kept] @ x.astype(np.float64)
        hk = a[kept].astype(np.float64) * u
        ref = hk @ downf[kept]
        raw_rows = down[kept] if down_t == QT.Q4_0 else None
        bound = (np.abs(a[kept]) * up_bound(up_t, upf[kept], x.astype(np.float64))) @ np.abs(downf[kept])
        bound = bound + (down_bound(down_t, hk, raw_rows) if raw_rows is not None else 0.0)
        bound = bound + 1e-5 * (np.abs(hk) @ np.abs(downf[kept])) + 1e-6
        err = np.abs(y - ref)
        assert (err <= bound).all(), (k, threads, float((err / bound).max()))


def test_topk_ties_go_to_the_lower_index():
    rng = np.random.default_rng(3)
    up, _ = make_up(QT.F32, rng)
    down, _, _ = make_down(QT.F32, rng)
    x = rng.standard_normal(N_EMBD).astype(np.float32)
    a = np.round(rng.standard_normal(N_FF), 1).astype(np.float32)  # many equal |a|, of both signs
    a[:20] = 0.5
    a[100:120] = -0.5
    for k in (1, 10, 25, 60, 100, 199, 200):
        assert neuron_ffn(QT.F32, up, QT.F32, down, a, x, k=k)[1] == reference_topk(a, k), k
    assert neuron_ffn(QT.F32, up, QT.F32, down, np.zeros(N_FF, np.float32), x, k=5)[1] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("down_t", DOWN_TYPES, ids=lambda t: t.name)
def test_output_does_not_depend_on_the_thread_count(down_t):
    """neuron_down splits the kept rows over the threads in whole 16-row groups (the Q4_0 kernel's rounding
    groups) and neuron_sum adds the threads' partial sums: 1 to 40 threads (past the 32 partials) give the same
    output up to the order of float additions."""
    rng = np.random.default_rng(40 + int(down_t))
    up, _ = make_up(QT.Q4_K, rng)
    down, _, _ = make_down(down_t, rng)
    x = rng.standard_normal(N_EMBD).astype(np.float32)
    a = rng.standard_normal(N_FF).astype(np.float32)
    for k in (N_FF, 150, 17, 3):
        y1, kept1 = neuron_ffn(QT.Q4_K, up, down_t, down, a, x, k=k, threads=1)
        for threads in (2, 3, 7, 40):
            y, kept = neuron_ffn(QT.Q4_K, up, down_t, down, a, x, k=k, threads=threads)
            assert kept == kept1
            np.testing.assert_allclose(y, y1, rtol=1e-5, atol=1e-6 * np.abs(y1).max(), err_msg=f"k={k} threads={threads}")


def test_threshold_keeps_exactly_the_values_that_reach_it():
    rng = np.random.default_rng(4)
    up, _ = make_up(QT.Q4_K, rng)
    down, _, _ = make_down(QT.Q4_0, rng)
    x = rng.standard_normal(N_EMBD).astype(np.float32)
    a = rng.standard_normal(N_FF).astype(np.float32)
    for t in (0.0, 0.3, float(np.abs(a[17])), 10.0):
        y, kept = neuron_ffn(QT.Q4_K, up, QT.Q4_0, down, a, x, threshold=t)
        assert kept == np.nonzero(np.abs(a) >= np.float32(t))[0].tolist(), t
        if not kept:
            assert not y.any()


@pytest.mark.parametrize("up_t", [QT.Q4_K, QT.Q4_1, QT.F32], ids=lambda t: t.name)
def test_every_neuron_kept_is_ggmls_dense_ffn(up_t):
    """With all neurons kept and an F32 down, the kernels compute what ggml's dense mul_mat of up, the product
    with a and the dense down mul_mat compute: up's rows through the same vec_dot (bit for bit), the down sum in
    another order."""
    rng = np.random.default_rng(9)
    up, _ = make_up(up_t, rng)
    down, downf, raw = make_down(QT.F32, rng)
    x = rng.standard_normal(N_EMBD).astype(np.float32)
    a = rng.standard_normal(N_FF).astype(np.float32)
    y, kept = neuron_ffn(up_t, up, QT.F32, down, a, x, threshold=0.0)
    assert kept == list(range(N_FF))
    u = ggml_mul_mat(up_t, up, x[None, :], threads=1)[0]
    h = (a * u).astype(np.float32)
    dense = ggml_mul_mat(QT.F32, np.ascontiguousarray(raw.reshape(N_FF, N_EMBD).T), h[None, :], threads=1)[0]
    np.testing.assert_allclose(y, dense, rtol=2e-5, atol=1e-5 * np.abs(dense).max())


def in_fresh_process(body: str, env_var: str, value: str | None) -> tuple[np.ndarray, list, str]:
    """Run body (Python with this module as T, appending arrays to `out` and anything JSON to `kept`) in a fresh
    process with env_var=value (None: unset), since the kernels' switches are read once per process: the arrays
    flattened and concatenated, `kept`, and what the process wrote on stderr."""
    code = ("import json, numpy as np, sys\nsys.path.insert(0, %r)\nimport test_neuron_kernels as T\nout, kept = [], []\n"
            % os.path.dirname(__file__) + body +
            "\nnp.save(sys.argv[1], np.concatenate([np.ravel(o) for o in out]))\njson.dump(kept, open(sys.argv[1] + '.json', 'w'))\n")
    env = dict(os.environ)
    env.pop(env_var, None)
    if value:
        env[env_var] = value
    path = os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"neuron-{env_var}-{value}-{os.getpid()}.npy")
    run = subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=os.path.dirname(__file__),
                         stderr=subprocess.PIPE, text=True)
    try:
        with open(path + ".json") as f:
            kept = json.load(f)
        return np.load(path), kept, run.stderr
    finally:
        os.remove(path)
        os.remove(path + ".json")


def outputs_under(env_var: str, value: str | None) -> tuple[np.ndarray, list, str]:
    """Each down type's output and kept set for three random cases, in a fresh process with env_var=value, and
    what the process wrote on stderr."""
    out, kept, err = in_fresh_process("""
for down_t in T.DOWN_TYPES:
    for k in (120, 7, T.N_FF):  # groups of 16 rows with a partial last one; fewer rows than a group; all
        rng = np.random.default_rng(int(down_t) * 1000 + k)
        up, _ = T.make_up(T.QT.Q4_K, rng)
        down, _, _ = T.make_down(down_t, rng)
        x = rng.standard_normal(T.N_EMBD).astype(np.float32)
        a = rng.standard_normal(T.N_FF).astype(np.float32)
        y, ids = T.neuron_ffn(T.QT.Q4_K, up, down_t, down, a, x, k=k)
        out.append(y)
        kept.append(ids)
""", env_var, value)
    return out.reshape(len(DOWN_TYPES), 3, N_EMBD), kept, err


@pytest.mark.skipif(not X86_AVX2, reason="the AVX2 kernels are the ones compared with the portable ones")
def test_portable_kernels_agree_with_the_avx2_ones():
    """SIRIUS_AXPY=scalar runs the portable kernels, which ARM and older x86 CPUs use: the same kept sets and,
    within the AVX2 Q4_0 kernel's int8 rounding, the same outputs."""
    (scalar, kept_s, _), (avx2, kept_v, _) = outputs_under("SIRIUS_AXPY", "scalar"), outputs_under("SIRIUS_AXPY", "avx2")
    assert kept_s == kept_v
    for i, down_t in enumerate(DOWN_TYPES):
        s, v = scalar[i], avx2[i]
        tol = 0.02 if down_t == QT.Q4_0 else 1e-4
        assert np.abs(s - v).max() <= tol * np.abs(s).max(), (down_t.name, float(np.abs(s - v).max()))


def q4_0_outputs(axpy: str | None) -> np.ndarray:
    """The Q4_0 down kernel's outputs over odd and even block counts (3, 17, 48 blocks of 32), partial and whole
    row groups and 1-3 threads, in a fresh process with SIRIUS_AXPY=axpy (None: the CPU's best kernel)."""
    return in_fresh_process("""
for T.N_EMBD in (96, 544, 1536):
    for T.N_FF in (37, 200):
        rng = np.random.default_rng(T.N_EMBD + T.N_FF)
        up, _ = T.make_up(T.QT.Q8_0, rng)
        down, _, _ = T.make_down(T.QT.Q4_0, rng)
        x = rng.standard_normal(T.N_EMBD).astype(np.float32)
        a = (rng.standard_normal(T.N_FF) * 10.0 ** rng.uniform(-3, 2, T.N_FF)).astype(np.float32)
        for k in (1, 17, T.N_FF // 2, T.N_FF):
            for threads in (1, 3):
                out.append(T.neuron_ffn(T.QT.Q8_0, up, T.QT.Q4_0, down, a, x, k=k, threads=threads)[0])
""", "SIRIUS_AXPY", axpy)[0]


@pytest.mark.skipif(not (X86_AVX2 and all(cpu_has(f) for f in ("avx512f", "avx512bw", "avx512vl", "avx512vbmi",
                                                                  "avx512_vnni"))),
                    reason="the AVX-512 VNNI Q4_0 kernel runs only where the CPU has it")
def test_vnni_kernel_is_bit_identical_to_the_avx2_one():
    """Where the CPU has AVX-512 VNNI, the Q4_0 down runs on vpdpbusd: the same int8 coefficients, exact integer
    sums and float update as the AVX2 kernel, so the same bits (measured: 1.19 M outputs of random cases)."""
    best, avx2 = q4_0_outputs(None), q4_0_outputs("avx2")
    assert np.isfinite(best).all() and np.abs(best).max() > 0
    assert np.array_equal(best, avx2), float(np.abs(best - avx2).max())


def test_loads_only_reads_the_same_rows_and_says_its_outputs_are_meaningless():
    """SIRIUS_NEURON_KERNELS=loads-only (the measurement of the read ceiling, NOTES "The ceiling with free
    arithmetic"): the same selection, no arithmetic (y = 0), and a warning on stderr; unset, no warning."""
    y, kept, err = outputs_under("SIRIUS_NEURON_KERNELS", None)
    y0, kept0, err0 = outputs_under("SIRIUS_NEURON_KERNELS", "loads-only")
    assert kept0 == kept and [len(k) for k in kept] == [120, 7, N_FF] * len(DOWN_TYPES)
    assert np.abs(y).max(axis=-1).min() > 0  # every real output has nonzero values ...
    assert not y0.any()  # ... and loads-only ones are
    assert "loads-only" in err0 and "meaningless" in err0 and "loads-only" not in err


def test_bad_arguments_are_errors_not_crashes():
    z = np.zeros(N_FF * N_EMBD * 4, dtype=np.uint8)
    a = np.zeros(N_FF, np.float32)
    x = np.zeros(N_EMBD, np.float32)
    with pytest.raises(Exception, match="multiple of 32"):
        check(lib.sirius_test_ggml_neuron_ffn(int(QT.F32), int(QT.F32), 33, N_FF, ffi.cast("void *", z.ctypes.data),
                                         ffi.cast("void *", z.ctypes.data), ffi.cast("float *", a.ctypes.data),
                                         ffi.cast("float *", x.ctypes.data), 1, 0.0, 1, ffi.cast("float *", x.ctypes.data),
                                         ffi.NULL, ffi.NULL))
    with pytest.raises(Exception, match="no neuron-major kernel"):
        check(lib.sirius_test_ggml_neuron_ffn(int(QT.F32), int(QT.Q4_K), 256, 4, ffi.cast("void *", z.ctypes.data),
                                         ffi.cast("void *", z.ctypes.data), ffi.cast("float *", a.ctypes.data),
                                         ffi.cast("float *", z.ctypes.data), 1, 0.0, 1, ffi.cast("float *", z.ctypes.data),
                                         ffi.NULL, ffi.NULL))
