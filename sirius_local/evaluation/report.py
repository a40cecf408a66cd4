"""summary.json, summary.md and the plots, from results.jsonl alone (so an interrupted run's file summarises the
same way as an uninterrupted one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..stats import aal, effective_density, prefix_agreement


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def read_results(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by an interruption: that example runs again
                    pass
    return rows


def summarise(rows: list[dict], task: str, model: str, modes: list[str]) -> dict:
    dense = {r["id"]: r["token_ids"] for r in rows if r["mode"] == "dense"}
    out = {"task": task, "model": model, "modes": []}
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        n = len(rs)
        k = sum(bool(r["correct"]) for r in rs)
        lo, hi = wilson(k, n)
        tokens = sum(r["tokens"] for r in rs)
        seconds = sum(r["seconds"] for r in rs)
        periods = sum(r.get("periods") or 0 for r in rs)
        advanced = sum(r.get("advanced") or 0 for r in rs)
        reads = sum(r.get("reads") or 0.0 for r in rs)
        steps = sum(r.get("steps") or 0 for r in rs)
        agree = [prefix_agreement(r["token_ids"], dense[r["id"]]) for r in rs if r["id"] in dense]
        out["modes"].append({
            "mode": mode, "n": n,
            "accuracy": k / n if n else None,
            "ci95": [lo, hi],
            "accuracy_fallback": sum(bool(r["correct_fallback"]) for r in rs) / n if n else None,
            "aal": aal(advanced, periods),
            "effective_density": effective_density(reads, steps) if mode != "dense" else 1.0,
            "tokens_per_second": tokens / seconds if seconds else None,
            "agreement_with_dense": sum(agree) / len(agree) if agree else None,
        })
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(summary: dict) -> str:
    lines = [f"# {summary['task']}: {Path(summary['model']).name}", "",
             "| mode | n | accuracy | 95% CI | fallback | AAL | effective density | tokens/s | agreement with dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in summary["modes"]:
        lines.append(f"| {m['mode']} | {m['n']} | {_fmt(m['accuracy'], '.3f')} | "
                     f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {_fmt(m['accuracy_fallback'], '.3f')} | "
                     f"{_fmt(m['aal'], '.2f')} | {_fmt(m['effective_density'], '.2f')} | "
                     f"{_fmt(m['tokens_per_second'], '.2f')} | {_fmt(m['agreement_with_dense'], '.2f')} |")
    lines += ["", "accuracy: strict answer pattern; fallback: last number / yes-no / option anywhere in the "
              "completion; agreement: share of dense greedy's tokens reproduced before the first difference."]
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [m for m in summary["modes"] if m["n"]]
    files = []
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in ms:
        x = m["effective_density"] if m["effective_density"] is not None else 1.0
        y = m["accuracy"]
        ax.errorbar([x], [y], yerr=[[y - m["ci95"][0]], [m["ci95"][1] - y]], fmt="o", capsize=4, label=m["mode"])
    ax.set_xlabel("effective density (parameters read per token)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{summary['task']}: accuracy vs effective density")
    ax.legend()
    fig.tight_layout()
    files.append(out / "accuracy_vs_density.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar([m["mode"] for m in ms], [m["tokens_per_second"] or 0 for m in ms])
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{summary['task']}: decode speed")
    fig.tight_layout()
    files.append(out / "tokens_per_second.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files


def write(out: Path, rows: list[dict], task: str, model: str, modes: list[str]) -> dict:
    summary = summarise(rows, task, model, modes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plots(summary, out)
    return summary
