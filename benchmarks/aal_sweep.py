"""Why is the accepted length what it is? Sirius relaxed on the eval's own prompts (GSM-style 8-shot by default;
--task strategyqa / humaneval, and --chat for a task's bare question in the model's chat template), one setting
changed at a time (threshold, acceptance temperature T, period K, density, sparsity method, the drafts' trimmed
output head), side by side on the same problems and the same session.

    python benchmarks/aal_sweep.py [MODEL] [--problems 6] [--tokens 80] [--threads 2] [--settings "baseline,width 2"]
                                   [--task gsm|strategyqa|humaneval] [--chat] [--json OUT]

Per setting: AAL, the per-draft acceptance rate a (accepted / judged: a draft is judged when all before it
passed), the AAL that a would give if drafts were accepted independently (1 + a + ... + a^(K-1)), the a that
AAL >= 14/16 would need, where the rejected drafts
stood (their dense probability under T: just under the threshold, or far below), and the share of the dense
greedy tokens reproduced before the first difference (fidelity: the price of a looser rule), and, for a trimmed
draft head, its coverage: the share of the dense greedy continuation's tokens that lie in the head's subset. Each problem is
prefilled once; every later setting starts from the kept prefill (Griffin's statistic is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from sirius_local import LLM
from sirius_local.stats import aal as aal_of, prefix_agreement
from sirius_local.evaluation import tasks
from sirius_local import _testing

# The baseline drafts with the full output head (draft_vocab 0), so the head's settings below show what it costs.
BASE = dict(sparsity="griffin", density=0.5, period=16, threshold=0.1, accept_temperature=0.6, width=1, draft_vocab=0)
# Environment switches a setting runs under (the draft head's subset rule is a measurement switch, not an option).
ENV = {"vocab ids 2048": {"SIRIUS_HEAD_RULE": "ids"},
       # the 1024 / 2048 top logits and as many lowest ids (code's whitespace and identifier pieces)
       "vocab mix 1024": {"SIRIUS_HEAD_RULE": "mix"}, "vocab mix 2048": {"SIRIUS_HEAD_RULE": "mix"},
       # top-k on 32/256-neuron groups (the path of GPU-offloaded layers), for the granularity comparison
       **{f"top-k groups {d}": {"SIRIUS_PER_TOKEN_GROUPS": "1"} for d in ("0.3", "0.5", "0.7")},
       # top-k on runs of R consecutive neurons (contiguous rows), for the run-length comparison
       **{f"top-k run{r} {d}": {"SIRIUS_NEURON_RUN": str(r)} for r in (4, 8, 16, 32) for d in ("0.3", "0.5", "0.7")}}
SWEEP = [
    ("baseline", {}),
    ("density 0.3", {"density": 0.3}),
    ("density 0.4", {"density": 0.4}),
    ("vocab 512", {"draft_vocab": 512}),
    ("vocab 2048", {"draft_vocab": 2048}),
    ("vocab 8192", {"draft_vocab": 8192}),
    ("vocab ids 2048", {"draft_vocab": 2048}),  # the 2048 lowest token ids instead of the prompt's top logits
    ("vocab mix 1024", {"draft_vocab": 1024}),
    ("vocab mix 2048", {"draft_vocab": 2048}),
    ("vocab 4096", {"draft_vocab": 4096}),
    ("vocab 16384", {"draft_vocab": 16384}),
    ("vocab 32768", {"draft_vocab": 32768}),
    ("vocab 2048 density 0.3", {"draft_vocab": 2048, "density": 0.3}),
    ("vocab 2048 density 0.4", {"draft_vocab": 2048, "density": 0.4}),
    ("vocab 2048 density 0.7", {"draft_vocab": 2048, "density": 0.7}),
    ("threshold 0.05", {"threshold": 0.05}),
    ("threshold 0.02", {"threshold": 0.02}),
    ("threshold 0.01", {"threshold": 0.01}),
    ("T 1.0", {"accept_temperature": 1.0}),
    ("K 8", {"period": 8}),
    ("density 0.6", {"density": 0.6}),
    ("density 0.7", {"density": 0.7}),
    ("density 0.8", {"density": 0.8}),
    ("density 0.9", {"density": 0.9}),
    ("top-k 0.5", {"sparsity": "topk"}),
    ("top-k 0.3", {"sparsity": "topk", "density": 0.3}),
    ("top-k 0.7", {"sparsity": "topk", "density": 0.7}),
    ("top-k groups 0.3", {"sparsity": "topk", "density": 0.3}),
    ("top-k groups 0.5", {"sparsity": "topk", "density": 0.5}),
    ("top-k groups 0.7", {"sparsity": "topk", "density": 0.7}),
    *[(f"top-k run{r} {d}", {"sparsity": "topk", "density": float(d)}) for r in (4, 8, 16, 32) for d in ("0.3", "0.5", "0.7")],
    # per-token thresholds (CATS on single neurons; `sirius-local calibrate MODEL --density 0.3,0.5,0.7` first)
    ("cats 0.3", {"sparsity": "threshold", "density": 0.3}),
    ("cats 0.5", {"sparsity": "threshold", "density": 0.5}),
    ("cats 0.7", {"sparsity": "threshold", "density": 0.7}),
    ("width 2", {"width": 2}),  # the paper's 15.22/16 is at its best width, 8
    ("width 4", {"width": 4}),
    ("width 8", {"width": 8}),
]


def needed_rate(aal: float, k: int) -> float:
    """The per-draft acceptance a with 1 + a + ... + a^(k-1) = aal (bisection; the sum rises with a)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(mid ** i for i in range(k)) < aal:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--settings", default=None, help="comma list of setting names to run (default: all)")
    ap.add_argument("--task", default="gsm", choices=("gsm", "strategyqa", "humaneval"), help="whose prompts")
    ap.add_argument("--chat", action="store_true",
                    help="the task's bare question as one user message in the chat template (no few-shot)")
    a = ap.parse_args()
    sweep = SWEEP
    if a.settings:
        names = [n.strip() for n in a.settings.split(",")]
        unknown = [n for n in names if n not in dict(SWEEP)]
        if unknown:
            ap.error(f"unknown setting(s) {unknown}; available: {', '.join(n for n, _ in SWEEP)}")
        sweep = [(n, c) for n, c in SWEEP if n in names]

    task = tasks.get(a.task)
    if a.chat and a.task == "humaneval":
        ap.error("--chat takes a task with questions (gsm, strategyqa); humaneval's prompts are code to complete")
    examples = task.load(a.problems, a.seed)
    stop = None if a.chat else task.stop
    acc = {name: {"agree": [], "stats": [], "covered": [0, 0]} for name, _ in sweep}
    t_start = time.time()
    with LLM(a.model, n_ctx=2048, n_threads=a.threads) as llm:
        for n, ex in enumerate(examples):
            llm.reset()
            prompt = (llm.apply_chat_template([{"role": "user", "content": ex.meta["question"]}]) if a.chat
                      else ex.prompt)
            heads = {}
            for name, change in sweep:  # sparse settings first: the first one prefills and collects Griffin's stats
                cfg = {**BASE, **change}
                saved = {k: os.environ.get(k) for k in ENV.get(name, {})}
                os.environ.update(ENV.get(name, {}))
                try:
                    res = llm.create_completion(prompt, max_tokens=a.tokens, stop=stop, mode="sirius",
                                                trace=True, **cfg)
                    heads[name] = set(_testing.draft_head_tokens(llm)) if res["stats"]["draft_vocab"] else None
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                acc[name]["stats"].append(res["stats"])
            dense = llm.create_completion(prompt, max_tokens=a.tokens, stop=stop)["stats"]["token_ids"]
            for name, _ in sweep:
                st = acc[name]["stats"][-1]
                acc[name]["agree"].append(prefix_agreement(st["token_ids"], dense))
                if heads[name] is not None:
                    acc[name]["covered"][0] += sum(t in heads[name] for t in dense)
                    acc[name]["covered"][1] += len(dense)
            print(f"problem {n + 1}/{len(examples)} done, {time.time() - t_start:.0f} s", file=sys.stderr)

    rows = []
    for name, change in sweep:
        cfg = {**BASE, **change}
        k = cfg["period"]
        periods = [p for st in acc[name]["stats"] for p in st["trace"]]
        accepted = sum(p["accepted"] for p in periods)
        rejected = [p["probs"][p["accepted"]] for p in periods if p["accepted"] < len(p["probs"])]
        # a draft is judged only when all before it passed: a = accepted / judged (the geometric model's estimate)
        judged = accepted + len(rejected)
        advanced = sum(st["advanced"] for st in acc[name]["stats"])
        n_periods = sum(st["periods"] for st in acc[name]["stats"])
        aal = aal_of(advanced, n_periods) or 0.0
        rate = accepted / judged if judged else 0.0
        covered, n_dense = acc[name]["covered"]
        rows.append({
            "setting": name, **cfg, "periods": n_periods, "aal": aal, "accept_rate": rate,
            "aal_if_independent": sum(rate ** i for i in range(k)),
            "rate_needed_for_aal_14_of_16": needed_rate(14 * k / 16, k),
            "rejected_near": (sum(1 for q in rejected if q >= cfg["threshold"] / 10) / len(rejected)
                              if rejected else 0.0),
            "rejected_median_prob": statistics.median(rejected) if rejected else None,
            "agreement_with_dense": statistics.mean(acc[name]["agree"]),
            "effective_density": statistics.mean(st["effective_density"] for st in acc[name]["stats"]),
            "draft_vocab_actual": statistics.mean(st["draft_vocab"] for st in acc[name]["stats"]),
            "sparse_byte_fraction": statistics.mean(st["sparse_byte_fraction"] for st in acc[name]["stats"]),
            "head_coverage": covered / n_dense if n_dense else None,
        })
    out = {"model": a.model, "task": a.task, "chat": a.chat, "problems": len(examples), "tokens": a.tokens,
           "threads": a.threads, "rows": rows}
    print("| setting | K | AAL | a | AAL if independent | a needed for 14/16 | rejected within 10x of threshold | "
          "median p(rejected) | agreement with dense | effective density | draft vocab | head coverage | step bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        med = f"{r['rejected_median_prob']:.3f}" if r["rejected_median_prob"] is not None else "-"
        vocab = f"{r['draft_vocab_actual']:.0f}" if r["draft_vocab_actual"] else "full"
        cover = f"{r['head_coverage']:.3f}" if r["head_coverage"] is not None else "-"
        print(f"| {r['setting']} | {r['period']} | {r['aal']:.2f} | {r['accept_rate']:.3f} | "
              f"{r['aal_if_independent']:.2f} | {r['rate_needed_for_aal_14_of_16']:.3f} | {r['rejected_near']:.2f} | "
              f"{med} | {r['agreement_with_dense']:.2f} | {r['effective_density']:.2f} | {vocab} | {cover} | "
              f"{r['sparse_byte_fraction']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
