"""The GPU check's code (benchmarks/device/), run here without a GPU so it is known to work before device time
is spent on it: the synthetic model generator and check.py in --cpu-only mode."""
import json
import sys
from pathlib import Path

import numpy as np

DEVICE = Path(__file__).resolve().parents[1] / "benchmarks" / "device"
sys.path.insert(0, str(DEVICE))

import check  # noqa: E402
import synthetic_gguf  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from sirius_local import LLM  # noqa: E402


def test_synthetic_model_has_the_shape_and_sane_activations(tmp_path, scratch_cache):
    path = tmp_path / "tiny.gguf"
    synthetic_gguf.write("tiny", str(path))
    s = synthetic_gguf.SHAPES["tiny"]
    r = GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["output.weight"] == "Q6_K" and types["blk.0.ffn_gate.weight"] == "Q4_K"
    for i in range(s.n_layer):  # Q4_K_M's rule: Q6_K in some layers
        want = "Q6_K" if synthetic_gguf.use_more_bits(i, s.n_layer) else "Q4_K"
        assert types[f"blk.{i}.ffn_down.weight"] == types[f"blk.{i}.attn_v.weight"] == want
    assert sorted(set(types[f"blk.{i}.ffn_down.weight"] for i in range(s.n_layer))) == ["Q4_K", "Q6_K"]
    assert [int(x) for x in next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight").shape] == [s.n_ff, s.n_embd]
    with LLM(str(path), n_ctx=256, n_threads=2) as m:
        assert m.n_vocab() == s.n_vocab and m.n_layer() == s.n_layer
        logits = m.eval(m.tokenize("Hello world, this is a test."))
        # the head is scaled for logits of standard deviation ~HEAD_SCALE: clear argmaxes, nothing overflowing
        assert np.isfinite(logits).all()
        assert 0.5 * synthetic_gguf.HEAD_SCALE < logits[-1].std() < 2 * synthetic_gguf.HEAD_SCALE
        top = np.sort(logits[-1])[::-1]
        assert top[0] - top[1] > 0.01 * logits[-1].std()


def test_check_script_on_the_cpu(tmp_path, scratch_cache, capsys):
    rc = check.main(["--out", str(tmp_path / "out"), "--shapes", "tiny", "--models", str(tmp_path / "models"),
                     "--cpu-only", "--tokens", "16", "--repeats", "1", "--threads", "2"])
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert rc == 0 and report["failed"] == [], capsys.readouterr().out[-3000:]
    r = report["shapes"]["tiny"]
    assert r["logits"]["max_abs_diff_over_std"] == 0.0  # the same backend both times
    assert {(c["sparsity"], c["period"]) for c in r["engine"]["strict"]} == {(s, k) for s in ("griffin", "topk") for k in (4, 16)}
    assert all(c["equal_to_dense"] for c in r["engine"]["strict"])
    assert all(p["sparse_device_bytes"] == 0 < p["sparse_bytes"] for p in r["engine"]["placement"])
    assert r["engine"]["threshold"]["names_calibrate"] and r["engine"]["threshold"]["usable_after"]
    modes = {(x["mode"], x.get("period"), x.get("width")) for x in r["bench_sirius"]["runs"]}
    assert {("sirius", k, w) for k in (4, 8, 16) for w in (1, 4)} <= modes
    assert [v["k"] for v in r["bench_sirius"]["verify_curve"]] == [1, 2, 4, 8, 12, 16, 24, 32]
    # K 2..16 for each sparse row with a CPU acceptance (2 methods x 2 densities x 2 heads)
    assert len(r["predicted"]) == 7 * 8 and all(p["predicted_tokens_per_second"] > 0 for p in r["predicted"])
    assert r["bench_partial"]["n_gpu_layers"] == 0
