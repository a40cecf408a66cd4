"""Cost of patch 0006 (verify rows of flash attention computed as one-token decodes): the time of a K-token verify
batch deep in the context, with the patch's path on and off (GGML_CPU_FA_ROWS, read once per process, so each
setting runs in its own process; the two alternate `--rounds` times to spread the machine's noise evenly).

    python benchmarks/verify_attention.py qwen2.5-coder-1.5b-instruct --depth 700 --k 16 --threads 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def measure(model: str, depth: int, k: int, threads: int, reps: int) -> dict:
    from sirius_local import LLM, registry
    from sirius_local.calibration_text import PASSAGES

    with LLM(str(registry.resolve(model)), n_ctx=max(2048, depth + k + 16), n_threads=threads) as m:
        toks = m.tokenize("\n\n".join(PASSAGES * 4))
        if len(toks) < depth + k:
            raise SystemExit(f"the built-in text has {len(toks)} tokens, fewer than --depth + --k")
        m.reset()
        m.eval(toks[:depth], logits_all=False)
        decode_ms, verify_ms = m.measure_verify([1, k], repeats=reps)  # at this depth, the cache restored after
    return {"verify_s": verify_ms / 1e3, "decode_s": decode_ms / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--depth", type=int, default=700, help="KV cells before the batch (512+ takes the split path)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed batches per process (median)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, alternating")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.model, a.depth, a.k, a.threads, a.reps)))
        return
    res = {"1": [], "0": []}
    for _ in range(a.rounds):
        for setting in ("1", "0"):
            out = subprocess.run([sys.executable, __file__, a.model, "--depth", str(a.depth), "--k", str(a.k),
                                  "--threads", str(a.threads), "--reps", str(a.reps), "--child"],
                                 env=dict(os.environ, GGML_CPU_FA_ROWS=setting), capture_output=True, text=True,
                                 check=True)
            res[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    on, off = (statistics.median(r["verify_s"] for r in res[s]) for s in ("1", "0"))
    dec_on, dec_off = (statistics.median(r["decode_s"] for r in res[s]) for s in ("1", "0"))
    print(f"{a.model}, depth {a.depth}, K = {a.k}, {a.threads} threads, medians of {a.rounds} processes x {a.reps}:")
    print(f"  verify: rows path {on * 1e3:.1f} ms, ggml's own {off * 1e3:.1f} ms, ratio {on / off:.3f}")
    print(f"  decode: {dec_on * 1e3:.1f} ms and {dec_off * 1e3:.1f} ms (untouched by the patch)")


if __name__ == "__main__":
    main()
