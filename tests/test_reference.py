"""Our logits against an independent NumPy forward pass (tests/reference.py).

The tolerance and its justification: reference.compare.
"""

import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from reference import PROMPT, compare


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
