"""`sirius-local bench`: decode speed of each mode side by side with dense llama.cpp, in one process.

Every configuration runs the same prompts for the same number of tokens (end-of-generation ignored), on the
same model, build and threads. Configurations are interleaved inside each repeat (repeat r uses prompt
r mod n), so drift on a shared machine hits them alike; results are medians over repeats and ratios to the
dense median.

The ideal ratio is the bytes-read bound: a decode step reads every weight byte once (the token embedding only
for its one row, unless it doubles as the output head); a sparse step reads the compact FFN instead of the FFN
(Griffin: its requantised down included) and the trimmed draft head instead of the full one (draft_vocab > 0).
ideal_ratio = dense bytes / sparse bytes, as the engine reports them (stats dense_step_bytes and
sparse_step_bytes; for threshold, scaled to the density its decodes measured). The G column is the selection's
granularity: single neurons (1) for every method on the CPU; top-k and threshold keep groups of ffn_down's quant
block on layers offloaded to a GPU.

Sirius rows add AAL, effective density, agreement with dense greedy (the share of dense greedy's tokens
reproduced before the first difference) and the engine's cost model's prediction of their speed (the model
period="auto" decides with, asked through sirius_cost_predict) from separately measured parts: sparse step s (the
sparse-only row at that density, else the run's own drafts), the dense K-token batch v(K) (the verify curve) and
the per-draft acceptance rate a = accepted / (accepted + corrections).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Union

from . import stats as figures
from .stats import prefix_agreement

DEFAULT_PROMPT = ("Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                  "How many clips did Natalia sell altogether in April and May?\nA: Let's think step by step.")
# GSM-style questions (GSM8K train-set style), answered step by step; repeat r uses prompt r mod 3.
GSM_PROMPTS = [
    DEFAULT_PROMPT,
    "Q: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did "
    "she earn?\nA: Let's think step by step.",
    "Q: A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?\n"
    "A: Let's think step by step.",
]
VERIFY_KS = [1, 2, 4, 8, 12, 16, 24, 32]
BIG_K = 256  # tokens of the batch whose per-token cost stands for ggml's best arithmetic rate


def machine_info(llm) -> dict:
    from ._native import devices, ffi, lib

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus_available": llm.n_threads if llm else os.cpu_count(), "threads": llm.n_threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "build": ffi.string(lib.sirius_version()).decode(),
            "system_info": ffi.string(lib.sirius_system_info()).decode().strip(),
            "devices": devices()}


def predict(vc: list[dict], k: int, a: float, s_ms: float, width: int = 1) -> tuple[float, float]:
    """The engine's cost model (the one period="auto" decides with, sirius_cost_predict) on the measured verify
    curve: (ms of the period's dense batch, predicted tokens/s) for periods of K at acceptance rate a with sparse
    steps of s_ms (a tree of width W: 1 + (K-2)·W sparse steps and a (K-1)·W + 1 token batch)."""
    from ._native import check, ffi, lib

    ks = ffi.new("int32_t[]", [r["k"] for r in vc])
    ms = ffi.new("double[]", [r["seconds"] * 1000.0 for r in vc])
    v, tps = ffi.new("double *"), ffi.new("double *")
    check(lib.sirius_cost_predict(ks, ms, len(vc), int(k), int(width), float(a), float(s_ms), v, tps))
    return v[0], tps[0]


def verify_curve(llm, prompt: str, ks=VERIFY_KS, repeats: int = 3, weight_bytes_per_step: int = 0) -> list[dict]:
    """Dense K-token batches (logits at every position) after a prefilled prompt, as multiples r(K) of a
    one-token decode step, with two lower bounds beside each:

    * bytes_bound_r: a K-token pass reads the weights once, as one token does, and writes K rows of logits:
      (W + K * n_vocab * 4) / (W + n_vocab * 4). Where r(K) is near it, the batch is bandwidth-bound.
    * arith_bound_r: K tokens at the per-token cost c of a large batch (BIG_K tokens, weight reads fully
      amortised: the arithmetic rate ggml's own gemm kernels reach on this machine), K * c / v(1). Where r(K)
      is near it, the batch is compute-bound at ggml's best rate; above it, small batches run slower kernels.
    """
    toks = llm.tokenize(prompt, add_bos=True)
    llm.reset()
    llm.eval(toks, logits_all=False)
    ms = llm.measure_verify(ks, repeats=repeats)
    one = ms[ks.index(1)] if 1 in ks else llm.measure_verify([1], repeats)[0]
    big_k = min(BIG_K, llm.n_ctx() - len(toks))
    per_token = llm.measure_verify([big_k], repeats=1)[0] / big_k if big_k >= 64 else None
    out_bytes = 4 * llm.n_vocab()
    w = max(weight_bytes_per_step, 1)
    rows = []
    for k, m in zip(ks, ms):
        arith = k * per_token / one if per_token else None
        rows.append({"k": k, "seconds": m / 1000.0, "r": m / one, "arith_bound_r": arith,
                     "bytes_bound_r": (w + k * out_bytes) / (w + out_bytes)})
    return rows


def step_bytes_ratio(st: dict) -> float:
    """Dense bytes over sparse bytes per decode step, from the engine's stats (threshold: at its measured density)."""
    if not st.get("sparse"):
        return 1.0
    dense, sparse = st["dense_step_bytes"], st["sparse_step_bytes"]
    if st.get("sparsity") == "threshold" and st["density_actual"] < 1.0:
        skipped = (dense - sparse) * (1.0 - st["density_measured"]) / (1.0 - st["density_actual"])
        sparse = dense - skipped
    return dense / sparse if sparse > 0 else 1.0


def decoded_densely(r: dict) -> bool:
    """A Sirius row whose auto period drafted nothing, or gave up drafting (auto_dense) and decoded the rest of
    its calls densely: its speed is mostly dense decoding's, and its ratio to the dense row the machine's drift."""
    return r["mode"] == "sirius" and r.get("period") == "auto" and (bool(r.get("auto_dense")) or not r.get("aal"))


def best_sirius(runs: list[dict]) -> dict | None:
    """The fastest Sirius configuration of a run (density, K, draft_vocab), with its ratio to dense: among the rows
    that drafted, or, when none did, the fastest row, marked decoded_densely."""
    sir = [r for r in runs if r["mode"] == "sirius" and r["ratio_vs_dense"]]
    if not sir:
        return None
    drafted = [r for r in sir if not decoded_densely(r)]
    b = max(drafted or sir, key=lambda r: r["tokens_per_second"])
    out = {k: b[k] for k in ("sparsity", "density", "period", "width", "draft_vocab", "tokens_per_second",
                             "ratio_vs_dense", "aal", "accept_rate")}
    out["decoded_densely"] = decoded_densely(b)
    return out


class Config(NamedTuple):
    """One configuration of a run: dense, or a sparsity at a density (and, for Sirius, a period and width)."""
    mode: str
    sparsity: Optional[str] = None
    density: float = 1.0
    period: Union[int, str, None] = None
    width: Optional[int] = None
    draft_vocab: Optional[int] = None

    def kwargs(self, acceptance: str, threshold: float) -> dict:
        if self.mode == "dense":
            return {"mode": "dense"}
        kw = dict(mode=self.mode, sparsity=self.sparsity, density=self.density, draft_vocab=self.draft_vocab)
        if self.mode == "sirius":
            kw.update(period=self.period, acceptance=acceptance, threshold=threshold, width=self.width)
        return kw


def configs_for(modes, sparsities, densities, periods, widths, draft_vocabs) -> list[Config]:
    """Dense first (Sirius rows are compared with it too), then every sparse and Sirius combination."""
    out = [Config("dense")] if "dense" in modes or "sirius" in modes else []
    if "sparse" in modes:
        out += [Config("sparse", sp, d, draft_vocab=v) for sp in sparsities for d in densities for v in draft_vocabs]
    if "sirius" in modes:
        out += [Config("sirius", sp, d, k, w, v) for sp in sparsities for d in densities for k in periods
                for w in widths for v in draft_vocabs]
    return out


def measure(llm, configs: list[Config], prompts: list[str], *, tokens, repeats, acceptance, threshold, log) -> dict:
    """Every configuration once per repeat, interleaved (repeat r on prompt r mod n): {config: [stats, ...]}, each
    stats with its agreement with that repeat's dense tokens."""
    stats = {c: [] for c in configs}
    for rep in range(repeats):
        p = prompts[rep % len(prompts)]
        dense_ids = None
        for c in configs:
            llm.reset()
            st = llm.create_completion(p, max_tokens=tokens, ignore_eos=True, **c.kwargs(acceptance, threshold))["stats"]
            if c.mode == "dense":
                dense_ids = st["token_ids"]
            st["agreement_with_dense"] = prefix_agreement(st["token_ids"], dense_ids) if dense_ids else None
            stats[c].append(st)
            extra = (f" AAL {st['aal']:.2f}/{c.period}" + (f" W={c.width}" if c.width > 1 else "")
                     if c.mode == "sirius" and st["aal"] else "")
            head = f" V={st['draft_vocab']}" if st.get("draft_vocab") else ""
            log(f"  repeat {rep + 1}/{repeats} {c.mode:6} {c.sparsity or '':8} {c.density:4.2f} {c.period or '':>4}{head}: "
                f"{st['tokens_per_second']:7.2f} tok/s{extra}")
    return stats


def summarise(c: Config, sts: list[dict], medians: dict, vc, acceptance, threshold) -> dict:
    """One configuration's row: medians of its repeats, its ratio to dense and, for Sirius, the pooled loop
    figures and the cost model's prediction (medians: every configuration's median tokens/s, for dense's and
    the sparse-only row's at the same density)."""
    st, tps = sts[-1], medians[c]
    dense_tps = medians.get(Config("dense"))
    sparse_tps = medians.get(Config("sparse", c.sparsity, c.density, draft_vocab=c.draft_vocab))
    # threshold keeps a varying share of neurons: the one its decodes measured (the calibrated one when none ran
    # sparse, as `auto` may decide)
    measured = [x["density_measured"] for x in sts if x.get("density_measured")]
    dens = statistics.median(measured) if c.sparsity == "threshold" and measured else st.get("density_actual", 1.0)
    dense = c.mode == "dense"
    row = {"mode": c.mode, "sparsity": c.sparsity, "density": c.density, "tokens_per_second": tps,
           "group_size": None if dense else st.get("group_size"),
           "draft_vocab": None if dense else st.get("draft_vocab", 0),
           "sparse_down_type": st.get("sparse_down_type"),
           "samples": [x["tokens_per_second"] for x in sts], "ratio_vs_dense": tps / dense_tps if dense_tps else None,
           "ideal_ratio": 1.0 if dense else step_bytes_ratio(st),
           "sparse_param_fraction": 1.0 if dense else st["sparse_param_fraction"],
           "density_actual": dens,
           "sparse_bytes": st.get("sparse_bytes", 0),
           "sparse_device_bytes": st.get("sparse_device_bytes", 0),
           "sparse_build_seconds": st.get("sparse_build_seconds", 0.0),
           "agreement_with_dense": statistics.median(x["agreement_with_dense"] for x in sts)
           if st["agreement_with_dense"] is not None else None}
    if c.mode != "sirius":
        return row
    pool = figures.pooled(sts)
    a = pool["accept_rate"] or 0.0
    s_ms = 1000.0 / sparse_tps if sparse_tps else statistics.median(x["sparse_step_ms"] for x in sts)
    k = c.period if c.period != "auto" else st["period_last"]
    v_k, pred = predict(vc, k, a, s_ms, c.width) if k and k >= 2 else (None, None)
    row.update(period=c.period, width=c.width, acceptance=acceptance,
               threshold=threshold if acceptance == "relaxed" else None,
               aal=pool["aal"], effective_density=pool["effective_density"],
               accept_rate=a, sparse_step_ms=s_ms, verify_ms=v_k,
               draft_seconds=statistics.median(x["draft_seconds"] for x in sts),
               verify_seconds=statistics.median(x["verify_seconds"] for x in sts),
               dense_steps=statistics.median(x["dense_steps"] for x in sts),
               auto_dense=any(x["auto_dense"] for x in sts),
               tree_nodes=statistics.median(x["tree_nodes"] for x in sts),
               predicted_tokens_per_second=pred if c.period != "auto" else None,
               ideal_ratio=None)  # Sirius's bound depends on acceptance: see effective_density
    return row


def run(model, *, modes, sparsities, densities, threads, tokens, repeats, prompt=None, prompts=None, periods=(16,),
        acceptance="relaxed", threshold=0.1, widths=(1,), draft_vocabs=(None,), curve=False, n_ctx=2048, mlock=True,
        n_gpu_layers=0, log=print) -> dict:
    from .llm import LLM

    prompts = list(prompts or ([prompt] if prompt else GSM_PROMPTS))
    configs = configs_for(modes, sparsities, densities, periods, widths, draft_vocabs)
    # mlock: weights stay in RAM. Otherwise the OS may page out the file pages one configuration does not touch
    # (a VM's DAMON reclaim does, within seconds) and the next configuration measures disk reads.
    with LLM(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, use_mlock=mlock,
             n_gpu_layers=n_gpu_layers) as llm:
        step_bytes = llm.step_bytes()
        if "threshold" in sparsities and modes != ["dense"]:
            from . import calibration

            missing = calibration.uncalibrated(llm.model_path, densities)
            if missing:
                log(f"calibrating threshold sparsity for density {', '.join(map(str, missing))} (built-in text)")
                res = llm.calibrate(missing)
                log(f"  thresholds in {res['path']} ({res['seconds']:.1f} s)")
        llm.create_completion(prompts[0], max_tokens=4)  # warm-up: page the weights in
        stats = measure(llm, configs, prompts, tokens=tokens, repeats=repeats, acceptance=acceptance,
                        threshold=threshold, log=log)
        vc = verify_curve(llm, prompts[0], weight_bytes_per_step=step_bytes) if curve or "sirius" in modes else None
        medians = {c: statistics.median(x["tokens_per_second"] for x in sts) for c, sts in stats.items()}
        runs = [summarise(c, stats[c], medians, vc, acceptance, threshold) for c in configs if c.mode in modes]
        out = {"machine": machine_info(llm), "model": llm.model_path, "architecture": llm.architecture,
               "prompt_tokens": stats[configs[0]][0]["prompt_tokens"], "prompts": prompts, "decode_tokens": tokens,
               "repeats": repeats, "mlock": mlock, "n_gpu_layers": n_gpu_layers, "weight_bytes_per_step": step_bytes, "runs": runs,
               "best_sirius": best_sirius(runs)}
        if vc:
            out["verify_curve"] = vc
        return out


def format_table(res: dict) -> str:
    lines = [f"{res['model']} ({res['architecture']}), {res['machine']['threads']} threads, "
             f"{res['decode_tokens']} tokens x {res['repeats']} repeats (medians)",
             f"{'mode':7} {'sparsity':9} {'G':>3} {'density':>7} {'K':>5} {'vocab':>6} {'tok/s':>8} {'vs dense':>9} "
             f"{'ideal':>6} {'params read':>11} {'copy MB':>8} {'build s':>7} {'AAL':>6} {'eff.dens':>8} {'agree':>6} "
             f"{'predicted':>9}"]
    for r in res["runs"]:
        ratio = f"{r['ratio_vs_dense']:.3f}x" if r["ratio_vs_dense"] else "-"
        ideal = f"{r['ideal_ratio']:5.2f}x" if r["ideal_ratio"] else "    -"
        pred = f"{r['predicted_tokens_per_second']:9.2f}" if r.get("predicted_tokens_per_second") else f"{'-':>9}"
        sir = (f" {r['aal'] or 0:6.2f} {r['effective_density']:8.2f} {r['agreement_with_dense']:6.2f} "
               f"{pred}") if r["mode"] == "sirius" else ""
        k = f"{r['period']}x{r['width']}" if r.get("width", 1) > 1 else str(r.get("period") or "-")
        k += "*" if decoded_densely(r) else ""
        g = r["group_size"] if r.get("group_size") else "-"
        vocab = (r["draft_vocab"] or "full") if r["mode"] != "dense" else "-"
        lines.append(f"{r['mode']:7} {r['sparsity'] or '-':9} {g:>3} {r['density_actual']:7.2f} {k:>5} {vocab:>6} "
                     f"{r['tokens_per_second']:8.2f} {ratio:>9} {ideal:>6} {r['sparse_param_fraction']:11.3f} "
                     f"{r['sparse_bytes'] / 1e6:8.1f} {r['sparse_build_seconds']:7.2f}{sir}")
    if any(decoded_densely(r) for r in res["runs"]):
        lines.append("* auto drafted nothing, or gave up drafting (it did not pay here), and decoded densely: the "
                     "ratio is mostly dense against dense, the machine's drift between rows")
    b = res.get("best_sirius")
    if b:
        width = f" x{b['width']}" if b["width"] > 1 else ""
        lines.append(f"best Sirius on this machine: {b['sparsity']} density {b['density']}, K={b['period']}{width}, "
                     f"draft_vocab {b['draft_vocab'] or 'full'}: {b['tokens_per_second']:.2f} tok/s, "
                     f"{b['ratio_vs_dense']:.3f}x dense"
                     + (" (no Sirius row drafted throughout: none beat dense decoding)" if b.get("decoded_densely")
                        else ""))
    if res.get("verify_curve"):
        lines.append("dense K-token verify, in decode steps: r(K) measured [arithmetic bound, bytes bound]")
        lines.append("  " + ", ".join(
            f"K={v['k']}: {v['r']:.2f} [{v['arith_bound_r'] or 0:.2f}, {v['bytes_bound_r']:.2f}]"
            for v in res["verify_curve"]))
    return "\n".join(lines)


def add_parser(sub) -> None:
    from .llm import GenerationOptions

    p = sub.add_parser("bench", help="decode speed of dense vs sparse, side by side in one run")
    p.add_argument("model", nargs="?", default=None, help="GGUF path or model name (default: the default model)")
    p.add_argument("--modes", default="dense,sparse", help="comma list of dense,sparse,sirius")
    p.add_argument("--sparsity", default="griffin", help="comma list of griffin,topk,threshold (threshold: "
                   "calibrates missing densities first)")
    p.add_argument("--density", default="0.3,0.5,0.7,1.0", help="comma list of densities in (0, 1]")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--period", default="16", help="sirius: comma list of K values (or 'auto')")
    p.add_argument("--acceptance", default="relaxed", choices=["relaxed", "strict"], help="sirius acceptance rule")
    p.add_argument("--width", default="1", help="sirius: comma list of tree widths (draft beams per period, 1-8)")
    p.add_argument("--threshold", type=float, default=GenerationOptions.threshold, help="sirius relaxed threshold")
    p.add_argument("--draft-vocab", default="default", help="sparse and sirius: comma list of draft_vocab values "
                   "(0 = full head; 'default' = the engine's default)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU build (-1 = all)")
    p.add_argument("--verify-curve", action="store_true", help="also measure dense K-token batch costs r(K)")
    p.add_argument("--prompt", default=None, help="one prompt instead of the built-in GSM-style ones")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-mlock", action="store_true", help="do not lock the weights in RAM (by default bench does, "
                   "so no configuration pays for pages the OS evicted during another)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    from ._native import lib
    from .errors import InvalidParameterError
    from .llm import MODES, SPARSITIES

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    sparsities = [s.strip() for s in a.sparsity.split(",") if s.strip()]
    for m in modes:
        if m not in MODES:
            raise InvalidParameterError(f"bench: mode {m!r} is not available (available: {', '.join(MODES)})")
    for s in sparsities:
        if s not in SPARSITIES:
            raise InvalidParameterError(f"bench: sparsity {s!r} is not available (available: {', '.join(SPARSITIES)})")
    try:
        densities = [float(d) for d in a.density.split(",") if d.strip()]
    except ValueError:
        raise InvalidParameterError(f"bench: --density must be a comma list of numbers, got {a.density!r}") from None
    if not densities or any(not 0 < d <= 1 for d in densities):
        raise InvalidParameterError(f"bench: densities must be in (0, 1], got {a.density!r}")
    if a.tokens < 1 or a.repeats < 1:
        raise InvalidParameterError("bench: --tokens and --repeats must be >= 1")
    try:
        periods = [k.strip() if k.strip() == "auto" else int(k) for k in a.period.split(",") if k.strip()]
    except ValueError:
        raise InvalidParameterError(f"bench: --period must be a comma list of integers >= 2 or 'auto', "
                                    f"got {a.period!r}") from None
    kmax, wmax = lib.SIRIUS_MAX_PERIOD, lib.SIRIUS_MAX_WIDTH
    if not periods or any(k != "auto" and not 2 <= k <= kmax for k in periods):
        raise InvalidParameterError(f"bench: periods must be in [2, {kmax}] or 'auto', got {a.period!r}")
    try:
        widths = [int(w) for w in a.width.split(",") if w.strip()]
    except ValueError:
        raise InvalidParameterError(f"bench: --width must be a comma list of integers in [1, {wmax}], "
                                    f"got {a.width!r}") from None
    if not widths or any(not 1 <= w <= wmax for w in widths):
        raise InvalidParameterError(f"bench: widths must be in [1, {wmax}], got {a.width!r}")
    try:
        draft_vocabs = [None if v.strip() == "default" else int(v) for v in a.draft_vocab.split(",") if v.strip()]
    except ValueError:
        raise InvalidParameterError(f"bench: --draft-vocab must be a comma list of integers >= 0 or 'default', "
                                    f"got {a.draft_vocab!r}") from None
    if not draft_vocabs or any(v is not None and v < 0 for v in draft_vocabs):
        raise InvalidParameterError(f"bench: draft_vocab values must be >= 0, got {a.draft_vocab!r}")
    res = run(a.model, modes=modes, sparsities=sparsities, densities=densities, threads=a.threads, tokens=a.tokens,
              repeats=a.repeats, prompt=a.prompt, periods=periods, acceptance=a.acceptance, threshold=a.threshold,
              widths=widths, draft_vocabs=draft_vocabs,
              curve=a.verify_curve, mlock=not a.no_mlock, n_gpu_layers=a.n_gpu_layers, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
