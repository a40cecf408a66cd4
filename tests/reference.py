"""An independent reference forward pass for the `llama` architecture: gguf's reader and dequantisation, and
float64 NumPy. It shares no code with llama.cpp's compute path, so agreement with our logits checks the whole
native stack (loading, graph, kernels, KV cache, positions).

Conventions of llama.cpp's llama graph that the reference reproduces:
* RMSNorm with the GGUF epsilon, multiplied by the norm weight;
* RoPE "normal" mode (adjacent pairs rotated; the GGUF converter permuted Q/K rows for this), freq_base from
  metadata, rotating the first rope.dimension_count dims of each head;
* grouped-query attention (head h uses kv head h // (n_head / n_head_kv)), causal, scale 1/sqrt(head_dim);
* SwiGLU FFN: down(silu(gate x) * up x); tied output head (token_embd) when there is no output.weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize


PROMPT = "The quick brown fox jumps over the lazy dog. In 1969, the first humans"

# Tolerance. The reference evaluates the dequantised weights in float64; llama.cpp's CPU path multiplies the
# 4-bit weights with activations rounded to 8-bit blocks of 32 and runs attention with float16 Q/K/V. On
# SmolLM2-135M Q4_1 (logits spanning about -31..33) this leaves a max |difference| of 1.67 and a mean of 0.23
# over a 20-token prompt, with the same argmax at every position. Two plausible implementation mistakes are far
# outside that: RoPE base 10000 instead of the GGUF's 100000 gives max 4.1 / mean 0.54, and NeoX-style RoPE gives
# max 29.7 / mean 7.1. So we accept max <= 2.5, mean <= 0.35 and >= 90% argmax agreement: 1.5x headroom over
# the measured rounding noise, and below both mistakes. test_reference.py::test_one_changed_weight_fails shows
# that the check also catches a single changed weight.
MAX_ABS, MEAN_ABS, ARGMAX_AGREE = 2.5, 0.35, 0.9


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
    """Our logits against the reference's, within the tolerance above; (ok, a one-line report)."""
    d = np.abs(ours.astype(np.float64) - ref)
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    ok = d.max() <= MAX_ABS and d.mean() <= MEAN_ABS and agree >= ARGMAX_AGREE
    return ok, f"max|d|={d.max():.3f} mean|d|={d.mean():.3f} argmax agreement={agree:.2f}"


def group_masks(groups: dict[int, list[int]], G: int, n_ff: int) -> dict[int, np.ndarray]:
    """Per layer, the boolean neuron mask of kept groups of G neurons (for ffn_keep)."""
    out = {}
    for il, gs in groups.items():
        m = np.zeros(n_ff, dtype=bool)
        for b in gs:
            m[b * G:(b + 1) * G] = True
        out[il] = m
    return out


@dataclass
class LlamaConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_rot: int
    rope_base: float
    eps: float


class LlamaReference:
    def __init__(self, path: str, overrides: dict[str, np.ndarray] | None = None, emulate_ggml: bool = False):
        self.reader = GGUFReader(path)
        f = self.reader.fields

        def val(key):
            return f[key].contents()

        arch = val("general.architecture")
        if arch != "llama":
            raise ValueError(f"the reference implements the llama architecture, not {arch}")
        n_embd = int(val("llama.embedding_length"))
        n_head = int(val("llama.attention.head_count"))
        self.cfg = LlamaConfig(
            n_layer=int(val("llama.block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(val("llama.attention.head_count_kv")),
            n_rot=int(val("llama.rope.dimension_count")) if "llama.rope.dimension_count" in f else n_embd // n_head,
            rope_base=float(val("llama.rope.freq_base")) if "llama.rope.freq_base" in f else 10000.0,
            eps=float(val("llama.attention.layer_norm_rms_epsilon")),
        )
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._cache: dict[str, np.ndarray] = {}
        self.overrides = overrides or {}
        # emulate_ggml: round matmul inputs to 8-bit blocks of 32 (ggml's Q8_0/Q8_1 vec_dot inputs for
        # quantised weights) and K/V to float16 (llama.cpp's KV cache), the two roundings of the CPU path.
        self.emulate_ggml = emulate_ggml

    def weight(self, name: str) -> np.ndarray:
        """Dequantised tensor in NumPy layout: [rows, cols] = [ne1, ne0]."""
        if name in self.overrides:
            return self.overrides[name]
        if name not in self._cache:
            t = self._tensors[name]
            w = dequantize(t.data, t.tensor_type).astype(np.float64)
            self._cache[name] = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        return self._cache[name]

    def has(self, name: str) -> bool:
        return name in self._tensors

    def _mm(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.emulate_ggml and self._tensors[name].tensor_type.name not in ("F32", "F16", "BF16"):
            x = self._round8(x)
        return x @ self.weight(name).T

    @staticmethod
    def _round8(x: np.ndarray) -> np.ndarray:
        b = x.reshape(*x.shape[:-1], -1, 32)
        d = np.abs(b).max(axis=-1, keepdims=True) / 127.0
        return (np.round(b / np.where(d == 0, 1, d)) * d).reshape(x.shape)

    def _compact_down(self, z: np.ndarray, name: str, keep: np.ndarray, qtype: str) -> np.ndarray:
        """z's kept neurons through the compact down Griffin builds: ffn_down's kept columns (in neuron order),
        each row requantised to qtype by gguf's quantiser, the activations rounded to 8 bits as ggml does."""
        cols = np.nonzero(keep)[0]
        w = self.weight(name)[:, cols].astype(np.float32)
        t = GGMLQuantizationType[qtype]
        wq = dequantize(quantize(w, t), t).astype(np.float64)
        zk = z[:, cols]
        return (self._round8(zk) if self.emulate_ggml and qtype not in ("F32", "F16", "BF16") else zk) @ wq.T

    def neuron_down(self, name: str, qtype: str) -> np.ndarray:
        """ffn_down [n_embd, n_ff] as top-k and threshold read it: its transpose (one row per neuron) requantised
        row by row to qtype by gguf's quantiser (F32: exact), transposed back."""
        key = f"{name}@nm-{qtype}"
        if key not in self._cache:
            wt = np.ascontiguousarray(self.weight(name).T.astype(np.float32))
            t = GGMLQuantizationType[qtype]
            q = wt if qtype == "F32" else dequantize(quantize(wt, t), t)
            self._cache[key] = np.asarray(q, dtype=np.float64).reshape(wt.shape).T
        return self._cache[key]

    def _kv(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16).astype(np.float64) if self.emulate_ggml else x

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.eps) * w

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x: [T, heads, head_dim]; rotates pairs (2i, 2i+1) of the first n_rot dims."""
        n_rot = self.cfg.n_rot
        inv = self.cfg.rope_base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
        ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, n_rot/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:n_rot:2] = x0 * sin + x1 * cos
        return out

    def logits(self, tokens: list[int], ffn_keep: dict[int, np.ndarray] | None = None, keep_from: int = 0,
               record_z: dict[int, np.ndarray] | None = None,
               ffn_topk: dict[int, tuple[int, int]] | None = None,
               record_gate: dict[int, np.ndarray] | None = None, compact_down: str | None = None,
               neuron_down: str | None = None) -> np.ndarray:
        """Logits [T, n_vocab] for a sequence starting at position 0.

        ffn_keep: per layer, a boolean mask over FFN neurons; from position keep_from on, the other neurons'
        activations are zeroed (the sparse model's FFN). ffn_topk: per layer (G, k): from keep_from on, each
        token keeps only its k blocks of G neurons with the largest sum |act(gate x)| (top-k sparsity).
        record_z receives each layer's FFN activation z = silu(gate x) * (up x), [T, n_ff], before masking;
        record_gate each layer's gate x. compact_down: with ffn_keep, the kept neurons' ffn_down columns are
        requantised to this type (a GGML type name), as the compact FFN of single-neuron Griffin holds them.
        neuron_down: from keep_from on, ffn_down is the neuron-major copy requantised to this type (top-k and
        threshold on single neurons; see neuron_down)."""
        c = self.cfg
        T = len(tokens)
        hd = c.n_embd // c.n_head
        group = c.n_head // c.n_head_kv
        pos = np.arange(T)
        x = self.weight("token_embd.weight")[np.asarray(tokens)]
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        for il in range(c.n_layer):
            p = f"blk.{il}."
            h = self._rms(x, self.weight(p + "attn_norm.weight"))
            q = self._mm(h, p + "attn_q.weight").reshape(T, c.n_head, hd)
            k = self._mm(h, p + "attn_k.weight").reshape(T, c.n_head_kv, hd)
            v = self._kv(self._mm(h, p + "attn_v.weight").reshape(T, c.n_head_kv, hd))
            q, k = self._rope(q, pos), self._kv(self._rope(k, pos))
            att = np.empty((T, c.n_head, hd))
            for hh in range(c.n_head):
                kh, vh = k[:, hh // group], v[:, hh // group]
                s = q[:, hh] @ kh.T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                att[:, hh] = (s / s.sum(axis=-1, keepdims=True)) @ vh
            x = x + self._mm(att.reshape(T, c.n_embd), p + "attn_output.weight")
            h = self._rms(x, self.weight(p + "ffn_norm.weight"))
            g = self._mm(h, p + "ffn_gate.weight")
            if record_gate is not None:
                record_gate[il] = g.copy()
            u = self._mm(h, p + "ffn_up.weight")
            z = (g / (1.0 + np.exp(-g))) * u
            if record_z is not None:
                record_z[il] = z.copy()
            if ffn_keep is not None and il in ffn_keep:
                z[keep_from:, ~ffn_keep[il]] = 0.0
            if ffn_topk is not None and il in ffn_topk:
                # per token, keep the k blocks of G neurons with the largest sum |act(gate x)|
                G, k = ffn_topk[il]
                a = np.abs(g / (1.0 + np.exp(-g)))[keep_from:]
                score = a.reshape(a.shape[0], -1, G).sum(axis=2)
                drop = np.argsort(-score, axis=1, kind="stable")[:, k:]
                for r, blocks in enumerate(drop):
                    for b in blocks:
                        z[keep_from + r, b * G:(b + 1) * G] = 0.0
            if neuron_down is not None and keep_from < T:
                x[:keep_from] += self._mm(z[:keep_from], p + "ffn_down.weight")
                x[keep_from:] += z[keep_from:] @ self.neuron_down(p + "ffn_down.weight", neuron_down).T
            elif compact_down is not None and ffn_keep is not None and il in ffn_keep:
                x[:keep_from] += self._mm(z[:keep_from], p + "ffn_down.weight")
                x[keep_from:] += self._compact_down(z[keep_from:], p + "ffn_down.weight", ffn_keep[il], compact_down)
            else:
                x = x + self._mm(z, p + "ffn_down.weight")
        x = self._rms(x, self.weight("output_norm.weight"))
        return self._mm(x, "output.weight" if self.has("output.weight") else "token_embd.weight")
