"""The GPU check (issue 23): correctness and timings of a GPU build on synthetic models in real shapes.

    python benchmarks/device/check.py --out DIR [--shapes qwen2.5-1.5b,llama3-8b] [--models /tmp/models]
                                      [--cpu-only] [--tokens 64] [--repeats 2]

Writes DIR/device_check.json (everything measured) and prints a log. Run by benchmarks/device/run.sh on the
lent machine; `--cpu-only --shapes tiny` runs the same code with no layer offloaded (tests/test_device_check.py),
so the script is known to work before device time is spent on it. Exit status 1 if a correctness check fails.

Checks, per shape (all layers on the GPU unless said):
* dense logits on the GPU against the CPU on the same model and prompt;
* strict Sirius equal to dense greedy on the GPU, with Griffin and with top-k, K 4 and 16;
* where the sparse copies live: the engine's `sparse_device_bytes` (the compact tensors' bytes in non-host
  buffers) against `sparse_bytes`, for Griffin (compact gate/up/down) and top-k (patch 0002's group copies);
* threshold sparsity without a calibration: refused with the error that names `calibrate`, and the engine
  usable after it.
Timings: `bench` with all layers on the GPU (dense; sparse Griffin and top-k at 0.5 and 0.3 with the full and
the trimmed head; the verify curve r(K); Sirius at density 0.5, K 4 / 8 / 16, widths 1 and 4), a partial-offload
run (half the layers on the GPU), and the Sirius speed-up the cost model predicts from these costs with the acceptance
measured on the CPU on the real Qwen2.5-Coder-1.5B (random weights have no contextual sparsity, so their own
acceptance means nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_gguf  # noqa: E402

from sirius_local import LLM, SiriusError, bench  # noqa: E402
from sirius_local._native import LIB_DIR, devices, ffi, lib  # noqa: E402

PROMPT = bench.DEFAULT_PROMPT
# Per-draft acceptance a on the real Qwen2.5-Coder-1.5B Q4_K_M (CPU, aal_sweep, relaxed K 16; benchmarks/NOTES.md,
# "Single-neuron Griffin" and "Per-token sparsity on single neurons"): the backend does not change it.
CPU_ACCEPTANCE = {("griffin", 0.5): 0.970, ("griffin", 0.3): 0.918, ("topk", 0.5): 0.986, ("topk", 0.3): 0.921}
# Dense logits, GPU against CPU: the largest difference over the logits' standard deviation. Both backends round
# each quantised matmul's activations to 8 bits (the CPU in q8_K blocks of 256, CUDA in q8_1 blocks of 32) and
# sum in different orders, so every layer adds an error near 2^-8 of its output's scale; RMSNorm keeps it from
# growing with depth, and over ~30 layers it stays ~1% of the logits' spread. 5% leaves room, and still catches
# a wrong kernel or a wrong tensor (those give errors of the order of the logits themselves).
LOGIT_TOL = 0.05


def log(msg: str) -> None:
    print(msg, flush=True)


def logits_check(path: str, n_gpu: int, threads: int) -> dict:
    with LLM(path, n_ctx=512, n_threads=threads, n_gpu_layers=0) as cpu:
        toks = cpu.tokenize(PROMPT)
        lc = cpu.eval(toks)[-1].astype(np.float64)
    with LLM(path, n_ctx=512, n_threads=threads, n_gpu_layers=n_gpu) as gpu:
        lg = gpu.eval(toks)[-1].astype(np.float64)
    rel = float(np.abs(lg - lc).max() / lc.std())
    top_c, top_g = np.argsort(-lc)[:10], np.argsort(-lg)[:10]
    return {"prompt_tokens": len(toks), "max_abs_diff_over_std": rel, "tolerance": LOGIT_TOL,
            "cosine": float(lc @ lg / np.linalg.norm(lc) / np.linalg.norm(lg)),
            "argmax_equal": bool(top_c[0] == top_g[0]), "top10_overlap": len(set(top_c) & set(top_g)),
            "ok": rel <= LOGIT_TOL and bool(top_c[0] == top_g[0])}


def engine_checks(path: str, n_gpu: int, threads: int, tokens: int, on_gpu: bool) -> dict:
    out = {"strict": [], "placement": [], "threshold": None}
    with LLM(path, n_ctx=1024, n_threads=threads, n_gpu_layers=n_gpu) as llm:
        dense = llm.create_completion(PROMPT, max_tokens=tokens, ignore_eos=True)["stats"]["token_ids"]
        for sp in ("griffin", "topk"):
            for k in (4, 16):
                st = llm.create_completion(PROMPT, max_tokens=tokens, ignore_eos=True, mode="sirius", sparsity=sp,
                                           density=0.5, period=k, acceptance="strict")["stats"]
                same = st["token_ids"] == dense
                first = next((i for i, (a, b) in enumerate(zip(st["token_ids"], dense)) if a != b), None)
                out["strict"].append({"sparsity": sp, "period": k, "equal_to_dense": same, "first_difference": first,
                                      "aal": st["aal"], "group_size": st["group_size"], "ok": same})
                log(f"  strict sirius {sp} K={k}: {'equal to dense greedy' if same else f'differs at token {first}'}")
            st = llm.create_completion(PROMPT, max_tokens=4, mode="sparse", sparsity=sp, density=0.5)["stats"]
            total, dev = st["sparse_bytes"], st["sparse_device_bytes"]
            # all layers offloaded: every copy in GPU memory; CPU only: none
            ok = (dev >= 0.99 * total and dev > 0) if on_gpu else dev == 0
            out["placement"].append({"sparsity": sp, "sparse_bytes": total, "sparse_device_bytes": dev,
                                     "group_size": st["group_size"], "ok": ok})
            log(f"  {sp} copies: {dev / 2**20:.1f} of {total / 2**20:.1f} MiB in device memory, G={st['group_size']}")
        try:
            llm.create_completion(PROMPT, max_tokens=4, mode="sparse", sparsity="threshold", density=0.5)
            out["threshold"] = {"refused": False, "ok": False}
        except SiriusError as e:
            usable = len(llm.create_completion(PROMPT, max_tokens=4)["stats"]["token_ids"]) == 4
            out["threshold"] = {"refused": True, "error": f"{type(e).__name__}: {e}",
                                "names_calibrate": "calibrate" in str(e), "usable_after": usable,
                                "ok": "calibrate" in str(e) and usable}
        log(f"  threshold without calibration: {out['threshold']}")
    return out


def predicted(res: dict) -> list[dict]:
    """Relaxed Sirius tok/s by the cost model (bench.predict: the engine's, what period="auto" uses) from this machine's
    measured sparse decode step (with the full and the trimmed head) and dense verify curve, at the acceptance
    measured on the CPU on the real model."""
    runs, vc = res["runs"], res["verify_curve"]
    dense = next(r for r in runs if r["mode"] == "dense")["tokens_per_second"]
    rows = []
    for r in runs:
        a = CPU_ACCEPTANCE.get((r["sparsity"], r["density"]))
        if r["mode"] != "sparse" or a is None:
            continue
        s_ms = 1000.0 / r["tokens_per_second"]
        best = None
        for k in (2, 3, 4, 6, 8, 12, 16):
            _v, tps = bench.predict(vc, k, a, s_ms)
            row = {"sparsity": r["sparsity"], "density": r["density"], "draft_vocab": r["draft_vocab"], "period": k,
                   "cpu_accept_rate": a, "predicted_tokens_per_second": tps, "predicted_ratio_vs_dense": tps / dense}
            rows.append(row)
            best = row if best is None or tps > best["predicted_tokens_per_second"] else best
        log(f"  predicted {r['sparsity']} {r['density']} V={r['draft_vocab']} (a={a}): best K={best['period']} "
            f"{best['predicted_ratio_vs_dense']:.3f}x dense")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="qwen2.5-1.5b,llama3-8b")
    p.add_argument("--models", default="/tmp/sirius-models")
    p.add_argument("--cpu-only", action="store_true", help="offload nothing (to test this script without a GPU)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"devices": devices(), "system_info": ffi.string(lib.sirius_system_info()).decode().strip(),
              "build": ffi.string(lib.sirius_version()).decode(), "libraries": str(LIB_DIR), "cpu_only": a.cpu_only, "shapes": {}}
    log(f"devices: {report['devices'] or 'none'}")
    on_gpu = not a.cpu_only
    if on_gpu and not report["devices"]:
        report["error"] = "no GPU device found by this build (is it a CUDA build, and is the driver there?)"
        (out_dir / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
        log(report["error"])
        return 1
    n_all = -1 if on_gpu else 0
    failed = []
    Path(a.models).mkdir(parents=True, exist_ok=True)
    for shape in [s.strip() for s in a.shapes.split(",") if s.strip()]:
        r = report["shapes"][shape] = {}
        path = str(Path(a.models) / f"{shape}.gguf")
        t0 = time.time()
        if not Path(path).exists():
            synthetic_gguf.write(shape, path)
        r["model_bytes"] = Path(path).stat().st_size
        log(f"== {shape}: {path} ({r['model_bytes'] / 1e9:.2f} GB, written in {time.time() - t0:.1f} s)")
        try:
            r["logits"] = logits_check(path, n_all, a.threads)
            log(f"  dense logits GPU vs CPU: {r['logits']}")
            r["engine"] = engine_checks(path, n_all, a.threads, a.tokens, on_gpu)
            common = dict(threads=a.threads, tokens=a.tokens, repeats=a.repeats, n_gpu_layers=n_all, log=log)
            r["bench_sparse"] = bench.run(path, modes=["dense", "sparse"], sparsities=["griffin", "topk"],
                                          densities=[0.5, 0.3], draft_vocabs=[0, None], curve=True, **common)
            log(bench.format_table(r["bench_sparse"]))
            r["predicted"] = predicted(r["bench_sparse"])
            r["bench_sirius"] = bench.run(path, modes=["dense", "sirius"], sparsities=["griffin", "topk"],
                                          densities=[0.5], periods=[4, 8, 16], widths=[1, 4], **common)
            log(bench.format_table(r["bench_sirius"]))
            n_layer = synthetic_gguf.SHAPES[shape].n_layer
            half = n_layer // 2 if on_gpu else 0
            r["bench_partial"] = bench.run(path, modes=["dense", "sparse", "sirius"], sparsities=["griffin"],
                                           densities=[0.5], periods=[8, "auto"],
                                           **dict(common, n_gpu_layers=half))
            log(f"partial offload ({half} of {n_layer} layers on the GPU):")
            log(bench.format_table(r["bench_partial"]))
        except Exception as e:  # a failure in one shape still leaves the others and the report
            r["error"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            log(r["error"])
        checks = ([r.get("logits", {})] + r.get("engine", {}).get("strict", []) + r.get("engine", {}).get("placement", [])
                  + [r.get("engine", {}).get("threshold") or {}])
        if "error" in r or not all(c.get("ok") for c in checks):
            failed.append(shape)
        (out_dir / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    report["failed"] = failed
    (out_dir / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"checks failed on: {failed}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
