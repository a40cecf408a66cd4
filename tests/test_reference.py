"""Our logits against an independent NumPy forward pass (tests/reference.py).

Tolerance. The reference evaluates the dequantised weights in float64; llama.cpp's CPU path multiplies the
4-bit weights with activations rounded to 8-bit blocks of 32 and runs attention with float16 Q/K/V. On
SmolLM2-135M Q4_1 (logits spanning about -31..33) this leaves a max |difference| of 1.67 and a mean of 0.23
over a 20-token prompt, with the same argmax at every position. Two plausible implementation mistakes are far
outside that: RoPE base 10000 instead of the GGUF's 100000 gives max 4.1 / mean 0.54, and NeoX-style RoPE gives
max 29.7 / mean 7.1. So we accept max <= 2.5, mean <= 0.35 and >= 90% argmax agreement: 1.5x headroom over
the measured rounding noise, and below both mistakes. test_one_changed_weight_fails shows that the check also
catches a single changed weight.
"""

import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from reference import LlamaReference

PROMPT = "The quick brown fox jumps over the lazy dog. In 1969, the first humans"
MAX_ABS, MEAN_ABS, ARGMAX_AGREE = 2.5, 0.35, 0.9


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
    d = np.abs(ours.astype(np.float64) - ref)
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    ok = d.max() <= MAX_ABS and d.mean() <= MEAN_ABS and agree >= ARGMAX_AGREE
    return ok, f"max|d|={d.max():.3f} mean|d|={d.mean():.3f} argmax agreement={agree:.2f}"


@pytest.fixture(scope="module")
def reference(model_path):
    return LlamaReference(model_path)


@pytest.fixture(scope="module")
def prompt_tokens(llm):
    toks = llm.tokenize(PROMPT, add_bos=True)
    assert 15 <= len(toks) <= 40
    return toks


@pytest.fixture(scope="module")
def ref_logits(reference, prompt_tokens):
    return reference.logits(prompt_tokens)


def test_logits_match_numpy_reference(llm, prompt_tokens, ref_logits):
    llm.reset()
    ours = llm.eval(prompt_tokens)
    assert ours.shape == ref_logits.shape == (len(prompt_tokens), llm.n_vocab())
    ok, report = compare(ours, ref_logits)
    assert ok, report


def test_one_changed_weight_fails(model_path, tmp_path, prompt_tokens, ref_logits):
    """Sensitivity of the comparison: one weight of the GGUF changed (the output norm's gain for the hidden
    dimension the final hidden states use most), the rest untouched, must fail the check."""
    from sirius_local import LLM

    bad = tmp_path / "perturbed.gguf"
    shutil.copyfile(model_path, bad)
    reader = GGUFReader(str(bad), "r+")
    t = next(t for t in reader.tensors if t.name == "output_norm.weight")
    w = t.data  # memory-mapped view into the copy
    k = int(np.argmax(np.abs(w)))
    w[k] = -w[k] * 3.0
    reader.data.flush()
    del reader

    with LLM(str(bad), n_ctx=256) as m:
        ours = m.eval(prompt_tokens)
    ok, report = compare(ours, ref_logits)
    assert not ok, f"a changed weight went unnoticed: {report}"
