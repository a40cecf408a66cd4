"""The evaluation loop: every problem through every mode (interleaved, so a partial run compares modes on the
same problems), one JSONL line appended and flushed as soon as a result is scored; --resume skips what the file
already holds."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from ..errors import InvalidParameterError
from ..llm import MODES
from . import report, tasks


def _record(ex, mode: str, res: dict, scored: dict, seconds: float) -> dict:
    st = res["stats"]
    n = st["completion_tokens"]
    spf = st.get("sparse_param_fraction", 1.0) if st.get("sparse") else 1.0
    row = {"id": ex.id, "mode": mode, "answer": scored["answer"], "correct": bool(scored["correct"]),
           "correct_fallback": bool(scored["correct_fallback"]), "reference": ex.reference,
           "tokens": n, "seconds": seconds, "prompt_tokens_cached": st["prompt_tokens_cached"],
           "finish_reason": st["finish_reason"], "token_ids": st["token_ids"],
           "completion": res["choices"][0]["text"]}
    if mode == "sparse":
        row.update(reads=n * spf, steps=n)
    elif mode == "sirius":
        row.update(aal=st["aal"], periods=st["periods"], advanced=st["advanced"], reads=st["parameter_reads"],
                   steps=st["loop_tokens"])
    return row


def _model_file(label) -> str:
    """The GGUF file a config's model names, a path (now) or "name (file.gguf)" (earlier versions): a run resumes
    from another cache directory or machine, and from files written before the label changed."""
    m = re.fullmatch(r".*\((.+\.gguf)\)", str(label or ""))
    return Path(m.group(1) if m else str(label or "")).name


def run(model, task: str, *, modes=MODES, sparsity="griffin", density=0.5, period="auto", threshold=0.1, width=1,
        draft_vocab=None, limit=None, seed=0, ids=None, out: str | Path, resume=False, max_tokens=None, n_ctx=2048, threads=None,
        progress=True, log=lambda m: print(m, file=sys.stderr)) -> dict:
    from ..llm import LLM
    from ..registry import resolve

    t = tasks.get(task)
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise InvalidParameterError(f"eval: unknown mode {m!r} (available: {', '.join(MODES)})")
    if limit is not None and limit < 1:
        raise InvalidParameterError(f"eval: --limit must be >= 1, got {limit}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    cfg = dict(task=task, modes=modes, sparsity=sparsity, density=density, period=period, threshold=threshold,
                  width=width, draft_vocab=draft_vocab, limit=limit, seed=seed, ids=sorted(set(ids)) if ids else None,
                  max_tokens=max_tokens or t.max_tokens, model=str(resolve(model)))
    cfg_path = out / "config.json"
    if results.is_file() and results.stat().st_size > 0:
        if not resume:
            raise InvalidParameterError(f"eval: {out} already has results: pass --resume to continue that run, "
                                        f"or choose another --out")
        old = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        diff = [k for k in cfg if k not in ("limit", "modes", "ids") and
                (_model_file(old.get(k)) != _model_file(cfg[k]) if k == "model" else old.get(k) != cfg[k])]
        if diff:
            raise InvalidParameterError(f"eval --resume: {out} was made with other settings "
                                        f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use the same ones or "
                                        f"another --out")
    examples = t.load(limit, seed)
    if ids:  # a chosen subset of the pool (re-running failures, a sweep on the problems where modes differ)
        pool, wanted = {e.id for e in examples}, set(ids)
        unknown = sorted(wanted - pool)
        if unknown:
            raise InvalidParameterError(f"eval --ids: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                                        f"not among the {len(pool)} {task} problems loaded (ids look like "
                                        f"{examples[0].id!r}; for gsm raise --limit to reach higher indices)")
        examples = [e for e in examples if e.id in wanted]
    with LLM(cfg["model"], n_ctx=n_ctx, n_threads=threads) as llm:
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        done = {(r["id"], r["mode"]) for r in report.read_results(results)}
        # One prefill per problem: the sparse modes go first (their prefill also collects Griffin's statistic,
        # which the next sparse mode reuses), and every later mode starts from the kept prefill, evaluating nothing.
        order = [m for m in ("sparse", "sirius", "dense") if m in modes]
        todo = [(ex, m) for ex in examples for m in order if (ex.id, m) not in done]
        if done:
            log(f"resuming: {len(done)} results on file, {len(todo)} to go")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"{task} {Path(llm.model_path).name}", unit="run", file=sys.stderr)
        if results.is_file() and results.stat().st_size and not results.read_bytes().endswith(b"\n"):
            with results.open("a") as f:  # the last line was cut by an interruption: end it, do not extend it
                f.write("\n")
        with results.open("a") as f:
            current = None
            for ex, mode in todo:
                kw = {} if mode == "dense" else {"sparsity": sparsity, "density": density, "draft_vocab": draft_vocab}
                if mode == "sirius":
                    kw.update(period=period, threshold=threshold, width=width)
                if ex.id != current:  # a problem never sees another's cache: results do not depend on order
                    llm.reset()
                    current = ex.id
                t0 = time.perf_counter()
                res = llm.create_completion(ex.prompt, max_tokens=cfg["max_tokens"], stop=t.stop, temperature=0.0,
                                            mode=mode, **kw)
                seconds = res["stats"]["generate_seconds"]
                wall = time.perf_counter() - t0
                row = _record(ex, mode, res, t.score(ex, res["choices"][0]["text"]), seconds)
                row["wall_seconds"] = wall
                f.write(json.dumps(row) + "\n")
                f.flush()
                if bar:
                    bar.update(1)
        if bar:
            bar.close()
        ids = {e.id for e in examples}
        rows = [r for r in report.read_results(results) if r["id"] in ids]
        return report.write(out, rows, task, llm.model_path, modes)
