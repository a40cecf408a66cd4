"""Threshold sparsity (CATS on single neurons): per token and layer, the neurons whose |act(gate x)| reaches the
layer's calibrated threshold are computed (a varying number), through the CPU kernels of native/neuron_ffn.cpp;
thresholds come from `calibrate` on built-in text (a histogram of |act(gate x)| per layer), in a sidecar file."""

import json
import os

import numpy as np
import pytest

from reference import PROMPT, compare, group_masks
from sirius_local import LLM
from sirius_local import calibration, calibration_text
from sirius_local.errors import CalibrationMissingError, InvalidParameterError
from sirius_local import _testing
import suite_model

N_LAYER, N_FF, _ = suite_model.shape()


@pytest.fixture(scope="module")
def calibrated(llm):
    """Thresholds for 0.3 / 0.5 / 0.7 from the built-in text (not saved)."""
    return llm.calibrate([0.3, 0.5, 0.7], save=False)


def test_calibration_hits_the_density_on_held_out_text(calibrated):
    assert calibrated["calibration_tokens"] > 1000
    for key, r in calibrated["densities"].items():
        d = float(key)
        assert len(r["thresholds"]) == N_LAYER and all(t > 0 for t in r["thresholds"])
        assert abs(r["calibration_density"] - d) < 0.01, (key, r["calibration_density"])
        assert abs(r["held_out_density"] - d) <= 0.05, (key, r["held_out_density"])
    # a higher density needs lower thresholds, in every layer
    t3, t7 = calibrated["densities"]["0.3"]["thresholds"], calibrated["densities"]["0.7"]["thresholds"]
    assert all(a > b for a, b in zip(t3, t7))


def test_recorded_scores_match_the_reference(llm, reference):
    toks = llm.tokenize(PROMPT, add_bos=True)
    llm.reset()
    llm.eval(toks[:1], logits_all=True)  # calibration leaves each passage's first token out
    llm.neuron_scores_record(True)
    llm.eval(toks[1:], logits_all=True)  # (the last layer computes output rows only)
    llm.neuron_scores_record(False)
    gates = {}
    reference.logits(toks, record_gate=gates)
    for il in (0, 7, 29):
        hist = llm.neuron_score_hist(il)
        assert hist.shape == (65536,) and hist.sum() == (len(toks) - 1) * N_FF
        g = gates[il][1:]
        ref = np.abs(g / (1.0 + np.exp(-g))).ravel()
        for d in (0.3, 0.5, 0.7):
            ours = calibration.threshold_at(hist, d)
            want = np.sort(ref)[::-1][int(np.ceil(d * ref.size)) - 1]
            # a bin is 0.4% wide; llama.cpp's 8-bit activations against float64 move values by ~1%
            assert abs(ours - want) < 0.03 * want, (il, d, ours, want)
            assert abs(calibration.density_on([hist], [ours]) - d) < 0.005
    # the rule the histogram bins by: a bin's floor is in it, the value just below is in the bin before
    for b in (1000, 40000):
        f = calibration.bin_floor(b)
        assert calibration.score_bin(f) == b and calibration.score_bin(np.nextafter(np.float32(f), np.float32(0))) == b - 1
    llm.reset()


def decode_threshold(llm, toks, nxt, thresholds):
    llm.reset()
    llm.eval(toks, logits_all=False)
    llm.set_thresholds(thresholds)
    info = llm.build_sparse(0.5, sparsity="threshold")
    _testing.topk_record(llm, True)
    llm.set_ffn_mode("sparse")
    try:
        k0 = _testing.threshold_kept(llm)
        out = llm.eval([nxt])[0]
        k1 = _testing.threshold_kept(llm)
        groups = {il: _testing.topk_kept(llm, il) for il in range(N_LAYER)}
    finally:
        llm.set_ffn_mode("dense")
        _testing.topk_record(llm, False)
    return out, info, groups, (k1[0] - k0[0], k1[1] - k0[1])


def test_threshold_decode_matches_reference(llm, reference, calibrated):
    toks = llm.tokenize(PROMPT, add_bos=True)
    nxt = llm.tokenize(" landed", add_bos=False)[0]
    th = calibrated["densities"]["0.5"]["thresholds"]
    ours, info, kept_ids, (kept, seen) = decode_threshold(llm, toks, nxt, th)
    assert info["sparse_layers"] == N_LAYER and info["group_size"] == 1 and info["sparse_down_type"] == "Q4_0"
    assert seen == N_LAYER * N_FF and kept == sum(len(g) for g in kept_ids.values())
    counts = [len(g) for g in kept_ids.values()]
    assert min(counts) != max(counts)  # a varying number of neurons per layer
    assert 0.25 < kept / seen < 0.75
    full = toks + [nxt]
    # 1. With exactly the neurons it computed, the model equals the masked reference (its ffn_down the Q4_0
    #    neuron-major copy).
    gates = {}
    ref_sparse = reference.logits(full, ffn_keep=group_masks(kept_ids, 1, N_FF), keep_from=len(toks),
                                  record_gate=gates, neuron_down="Q4_0")[-1:]
    ok, report = compare(ours[None], ref_sparse)
    assert ok, report
    ref_dense = reference.logits(full)[-1:]
    assert np.abs(ours - ref_sparse[0]).mean() < 0.5 * np.abs(ours - ref_dense[0]).mean()
    # 2. Those neurons are the ones whose reference value reaches the threshold, but for values near it: the
    #    8-bit rounding of the gate's input moves a single neuron's value by a few percent (test_topk.py).
    agree = []
    for il, g in gates.items():
        a = np.abs(g[-1] / (1.0 + np.exp(-g[-1])))
        on = np.zeros(a.size, dtype=bool)
        on[kept_ids[il]] = True
        clear = np.abs(a - th[il]) > 0.3 * th[il]
        assert np.array_equal(on[clear], a[clear] >= th[il]), il
        agree.append(np.mean(on == (a >= th[il])))
    assert min(agree) > 0.97, min(agree)


def test_threshold_zero_keeps_every_neuron(llm, reference):
    toks = llm.tokenize(PROMPT, add_bos=True)
    nxt = llm.tokenize(" landed", add_bos=False)[0]
    ours, _, kept_ids, (kept, seen) = decode_threshold(llm, toks, nxt, [0.0] * N_LAYER)
    assert kept == seen and all(len(g) == N_FF for g in kept_ids.values())
    # every neuron through the kernels: the dense FFN with the neuron-major copy of ffn_down
    ref = reference.logits(toks + [nxt], keep_from=len(toks), neuron_down="Q4_0")[-1:]
    ok, report = compare(ours[None], ref)
    assert ok, report


def test_sidecar_generation_and_sirius_strict(linked_model):
    prompt = "The three primary colors are"
    with LLM(linked_model, n_ctx=512) as m:
        with pytest.raises(CalibrationMissingError, match="sirius-local calibrate"):
            m.create_completion(prompt, max_tokens=4, mode="sparse", sparsity="threshold", density=0.5)
        # (a short calibration: this test is about the file, not the density; batches are slow on this CPU)
        short = dict(passages=calibration_text.CALIBRATION[:2], held_out=[])
        res = m.calibrate([0.5, 0.7], **short)
        assert res["path"] == linked_model + ".sirius-thresholds.json"
        data = json.loads(open(res["path"]).read())
        assert set(data["densities"]) == {"0.5", "0.7"} and data["model_size"] == os.path.getsize(linked_model)
        with pytest.raises(CalibrationMissingError, match=r"no thresholds for density 0.4 \(it has: 0.5, 0.7\)"):
            m.create_completion(prompt, max_tokens=4, mode="sparse", sparsity="threshold", density=0.4)
        dense = m.create_completion(prompt, max_tokens=24)["stats"]
        sp = m.create_completion(prompt, max_tokens=24, mode="sparse", sparsity="threshold", density=0.5)["stats"]
        assert sp["sparsity"] == "threshold" and sp["sparse"] and sp["completion_tokens"] > 0
        # The density decoding actually kept is reported; on the model's own continuation (and after this short
        # calibration) it strays from the target more than on held-out text (see benchmarks/NOTES.md).
        assert 0.25 < sp["density_measured"] < 0.75, sp["density_measured"]
        assert 0.5 < sp["sparse_param_fraction"] < 1.0
        si = m.create_completion(prompt, max_tokens=24, mode="sirius", sparsity="threshold", density=0.7, period=5,
                                 acceptance="strict")["stats"]
        assert si["token_ids"] == dense["token_ids"] and si["accepted"] > 0
        # density 1.0 needs no calibration: every neuron is computed
        one = m.create_completion(prompt, max_tokens=8, mode="sparse", sparsity="threshold", density=1.0)["stats"]
        assert one["density_measured"] == 1.0
        # a second calibration merges into the same file
        m.calibrate([0.3], **short)
    assert set(json.loads(open(res["path"]).read())["densities"]) == {"0.3", "0.5", "0.7"}
    # a file made for another model file is not used
    data["model_size"] += 1
    open(res["path"], "w").write(json.dumps(data))
    with pytest.raises(CalibrationMissingError, match="none was found"):
        calibration.thresholds_for(linked_model, 0.5, N_LAYER)


def test_group_calibration_is_refused_with_the_fix(linked_model):
    # a format 1 file (thresholds on 32-neuron groups, from before single neurons): refused, naming the command
    # that replaces it; calibrating replaces it
    path = linked_model + ".sirius-thresholds.json"
    old = {"format": 1, "model": os.path.basename(linked_model), "model_size": os.path.getsize(linked_model),
           "score": "sum over a group of |act(gate x)|", "densities": {"0.5": {"thresholds": [1.0] * N_LAYER}}}
    open(path, "w").write(json.dumps(old))
    with pytest.raises(CalibrationMissingError, match=r"groups of neurons .*sirius-local calibrate .* --density 0.5"):
        calibration.thresholds_for(linked_model, 0.5, N_LAYER)
    assert calibration.uncalibrated(linked_model, [0.5]) == [0.5]
    with LLM(linked_model, n_ctx=256) as m:
        with pytest.raises(CalibrationMissingError, match="groups of neurons"):
            m.create_completion("Hi", max_tokens=2, mode="sparse", sparsity="threshold", density=0.5)
        m.calibrate([0.5], passages=calibration_text.CALIBRATION[:1], held_out=[])
    data = json.loads(open(path).read())
    assert data["format"] == 2 and len(calibration.thresholds_for(linked_model, 0.5, N_LAYER)) == N_LAYER


def test_bad_thresholds_and_densities(llm):
    with pytest.raises(InvalidParameterError, match="one per layer"):
        llm.set_thresholds([1.0, 2.0])
    with pytest.raises(InvalidParameterError, match="finite and >= 0"):
        llm.set_thresholds([float("nan")] * N_LAYER)
    with pytest.raises(InvalidParameterError, match=r"densities must be in \(0, 1\)"):
        llm.calibrate([1.5], save=False)
    llm.set_thresholds(None)
    llm.reset()
    llm.eval(llm.tokenize("Hello", add_bos=True), logits_all=False)
    with pytest.raises(InvalidParameterError, match="no per-layer thresholds"):
        llm.build_sparse(0.5, sparsity="threshold")
    # the session still works
    assert llm.create_completion("Hello", max_tokens=2)["stats"]["completion_tokens"] > 0
