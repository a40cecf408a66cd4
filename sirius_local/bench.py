"""`sirius-local bench`: decode speed of each mode side by side with dense llama.cpp, in one process.

Every configuration runs the same prompt for the same number of tokens (end-of-generation ignored), on the
same model, build and threads. Configurations are interleaved inside each repeat, so drift on a shared
machine hits them alike; results are medians over repeats and ratios to the dense median.

The ideal ratio is the bytes-read bound: a decode step reads every weight byte once (the token embedding only
for its one row, unless it doubles as the output head); a sparse step skips the FFN bytes of the neurons it
drops. ideal_ratio = dense bytes / sparse bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from gguf import GGUFReader

DEFAULT_PROMPT = ("Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                  "How many clips did Natalia sell altogether in April and May?\nA: Let's think step by step.")


def weight_bytes(path: str) -> dict:
    """Bytes per decode step from the GGUF's tensor table: total, and FFN bytes per layer (gate+up+down)."""
    r = GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    tied = "output.weight" not in sizes
    per_step = sum(b for n, b in sizes.items() if n != "token_embd.weight" or tied)
    ffn = {}
    for n, b in sizes.items():
        parts = n.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in ("ffn_gate", "ffn_up", "ffn_down"):
            ffn[int(parts[1])] = ffn.get(int(parts[1]), 0) + b
    return {"per_step": per_step, "ffn_per_layer": ffn}


def machine_info(llm) -> dict:
    from ._native import ffi, lib

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
            "system_info": ffi.string(lib.sirius_system_info()).decode().strip()}


def run(model, *, modes, sparsities, densities, threads, tokens, repeats, prompt, n_ctx=2048, log=print) -> dict:
    from .llm import LLM

    with LLM(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads) as llm:
        wb = weight_bytes(llm.model_path)
        configs = []
        if "dense" in modes:
            configs.append(("dense", None, 1.0))
        if "sparse" in modes:
            configs += [("sparse", sp, d) for sp in sparsities for d in densities]
        llm.create_completion(prompt, max_tokens=4)  # warm-up: page the weights in
        samples = {c: [] for c in configs}
        extra = {}
        for rep in range(repeats):
            for c in configs:
                mode, sp, d = c
                kw = dict(mode=mode) if mode == "dense" else dict(mode=mode, sparsity=sp, density=d)
                llm.reset()
                st = llm.create_completion(prompt, max_tokens=tokens, ignore_eos=True, **kw)["stats"]
                samples[c].append(st["tokens_per_second"])
                extra[c] = st
                log(f"  repeat {rep + 1}/{repeats} {mode:6} {sp or '':8} {d:4.2f}: {st['tokens_per_second']:7.2f} tok/s")
        dense_tps = statistics.median(samples[configs[0]]) if configs[0][0] == "dense" else None
        runs = []
        for c in configs:
            mode, sp, d = c
            st = extra[c]
            tps = statistics.median(samples[c])
            if mode == "dense":
                ideal, frac = 1.0, 1.0
            else:
                # Bytes skipped: per sparse layer, the FFN bytes of the dropped fraction of neurons.
                skipped = sum(wb["ffn_per_layer"].values()) * (1.0 - st["density_actual"]) if st["sparse"] else 0.0
                ideal = wb["per_step"] / (wb["per_step"] - skipped)
                frac = st["sparse_param_fraction"]
            runs.append({"mode": mode, "sparsity": sp, "density": d, "tokens_per_second": tps,
                         "samples": samples[c], "ratio_vs_dense": tps / dense_tps if dense_tps else None,
                         "ideal_ratio": ideal, "sparse_param_fraction": frac,
                         "density_actual": st.get("density_actual", 1.0), "sparse_bytes": st.get("sparse_bytes", 0),
                         "sparse_build_seconds": st.get("sparse_build_seconds", 0.0)})
        return {"machine": machine_info(llm), "model": llm.model_path, "architecture": llm.architecture,
                "prompt_tokens": extra[configs[0]]["prompt_tokens"], "decode_tokens": tokens, "repeats": repeats,
                "weight_bytes_per_step": wb["per_step"], "runs": runs}


def format_table(res: dict) -> str:
    lines = [f"{res['model']} ({res['architecture']}), {res['machine']['threads']} threads, "
             f"{res['decode_tokens']} tokens x {res['repeats']} repeats (medians)",
             f"{'mode':7} {'sparsity':9} {'density':>7} {'tok/s':>8} {'vs dense':>9} {'ideal':>6} {'params read':>11} "
             f"{'copy MB':>8}"]
    for r in res["runs"]:
        ratio = f"{r['ratio_vs_dense']:.3f}x" if r["ratio_vs_dense"] else "-"
        lines.append(f"{r['mode']:7} {r['sparsity'] or '-':9} {r['density_actual']:7.2f} {r['tokens_per_second']:8.2f} "
                     f"{ratio:>9} {r['ideal_ratio']:5.2f}x {r['sparse_param_fraction']:11.3f} {r['sparse_bytes'] / 1e6:8.1f}")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="decode speed of dense vs sparse, side by side in one run")
    p.add_argument("model", nargs="?", default=None, help="GGUF path or model name (default: the default model)")
    p.add_argument("--modes", default="dense,sparse", help="comma list of dense,sparse")
    p.add_argument("--sparsity", default="griffin", help="comma list (griffin)")
    p.add_argument("--density", default="0.3,0.5,0.7,1.0", help="comma list of densities in (0, 1]")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--json", default=None, help="write the results here")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
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
    res = run(a.model, modes=modes, sparsities=sparsities, densities=densities, threads=a.threads, tokens=a.tokens,
              repeats=a.repeats, prompt=a.prompt, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
