"""The trimmed draft head (native/draft_head.cpp, patch 0008): single-token sparse decodes compute logits for a
token subset only. Checked: the subset is the rule's (prompt tokens, end-of-generation tokens, the N highest
dense logits over the prompt, from llm.eval's own logits); the trimmed row equals the full head's on the subset
and is -inf elsewhere, so its argmax is the full head's whenever that lies in the subset; dense steps and verify
batches keep the full head (strict Sirius with both levers is dense greedy); tied embeddings (SmolLM2) work."""

import numpy as np
import pytest

from sirius_local import InvalidParameterError
from reference import PROMPT
from generation import CASES, DENSITY, prefill_collect, run
from sirius_local import _testing


@pytest.fixture(scope="module")
def toks(llm):
    return llm.tokenize(PROMPT, add_bos=True)


def eog_tokens(llm) -> set[int]:
    from sirius_local._native import lib

    return {t for t in range(llm.n_vocab()) if lib.sirius_model_is_eog(llm._weights.ptr, t)}


def test_subset_is_the_rule(llm, toks):
    llm.reset()
    dense_rows = llm.eval(toks, logits_all=True)  # the same dense logits the statistic sees
    prefill_collect(llm, toks)
    llm.build_sparse(0.5)
    n = 512
    size = llm.build_draft_head(n)
    ids = _testing.draft_head_tokens(llm)
    assert size == len(ids) and ids == sorted(ids)
    top = set(np.argsort(-dense_rows.max(axis=0), kind="stable")[:n].tolist())
    want = top | set(toks) | eog_tokens(llm)
    assert set(ids) == want
    assert n <= size <= n + len(toks) + len(eog_tokens(llm))


def test_trimmed_row_equals_the_full_head_on_the_subset(llm, toks):
    prefill_collect(llm, toks)
    llm.build_sparse(0.5)
    follow = llm.tokenize(" landed on the moon and", add_bos=False)
    full_rows, trimmed_rows = [], []
    for draft_vocab, rows in ((0, full_rows), (256, trimmed_rows)):
        llm.truncate(len(toks))
        assert llm.build_draft_head(draft_vocab) == (0 if draft_vocab == 0 else len(_testing.draft_head_tokens(llm)))
        llm.set_ffn_mode("sparse")
        for t in follow:
            rows.append(llm.eval([t])[0])
        llm.set_ffn_mode("dense")
    ids = np.array(_testing.draft_head_tokens(llm))
    out = np.setdiff1d(np.arange(llm.n_vocab()), ids)
    in_subset = 0
    for full, trimmed in zip(full_rows, trimmed_rows):
        assert np.isneginf(trimmed[out]).all()
        # The same rows of the same weights (a compact copy), the same activations: equal up to float summation.
        np.testing.assert_allclose(trimmed[ids], full[ids], rtol=0, atol=1e-3)
        if full.argmax() in set(ids.tolist()):
            in_subset += 1
            assert trimmed.argmax() == full.argmax()
    assert in_subset >= 3  # the check ran
    # Dense decodes keep the full head even with the trimmed one built.
    llm.truncate(len(toks))
    dense = llm.eval([follow[0]])[0]
    assert np.isfinite(dense).all()


@pytest.mark.parametrize("period", [4, 16])
def test_strict_with_both_levers_is_dense_greedy(llm, period):
    """Single-neuron Griffin and the trimmed head change only the drafts: strict output is dense greedy's."""
    trimmed = 0
    for kind, prompt, stop in CASES[::2]:
        d_text, d_fin, d = run(llm, kind if kind != "long" else "completion", prompt, stop)
        text, fin, s = run(llm, kind if kind != "long" else "completion", prompt, stop, mode="sirius", period=period,
                           acceptance="strict", density=DENSITY, draft_vocab=256)
        assert s["token_ids"] == d["token_ids"], prompt
        assert (text, fin) == (d_text, d_fin)
        trimmed += s["draft_vocab"] > 0
    assert trimmed == len(CASES[::2])


def test_sparse_mode_emits_only_subset_tokens(llm):
    r = llm.create_completion("The capital of France is", max_tokens=24, mode="sparse", draft_vocab=64, ignore_eos=True)
    st = r["stats"]
    assert st["draft_vocab"] > 64 and st["sparse_step_bytes"] < st["dense_step_bytes"]
    assert st["sparse_bytes"] > 0 and st["sparse_device_bytes"] == 0  # all in host memory on a CPU build
    # (the first token comes from the prompt's dense logits; the head stays built until the next prompt's)
    assert set(st["token_ids"][1:]) <= set(_testing.draft_head_tokens(llm))


def test_sparse_mode_tokens_are_in_the_subset(llm, toks):
    prefill_collect(llm, toks)
    llm.build_sparse(0.5)
    llm.build_draft_head(64)
    ids = set(_testing.draft_head_tokens(llm))
    llm.set_ffn_mode("sparse")
    t = toks[-1]
    llm.truncate(len(toks) - 1)
    for _ in range(8):
        t = int(llm.eval([t])[0].argmax())
        assert t in ids
    llm.set_ffn_mode("dense")


def test_bad_draft_vocab(llm):
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(InvalidParameterError, match="draft_vocab"):
            llm.create_completion("Hi", max_tokens=3, mode="sirius", draft_vocab=bad)
    with pytest.raises(InvalidParameterError, match="draft_vocab"):
        llm.build_draft_head(-5)
    # full vocabulary asked: no copy is worth it, drafts keep the full head
    r = llm.create_completion("Hi", max_tokens=3, mode="sparse", draft_vocab=10**7)
    assert r["stats"]["draft_vocab"] == 0
    assert llm.create_completion("Hi", max_tokens=3, mode="sirius", draft_vocab=0)["stats"]["completion_tokens"] >= 1
