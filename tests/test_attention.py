"""ggml-cpu's flash attention on random data, through sirius_test_ggml_flash_attn: each row of a short verify batch must be
bit-identical to the one-token decode of that row (patch 0006), as strict Sirius needs. A one-token decode over 512+
KV cells splits the cells across threads and merges the partial softmaxes; without the patch a batch runs each row
in one pass, which rounds differently (checked below in a subprocess with GGML_CPU_FA_ROWS=0). Both are also held
against a NumPy reference."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sirius_local._native import ffi, lib, check

# Qwen2.5-Coder-1.5B's attention: 12 query heads over 2 KV heads of 128
DK, H, HKV = 128, 12, 2
PAD = 256  # llama.cpp pads n_kv to a multiple of 256 (llama_kv_cache::get_n_kv)


def padded_n_kv(cells: int) -> int:
    """The n_kv llama.cpp gives a graph whose cache holds `cells` cells."""
    return max(PAD, -(-cells // PAD) * PAD)


def ggml_flash_attn(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, threads: int) -> np.ndarray:
    """q [H, n_q, DK], k/v [HKV, n_kv, DK], mask [n_q, n_kv] -> out [n_q, H, DK]."""
    q, k, v, mask = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v, mask))
    n_q, n_kv = q.shape[1], k.shape[1]
    out = np.empty((n_q, q.shape[0], v.shape[2]), dtype=np.float32)
    f = lambda a: ffi.cast("float *", a.ctypes.data)  # noqa: E731
    check(lib.sirius_test_ggml_flash_attn(DK, v.shape[2], n_q, q.shape[0], k.shape[0], n_kv, f(q), f(k), f(v), f(mask),
                                     DK ** -0.5, f(out), threads))
    return out


def reference(q, k, v, mask) -> np.ndarray:
    # K, V and Q as ggml stores and converts them (F16), the rest in float64
    q, k, v = (a.astype(np.float16).astype(np.float64) for a in (q, k, v))
    kv = np.repeat(np.arange(HKV), H // HKV)
    s = np.einsum("hqd,hkd->hqk", q, k[kv]) * DK ** -0.5 + mask[None]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,hkd->qhd", p, v[kv])


def causal_case(p0: int, n: int, extra: int, seed: int):
    """A verify batch of n tokens at positions p0..p0+n-1 over a cache padded as llama.cpp pads it (plus `extra`
    masked cells): q, k, v and the causal mask."""
    rng = np.random.default_rng(seed)
    n_kv = padded_n_kv(p0 + n) + extra
    q = rng.standard_normal((H, n, DK), dtype=np.float32)
    k = rng.standard_normal((HKV, n_kv, DK), dtype=np.float32)
    v = rng.standard_normal((HKV, n_kv, DK), dtype=np.float32)
    cells = np.arange(n_kv)
    mask = np.where(cells[None, :] <= p0 + np.arange(n)[:, None], 0.0, -np.inf).astype(np.float32)
    return q, k, v, mask


def rows_match_decoding(p0: int, n: int, extra: int, threads: int, seed: int = 0) -> tuple[bool, np.ndarray, tuple]:
    q, k, v, mask = causal_case(p0, n, extra, seed)
    batch = ggml_flash_attn(q, k, v, mask, threads)
    same = True
    for i in range(n):
        n_kv = padded_n_kv(p0 + i + 1)  # what the decode of this row had
        one = ggml_flash_attn(q[:, i:i + 1], k[:, :n_kv], v[:, :n_kv], mask[i:i + 1, :n_kv], threads)
        same &= np.array_equal(batch[i], one[0])
    return same, batch, (q, k, v, mask)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("p0,n,extra", [(100, 16, 0), (250, 16, 0), (505, 16, 0), (1000, 4, 0), (1000, 16, 256),
                                        (700, 32, 0)])
def test_verify_rows_are_bit_identical_to_decoding(p0, n, extra, threads):
    # (250, 16): rows on both sides of the 512-cell split threshold; (505, 16): rows on both sides of a padding step;
    # extra: a batch cache longer than any row's decode saw.
    same, batch, case = rows_match_decoding(p0, n, extra, threads)
    assert same, f"a verify row rounds unlike its one-token decode (p0={p0}, n={n}, threads={threads})"
    np.testing.assert_allclose(batch, reference(*case), atol=5e-3, rtol=1e-2)


def test_without_the_patch_rows_round_unlike_decoding():
    # Shows the test above can fail: ggml's own batch path (one pass per row) against the split decode, 2 threads.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_attention as t; "
            "print(t.rows_match_decoding(1000, 16, 0, 2)[0])")
    env = dict(os.environ, GGML_CPU_FA_ROWS="0")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_bad_arguments_are_errors():
    x = np.zeros(DK, dtype=np.float32)
    with pytest.raises(Exception, match="n_head a multiple of n_head_kv"):
        check(lib.sirius_test_ggml_flash_attn(DK, DK, 1, 3, 2, 1, *(ffi.cast("float *", x.ctypes.data),) * 4, 1.0,
                                         ffi.cast("float *", x.ctypes.data), 1))


# On the CI model: past 512 KV cells, 2 threads (the one-token path splits the cells), a verify batch's logits and
# the KV it leaves must be those of one-token decoding, bit for bit (before patch 0006 they differed by up to 0.9).
def _long_prompt(m) -> list[int]:
    from sirius_local.calibration_text import PASSAGES

    toks = m.tokenize("\n\n".join(PASSAGES))
    assert len(toks) > 800
    return toks


@pytest.mark.parametrize("k", [4, 16])
def test_verify_batch_logits_and_kv_equal_decoding_past_512_cells(model_path, k):
    from sirius_local import LLM

    with LLM(model_path, n_ctx=2048, n_threads=2) as m:
        toks = _long_prompt(m)
        prompt, cont = toks[:700], toks[700:700 + k + 1]
        m.reset()
        m.eval(prompt, logits_all=False)
        decoded = np.stack([m.eval([t], logits_all=False)[0] for t in cont])
        m.reset()
        m.eval(prompt, logits_all=False)
        verified = m.eval(cont[:k], logits_all=True)
        after = m.eval(cont[k:], logits_all=False)  # a decode on the KV the batch wrote
    assert np.array_equal(verified, decoded[:k]), float(np.abs(verified - decoded[:k]).max())
    assert np.array_equal(after[0], decoded[k])


def test_strict_reproduces_dense_greedy_after_a_long_prompt(model_path):
    from sirius_local import LLM

    with LLM(model_path, n_ctx=2048, n_threads=2, seed=0) as m:
        from sirius_local.calibration_text import PASSAGES

        prompt = "\n\n".join(PASSAGES)[:3500]
        assert 600 < len(m.tokenize(prompt)) < 1900
        runs = {}
        for mode in ("dense", "sirius"):
            m.reset()
            kw = {"mode": "sirius", "period": 16, "acceptance": "strict", "density": 0.8} if mode == "sirius" else {}
            r = m.create_completion(prompt, max_tokens=96, ignore_eos=True, **kw)
            runs[mode] = r["stats"]
    assert runs["sirius"]["corrections"] > 0  # rollbacks happened past 512 cells
    assert runs["sirius"]["token_ids"] == runs["dense"]["token_ids"]
