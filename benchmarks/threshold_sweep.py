"""Relaxed Sirius's acceptance threshold, swept on the problems where an eval's dense and Sirius runs disagree.

Why: a relaxed run keeps any draft token whose dense probability is >= threshold, so it can leave dense's greedy
path at a token dense ranks second; on a long chain of thought that compounds. Re-running Sirius at higher
thresholds on the discordant problems (right in one mode only) shows how much of the gap the threshold explains
and what it costs in AAL. Concordant problems can flip too: --controls N adds N of them (seeded sample) to see it.

    python benchmarks/threshold_sweep.py benchmarks/results/eval-gsm-qwen1.5b --thresholds 0.3,0.5 \\
        --controls 10 --threads 2 --out benchmarks/results/sweep-gsm-threshold-qwen1.5b

Each threshold is an ordinary `eval --modes sirius --ids ...` run in OUT/threshold-T (resumable: run the same
command again); OUT/summary.md and summary.json compare them with the base run's dense and Sirius rows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from sirius_local.evaluation import report, runner


def groups(dense: dict[str, dict], sirius: dict[str, dict], controls: int, seed: int) -> dict[str, list[str]]:
    both = [i for i in sirius if i in dense]
    g = {"only_dense": [i for i in both if dense[i]["correct"] and not sirius[i]["correct"]],
         "only_sirius": [i for i in both if sirius[i]["correct"] and not dense[i]["correct"]]}
    concordant = sorted(i for i in both if dense[i]["correct"] == sirius[i]["correct"])
    g["controls"] = sorted(random.Random(seed).sample(concordant, min(controls, len(concordant))))
    return g


def table(name: str, rows: dict[str, dict], dense: dict[str, dict], g: dict[str, list[str]],
          rest: tuple[int, int]) -> dict:
    """One threshold's row; rest = (right, n) of the base run's concordant problems left out of the sweep, which
    the estimate over the whole set assumes unchanged (the controls test that assumption)."""
    ids = [i for ids in g.values() for i in ids if i in rows]
    rs = [rows[i] for i in ids]
    # AAL, effective density, tokens/s and agreement as the eval's own summary computes them
    m = report.summarise(rs + [dense[i] for i in ids], "", "", ["sirius"])["modes"][0]
    return {
        "threshold": name, "n": len(rs),
        "right": sum(r["correct"] for r in rs),
        "estimated_accuracy": (rest[0] + sum(r["correct"] for r in rs)) / (rest[1] + len(rs)),
        **{f"right_{k}": sum(rows[i]["correct"] for i in v if i in rows) for k, v in g.items()},
        **{f"n_{k}": sum(i in rows for i in v) for k, v in g.items()},
        "controls_same_as_dense": sum(rows[i]["correct"] == dense[i]["correct"] for i in g["controls"] if i in rows),
        **{k: m[k] for k in ("aal", "effective_density", "tokens_per_second", "agreement_with_dense")},
        "identical_to_dense": sum(r["token_ids"] == dense[r["id"]]["token_ids"] for r in rs),
    }


def markdown(base: Path, lines: list[dict], g: dict[str, list[str]], dense_acc: float, n_all: int) -> str:
    out = [f"# Relaxed Sirius threshold sweep on {base.name}'s discordant problems", "",
           f"of {n_all} problems: only dense right in the base run: {len(g['only_dense'])}; only Sirius right: "
           f"{len(g['only_sirius'])}; concordant controls: {len(g['controls'])}; dense accuracy {dense_acc:.3f}", "",
           "| threshold | n | right | of only-dense | of only-Sirius | controls as dense | estimated accuracy "
           "| AAL | effective density | tokens/s | agreement with dense | identical to dense |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in lines:
        out.append(f"| {t['threshold']} | {t['n']} | {t['right']} | {t['right_only_dense']}/{t['n_only_dense']} | "
                   f"{t['right_only_sirius']}/{t['n_only_sirius']} | {t['controls_same_as_dense']}/{t['n_controls']} | "
                   f"{t['estimated_accuracy']:.3f} | "
                   f"{t['aal']:.2f} | {t['effective_density']:.2f} | {t['tokens_per_second']:.2f} | "
                   f"{t['agreement_with_dense']:.2f} | {t['identical_to_dense']}/{t['n']} |")
    out += ["", "dense is right on all only-dense problems and none of the only-Sirius ones by definition; 'controls as dense': concordant problems whose result "
            "matches dense's; estimated accuracy: over all problems, the concordant ones outside the sweep "
            "counted as in the base run."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="an eval --out directory with dense and sirius rows")
    ap.add_argument("--thresholds", default="0.3,0.5")
    ap.add_argument("--controls", type=int, default=10, help="concordant problems to add (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    base, out = Path(a.base), Path(a.out)
    cfg = json.loads((base / "config.json").read_text())
    base_rows = report.read_results(base / "results.jsonl")
    dense = {r["id"]: r for r in base_rows if r["mode"] == "dense"}
    sirius = {r["id"]: r for r in base_rows if r["mode"] == "sirius"}
    g = groups(dense, sirius, a.controls, a.seed)
    ids = sorted(i for v in g.values() for i in v)
    chosen = set(ids)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ids.txt").write_text("\n".join(ids) + "\n")
    both = [i for i in sirius if i in dense]
    rest = [i for i in both if i not in chosen]
    rest = (sum(sirius[i]["correct"] for i in rest), len(rest))
    dense_acc = sum(dense[i]["correct"] for i in both) / len(both)
    lines = [table(str(cfg["threshold"]) + " (base run)", {i: r for i, r in sirius.items() if i in chosen},
                   dense, g, rest)]
    for t in [float(x) for x in a.thresholds.split(",")]:
        d = out / f"threshold-{t}"
        print(f"threshold {t}: {len(ids)} problems -> {d}", file=sys.stderr)
        runner.run(cfg["model"], cfg["task"], modes=["sirius"], sparsity=cfg["sparsity"], density=cfg["density"],
                   period=cfg["period"], threshold=t, width=cfg["width"], limit=cfg["limit"], seed=cfg["seed"],
                   ids=ids, out=d, resume=(d / "results.jsonl").is_file(), max_tokens=cfg["max_tokens"],
                   n_ctx=4096, threads=a.threads, progress=False)  # the CLI default
        lines.append(table(str(t), {r["id"]: r for r in report.read_results(d / "results.jsonl")}, dense, g, rest))
        (out / "summary.json").write_text(json.dumps({"base": str(base), "groups": g, "thresholds": lines}, indent=2))
        (out / "summary.md").write_text(markdown(base, lines, g, dense_acc, len(both)))
    print(markdown(base, lines, g, dense_acc, len(both)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
