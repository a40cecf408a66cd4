"""The sparse FFN (Griffin): the statistic, the neuron groups chosen, and sparse decoding, each against the
NumPy reference (tests/reference.py) or the dense path."""

import numpy as np
import pytest

from reference import PROMPT, compare
from sirius_local import LLM, InvalidParameterError
from generation import keep_masks, prefill_collect
from sirius_local import _testing


@pytest.fixture(scope="module")
def toks(llm):
    return llm.tokenize(PROMPT, add_bos=True)


@pytest.fixture(scope="module")
def ref_z(reference, toks):
    z = {}
    reference.logits(toks, record_z=z)
    return z


def griffin_reference(z: np.ndarray) -> np.ndarray:
    """Griffin's statistic: rows normalised to unit L2 norm, then the L2 norm of each neuron's column."""
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.linalg.norm(zn, axis=0)


def test_griffin_statistic_matches_reference(llm, toks, ref_z):
    prefill_collect(llm, toks)
    for il, z in ref_z.items():
        ours, ref = _testing.griffin_scores(llm, il), griffin_reference(z)
        assert ours.shape == ref.shape
        # 8-bit activation rounding in llama.cpp perturbs each z by about 1%; the statistic sums squares of
        # unit-normalised rows, so it agrees to about that.
        assert np.corrcoef(ours, ref)[0, 1] > 0.99, il
        assert np.abs(ours - ref).max() < 0.05 * ref.max(), il


def test_griffin_keeps_the_reference_top_k_neurons(llm, toks, ref_z):
    prefill_collect(llm, toks)
    info = llm.build_sparse(0.5)
    assert info["sparse"] and info["sparse_layers"] == len(ref_z) and info["group_size"] == 1
    block = 32  # the compact down's type (Q4_0 for SmolLM2's Q4_1 ffn_down) pads k to its block
    assert info["sparse_down_type"] == "Q4_0"
    overlaps = []
    for il, z in ref_z.items():
        kept, G = _testing.sparse_groups(llm, il)
        assert G == 1 and kept == sorted(kept) and len(set(kept)) == len(kept)
        ours, ref = _testing.griffin_scores(llm, il), griffin_reference(z)
        k = len(kept)
        assert k == -(-round(0.5 * len(ref)) // block) * block
        # The rule, on our own statistic: every kept neuron scores at least every skipped one.
        skipped = np.setdiff1d(np.arange(len(ours)), kept)
        assert ours[kept].min() >= ours[skipped].max(), il
        # Against the reference statistic: ours differs from it by at most `tol` (8-bit activation rounding),
        # so a neuron more than 2 tol above the reference's cut must be kept, one more than 2 tol below it never.
        tol = float(np.abs(ours - ref).max())
        order = np.argsort(-ref, kind="stable")
        cut_in, cut_out = ref[order[k - 1]], ref[order[k]]
        must = set(np.nonzero(ref > cut_in + 2 * tol)[0].tolist())
        never = set(np.nonzero(ref < cut_out - 2 * tol)[0].tolist())
        assert must <= set(kept) and not (never & set(kept)), il
        overlaps.append(len(set(kept) & set(order[:k].tolist())) / k)
    assert np.mean(overlaps) >= 0.95, np.mean(overlaps)


def test_sparse_decode_matches_masked_reference(llm, toks, reference):
    prefill_collect(llm, toks)
    llm.build_sparse(0.5)
    nxt = llm.tokenize(" landed", add_bos=False)[0]
    llm.set_ffn_mode("sparse")
    ours = llm.eval([nxt])[0]
    llm.set_ffn_mode("dense")
    keep = keep_masks(llm)
    full = toks + [nxt]
    # The compact down holds the kept columns requantised (Q4_1 -> Q4_0 here): the reference requantises them
    # the same way with gguf's quantiser, so the usual tolerance holds (measured mean |d| 0.17). Against the
    # original weights, the requantisation's own error (Q4_0 rounds each weight to a step of max|w|/8 per 32,
    # on top of Q4_1's) adds to that: measured max 2.3, mean 0.41, over compare()'s mean bound of 0.35, yet
    # far from dense (mean 3.3). Both orders are checked below.
    ref_sparse = reference.logits(full, ffn_keep=keep, keep_from=len(toks), compact_down="Q4_0")[-1:]
    ref_masked = reference.logits(full, ffn_keep=keep, keep_from=len(toks))[-1:]
    ref_dense = reference.logits(full)[-1:]
    ok, report = compare(ours[None], ref_sparse)
    assert ok, report
    d_req = np.abs(ours - ref_masked[0]).mean()
    # ...and the check can tell sparse from dense: the sparse logits are far closer to the masked reference.
    d_sparse, d_dense = np.abs(ours - ref_sparse[0]).mean(), np.abs(ours - ref_dense[0]).mean()
    assert d_sparse < 0.5 * d_dense, (d_sparse, d_dense)
    assert d_sparse < d_req < 0.6 * d_dense, (d_sparse, d_req, d_dense)


def test_density_one_equals_dense(llm, toks):
    prefill_collect(llm, toks)
    info = llm.build_sparse(1.0)
    assert info["density_actual"] == 1.0 and abs(info["sparse_param_fraction"] - 1.0) < 1e-9
    nxt = llm.tokenize(" landed", add_bos=False)[0]
    llm.set_ffn_mode("sparse")
    sparse = llm.eval([nxt])
    llm.set_ffn_mode("dense")
    llm.truncate(len(toks))
    dense = llm.eval([nxt])
    assert np.abs(sparse - dense).max() < 1e-4  # the same bytes through the same kernels

    d = llm.create_completion("List three fruits:", max_tokens=24)
    s = llm.create_completion("List three fruits:", max_tokens=24, mode="sparse", density=1.0)
    assert s["stats"]["sparse"] and s["stats"]["token_ids"] == d["stats"]["token_ids"]


def test_sparse_generation_stats(llm):
    out = llm.create_completion("Explain photosynthesis briefly.", max_tokens=16, mode="sparse", density=0.5)
    st = out["stats"]
    assert st["mode"] == "sparse" and st["sparse"] and st["sparsity"] == "griffin"
    assert st["density_actual"] == pytest.approx(0.5, abs=0.02)
    # FFN is 3 * 576 * 1536 * 30 of 135M parameters; half of it skipped.
    assert 0.55 < st["sparse_param_fraction"] < 0.75
    assert st["sparse_bytes"] > 0 and st["completion_tokens"] == 16
    assert out["choices"][0]["text"]


def test_sparse_kv_is_never_reused_as_dense(llm, model_path):
    prompt = llm.tokenize("Write a haiku about rain.", special=True)
    sp = llm.create_completion(prompt, max_tokens=12, mode="sparse", density=0.3)["stats"]["token_ids"]
    follow = prompt + sp
    again = llm.create_completion(follow, max_tokens=12)
    assert again["stats"]["prompt_tokens_cached"] <= len(prompt)
    with LLM(model_path, n_ctx=256) as fresh:
        assert fresh.create_completion(follow, max_tokens=12)["stats"]["token_ids"] == again["stats"]["token_ids"]


def test_batches_stay_dense_in_sparse_mode(llm, toks):
    prefill_collect(llm, toks)
    llm.build_sparse(0.3)
    tail = llm.tokenize(" landed on the moon", add_bos=False)
    llm.set_ffn_mode("sparse")
    batched = llm.eval(tail)
    llm.set_ffn_mode("dense")
    llm.truncate(len(toks))
    dense = llm.eval(tail)
    assert np.abs(batched - dense).max() < 1e-4


def test_sparse_bad_input(model_path, llm):
    with LLM(model_path, n_ctx=128) as m:
        with pytest.raises(InvalidParameterError, match="no sparse FFN is built"):
            m.set_ffn_mode("sparse")
        with pytest.raises(InvalidParameterError, match="no Griffin statistic"):
            m.build_sparse(0.5)
    for kw, match in [(dict(density=0.0), "density"), (dict(density=1.5), "density"), (dict(density="half"), "density"),
                      (dict(sparsity="bogus"), "not available"),
                      (dict(mode="turbo"), "not available")]:
        with pytest.raises(InvalidParameterError, match=match):
            llm.create_completion("Hi", mode="sparse" if "mode" not in kw else kw.pop("mode"), **kw)
    assert llm.create_completion("Hi", max_tokens=3, mode="sparse")["stats"]["completion_tokens"] >= 1


def test_next_chat_turn_collects_only_its_new_tokens(llm, model_path):
    """The Griffin statistic is kept for the prompt it was collected on: the next turn of a conversation
    prefills only what it adds, and the statistic then equals a fresh prefill of the whole conversation."""
    msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
    llm.reset()
    r1 = llm.create_chat_completion(msgs, max_tokens=20, mode="sparse", density=0.5)
    assert r1["stats"]["prompt_tokens_cached"] == 0
    msgs2 = msgs + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                    {"role": "user", "content": "Now one about the mountains."}]
    r2 = llm.create_chat_completion(msgs2, max_tokens=20, mode="sirius", density=0.5)
    assert r2["stats"]["prompt_tokens_cached"] == r1["stats"]["prompt_tokens"]
    ours = [_testing.griffin_scores(llm, il) for il in range(llm.n_layer())]
    kept = [set(_testing.sparse_groups(llm, il)[0]) for il in range(llm.n_layer())]
    with LLM(model_path, n_ctx=1024) as fresh:
        f2 = fresh.create_chat_completion(msgs2, max_tokens=20, mode="sirius", density=0.5)
        assert f2["stats"]["prompt_tokens_cached"] == 0
        assert f2["stats"]["prompt_tokens"] == r2["stats"]["prompt_tokens"]
        for il in range(llm.n_layer()):
            # Same tokens, same dense KV; only the batch split differs (which moves 8-bit activation rounding).
            np.testing.assert_allclose(ours[il], _testing.griffin_scores(fresh, il), rtol=0.05, atol=1e-3)
            theirs = set(_testing.sparse_groups(fresh, il)[0])
            assert len(kept[il] & theirs) >= 0.9 * len(theirs)
    # The same prompt again evaluates nothing (its logits are kept) and keeps the statistic.
    r3 = llm.create_chat_completion(msgs2, max_tokens=5, mode="sparse", density=0.5)
    assert r3["stats"]["prompt_tokens_cached"] == r3["stats"]["prompt_tokens"]
    np.testing.assert_array_equal(_testing.griffin_scores(llm, 3), ours[3])
    # A different prompt starts over.
    r4 = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=5, mode="sparse", density=0.5)
    assert r4["stats"]["prompt_tokens_cached"] == 0
