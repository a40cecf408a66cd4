"""A GGUF with random weights in a real model's shape, for timing a backend where no model file can travel.

    python benchmarks/device/synthetic_gguf.py SHAPE OUT.gguf [--seed 0]      SHAPE: one of SHAPES below

Tensors are written in Q4_K_M's mix (Q4_K; Q6_K for the output head and, in half the layers, attn_v and
ffn_down, by llama.cpp's use_more_bits rule): raw quant blocks of random bytes whose scales are set so that
every weight matrix has a standard deviation near 1/sqrt(fan-in), so activations stay O(1) through the layers.
The head is scaled up (logits of standard deviation ~8) so greedy decoding has clear argmaxes rather than
near-ties, as a trained model's has. The vocabulary is a SentencePiece-style one of byte tokens plus filler
pieces, sized to the real model's, so the head costs what it costs there. Timings on these weights are real;
acceptance is not (a random FFN has no contextual sparsity): take that from the CPU measurements.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, TokenType


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    rope_base: float
    qkv_bias: bool


SHAPES = {
    # Qwen2.5(-Coder)-1.5B: what the CPU figures were measured on
    "qwen2.5-1.5b": Shape("qwen2", 28, 1536, 8960, 12, 2, 151936, 1e6, True),
    # Llama-3-8B: the paper's model size
    "llama3-8b": Shape("llama", 32, 4096, 14336, 32, 8, 128256, 5e5, False),
    # small enough for a test on a CPU (same tensor kinds and quant types)
    "tiny": Shape("qwen2", 2, 256, 1024, 4, 2, 2048, 1e6, True),
}
BLOCK = 256  # weights per Q4_K / Q6_K block
BYTES = {Q.Q4_K: 144, Q.Q6_K: 210}
HEAD_SCALE = 8.0


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule (llama-quant.cpp) for the layers whose attn_v and ffn_down Q4_K_M keeps in Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quant_rows(rng: np.random.Generator, qtype: Q, rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
    """rows x cols weights as raw blocks (uint8, one row of bytes per weight row), standard deviation about
    scale / sqrt(cols)."""
    if cols % BLOCK:
        raise ValueError(f"{cols} columns is not a multiple of {BLOCK}")
    nb = rows * cols // BLOCK
    blocks = rng.integers(0, 256, size=(nb, BYTES[qtype]), dtype=np.uint8)
    target = scale / np.sqrt(cols)
    if qtype == Q.Q4_K:
        # w = d * sc * q - dmin * m, sc and m 6-bit, q 4-bit, all uniform: dmin = 7.5 d centres each sub-block
        # on average; the standard deviation is then ~258 d
        d = np.float16(target / 258.0)
        dm = np.float16(7.5 * float(d))
        blocks[:, 0:2] = np.frombuffer(d.tobytes(), np.uint8)
        blocks[:, 2:4] = np.frombuffer(dm.tobytes(), np.uint8)
    else:
        # w = d * sc * (q - 32), sc int8, q 6-bit: standard deviation ~1369 d
        d = np.float16(target / 1369.0)
        blocks[:, 208:210] = np.frombuffer(d.tobytes(), np.uint8)
    return blocks.reshape(rows, cols // BLOCK * BYTES[qtype])


def tensors(shape: Shape):
    """(name, kind, rows, cols) in file order; kind is a quant type or 'norm' / 'bias'."""
    s = shape
    head_dim = s.n_embd // s.n_head
    kv = head_dim * s.n_head_kv
    yield "token_embd.weight", Q.Q4_K, s.n_vocab, s.n_embd
    for i in range(s.n_layer):
        more = use_more_bits(i, s.n_layer)
        p = f"blk.{i}."
        yield p + "attn_norm.weight", "norm", 1, s.n_embd
        yield p + "attn_q.weight", Q.Q4_K, s.n_embd, s.n_embd
        yield p + "attn_k.weight", Q.Q4_K, kv, s.n_embd
        yield p + "attn_v.weight", Q.Q6_K if more else Q.Q4_K, kv, s.n_embd
        if s.qkv_bias:
            yield p + "attn_q.bias", "bias", 1, s.n_embd
            yield p + "attn_k.bias", "bias", 1, kv
            yield p + "attn_v.bias", "bias", 1, kv
        yield p + "attn_output.weight", Q.Q4_K, s.n_embd, s.n_embd
        yield p + "ffn_norm.weight", "norm", 1, s.n_embd
        yield p + "ffn_gate.weight", Q.Q4_K, s.n_ff, s.n_embd
        yield p + "ffn_up.weight", Q.Q4_K, s.n_ff, s.n_embd
        yield p + "ffn_down.weight", Q.Q6_K if more else Q.Q4_K, s.n_embd, s.n_ff
    yield "output_norm.weight", "norm", 1, s.n_embd
    yield "output.weight", Q.Q6_K, s.n_vocab, s.n_embd


def vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    toks += [f"\u2581w{i}" for i in range(n - len(toks))]
    types += [TokenType.NORMAL] * (n - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return toks, scores, [int(t) for t in types]


def write(shape_name: str, path: str, seed: int = 0) -> None:
    s = SHAPES[shape_name]
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, s.arch)
    w.add_name(f"synthetic {shape_name} (random weights)")
    w.add_block_count(s.n_layer)
    w.add_context_length(8192)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(15)  # MOSTLY_Q4_K_M
    toks, scores, types = vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    plan = list(tensors(s))
    for name, kind, rows, cols in plan:
        if kind in ("norm", "bias"):
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        else:
            nbytes = rows * cols // BLOCK * BYTES[kind]
            w.add_tensor_info(name, (rows, cols // BLOCK * BYTES[kind]), np.dtype(np.uint8), nbytes, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, kind, rows, cols in plan:
        if kind == "norm":
            w.write_tensor_data(np.ones(cols, np.float32))
        elif kind == "bias":
            w.write_tensor_data((0.02 * rng.standard_normal(cols)).astype(np.float32))
        else:
            w.write_tensor_data(quant_rows(rng, kind, rows, cols, HEAD_SCALE if name == "output.weight" else 1.0))
    w.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write(a.shape, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
