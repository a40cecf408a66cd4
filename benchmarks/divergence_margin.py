"""Where a Sirius run first leaves dense greedy's tokens, how close the dense model's top two were there.

Why: at threshold >= 0.5 relaxed acceptance keeps only dense's argmax (like strict), yet the sweep's outputs
differ from the eval's dense rows. If the first difference sits at a near-tie of the dense logits, it is the
rounding of the K-token verify batch against the one-token decode, not the acceptance rule.

    python benchmarks/divergence_margin.py benchmarks/results/eval-gsm-qwen1.5b \\
        benchmarks/results/sweep-gsm-threshold-qwen1.5b/threshold-0.5 --problems 4 --threads 2

For each problem it evaluates prompt + dense's tokens up to the first difference in one batch and prints the
batch's logits for dense's token and Sirius's token there, and the gap between the top two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sirius_local import LLM
from sirius_local.evaluation import report, tasks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="an eval --out directory with dense rows")
    ap.add_argument("other", help="an eval --out directory with sirius rows on the same problems")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--ids", default=None, help="only these problems (comma list)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = json.loads((Path(a.base) / "config.json").read_text())
    dense = {r["id"]: r["token_ids"] for r in report.read_results(Path(a.base) / "results.jsonl") if r["mode"] == "dense"}
    other = [r for r in report.read_results(Path(a.other) / "results.jsonl")
             if r["mode"] == "sirius" and r["id"] in dense and r["token_ids"] != dense[r["id"]]
             and (not a.ids or r["id"] in a.ids.split(","))]
    exs = {e.id: e for e in tasks.get(cfg["task"]).load(cfg["limit"], cfg["seed"])}
    print(f"{len(other)} sirius rows differ from dense; the first {min(a.problems, len(other))}:")
    with LLM(cfg["model"], n_ctx=4096, n_threads=a.threads) as llm:
        for r in other[:a.problems]:
            d, s = dense[r["id"]], r["token_ids"]
            j = next((i for i, (x, y) in enumerate(zip(d, s)) if x != y), min(len(d), len(s)))
            if j >= min(len(d), len(s)):
                print(f"{r['id']}: one is a prefix of the other (lengths {len(d)}, {len(s)})")
                continue
            llm.reset()
            lg = np.asarray(llm.eval(llm.tokenize(exs[r["id"]].prompt) + d[:j]))[-1]
            top = np.sort(lg)[::-1]
            print(f"{r['id']}: first difference at token {j} of {len(d)}; batch logits: dense's token "
                  f"{lg[d[j]]:.4f}, sirius's {lg[s[j]]:.4f}, top-1 - top-2 {top[0] - top[1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
