"""A/B of a ggml-cpu switch on the dense K-token verify (and optionally the prefill): the patches' kernels read an
environment variable once per process (GGML_CPU_Q4_1_COLS, GGML_CPU_Q4_K_COLS, GGML_CPU_Q6_K_COLS,
GGML_CPU_FA_ROWS), so each setting runs in its own process, and the two alternate `--rounds` times to spread this
shared VM's noise evenly over both. Prints the median time of each K per setting, r(K) = v(K) / v(1), and the
ratio on / off; `--json` keeps every process's figures.

    python benchmarks/verify_ab.py smollm2-135m-instruct --env GGML_CPU_Q4_1_COLS --threads 2 --prefill 512
    python benchmarks/verify_ab.py qwen2.5-coder-1.5b-instruct --env GGML_CPU_FA_ROWS --depth 700 --ks 1,16
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(model: str, ks: list[int], depth: int, prefill: int, threads: int, reps: int) -> dict:
    from sirius_local import LLM, registry
    from sirius_local.calibration_text import PASSAGES

    need = max(depth + max(ks), prefill)
    with LLM(str(registry.resolve(model)), n_ctx=max(2048, need + 16), n_threads=threads) as m:
        toks = m.tokenize("\n\n".join(PASSAGES * 4))
        if len(toks) < need:
            raise SystemExit(f"the built-in text has {len(toks)} tokens, fewer than the {need} asked for")
        out = {}
        if prefill:
            times = []
            for _ in range(3):
                m.reset()
                t0 = time.perf_counter()
                m.eval(toks[:prefill], logits_all=False)
                times.append(time.perf_counter() - t0)
            out["prefill_s"] = statistics.median(times)
        m.reset()
        m.eval(toks[:depth], logits_all=False)
        out["verify_ms"] = dict(zip(map(str, ks), m.measure_verify(ks, repeats=reps)))  # the cache restored after
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--env", required=True, help="the switch: set to --on and 0 (off) in alternate processes")
    ap.add_argument("--on", default="1", help="the switch's value for 'on' (default 1)")
    ap.add_argument("--off", default="0", help="its value for 'off' (default 0; e.g. two SIRIUS_LOCAL_LIB_DIR builds)")
    ap.add_argument("--ks", default="1,2,4,8,12,16,24,32", help="batch sizes (1 is the decode step r divides by)")
    ap.add_argument("--depth", type=int, default=32, help="KV cells before the batch (512+: attention's split path)")
    ap.add_argument("--prefill", type=int, default=0, help="also time a prefill of this many tokens (median of 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed batches per K and process (median)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, alternating")
    ap.add_argument("--json", help="write every process's figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    ks = sorted({int(k) for k in a.ks.split(",")} | {1})
    if a.child:
        print(json.dumps(measure(a.model, ks, a.depth, a.prefill, a.threads, a.reps)))
        return
    runs = {"1": [], "0": []}
    child = [sys.executable, __file__, a.model, "--env", a.env, "--ks", ",".join(map(str, ks)), "--depth", str(a.depth),
             "--prefill", str(a.prefill), "--threads", str(a.threads), "--reps", str(a.reps), "--child"]
    for _ in range(a.rounds):
        for setting, value in (("1", a.on), ("0", a.off)):
            out = subprocess.run(child, env=dict(os.environ, **{a.env: value}), capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the measuring process ({a.env}={value}) failed:\n{out.stderr}")
            runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {s: {k: statistics.median(r["verify_ms"][str(k)] for r in runs[s]) for k in ks} for s in runs}
    print(f"{a.model}, {a.env}={a.on} (on) / {a.off} (off), {a.threads} threads, depth {a.depth}, "
          f"medians of {a.rounds} processes x {a.reps}")
    print("| K | " + " | ".join(map(str, ks)) + " |")
    print("|---" * (len(ks) + 1) + "|")
    for s, name in (("1", "on"), ("0", "off")):
        print(f"| {name}: ms | " + " | ".join(f"{med[s][k]:.1f}" for k in ks) + " |")
    for s, name in (("1", "on"), ("0", "off")):
        print(f"| {name}: r(K) | " + " | ".join(f"{med[s][k] / med[s][1]:.2f}" for k in ks) + " |")
    print("| on / off | " + " | ".join(f"{med['1'][k] / med['0'][k]:.2f}" for k in ks) + " |")
    if a.prefill:
        pre = {s: statistics.median(r["prefill_s"] for r in runs[s]) for s in runs}
        print(f"prefill of {a.prefill} tokens: on {a.prefill / pre['1']:.1f} tok/s, "
              f"off {a.prefill / pre['0']:.1f} tok/s ({pre['0'] / pre['1']:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "env": a.env, "on": a.on, "off": a.off, "threads": a.threads,
                       "depth": a.depth, "ks": ks, "prefill": a.prefill, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
