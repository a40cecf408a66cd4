"""The `sirius-local` command, driven as a user would (chat through a pseudo-terminal)."""

import os
import shutil
import subprocess
import sys

import pexpect
import pytest

EXE = shutil.which("sirius-local") or ""
pytestmark = pytest.mark.skipif(not EXE, reason="sirius-local is not on PATH (install the package)")


def spawn_chat(model_path, *extra):
    return pexpect.spawn(EXE, ["chat", model_path, "--n-ctx", "1024", *extra], encoding="utf-8", timeout=120,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_chat_two_turns_and_exit(model_path):
    child = spawn_chat(model_path, "--max-tokens", "48")
    child.expect("> ")
    child.sendline("What is the capital of France?")
    child.expect(r"\[(\d+) tokens, ([\d.]+) tok/s\]")
    first = child.before
    assert "Paris" in first
    child.expect("> ")
    child.sendline("And of Italy?")
    child.expect(r"\[(\d+) tokens, ([\d.]+) tok/s\]")
    assert "Rome" in child.before  # the second turn sees the first
    child.expect("> ")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_ctrl_c_stops_reply_not_program(model_path):
    child = spawn_chat(model_path, "--max-tokens", "800")
    child.expect("> ")
    child.sendline("Write a very long story about a dragon and a knight.")
    child.expect(r"knight\.\r\n")  # the terminal's echo of the line
    child.expect(r"\w+ \w+ \w+ \w+")  # the reply has started
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect("> ")
    child.sendline("Say hi.")
    child.expect(r"tok/s\]")
    child.expect("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_generate(model_path):
    r = subprocess.run([EXE, "generate", model_path, "-p", "The capital of France is", "--max-tokens", "8", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert '"completion_tokens": 8' in r.stderr


def test_generate_bad_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    r = subprocess.run([EXE, "generate", str(bad), "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "not a GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_models_list_and_path(model_path):
    r = subprocess.run([EXE, "models", "list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"):
        assert name in r.stdout
    assert "(default)" in r.stdout
    r = subprocess.run([EXE, "models", "path", "smollm2-135m-instruct"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == model_path
    r = subprocess.run([EXE, "models", "path", "no-such-model"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown model name" in r.stderr


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "sirius_local.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "llama.cpp" in r.stdout


def test_generate_sparse(model_path):
    r = subprocess.run([EXE, "generate", model_path, "-p", "The capital of France is", "--max-tokens", "8",
                        "--mode", "sparse", "--density", "0.5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "griffin density 0.50" in r.stderr


def test_generate_sirius_strict_equals_dense(model_path):
    args = [EXE, "generate", model_path, "-p", "The three primary colors are", "--max-tokens", "24"]
    dense = subprocess.run(args, capture_output=True, text=True, timeout=120)
    sirius = subprocess.run(args + ["--mode", "sirius", "--acceptance", "strict", "--period", "4", "--density", "0.8"],
                            capture_output=True, text=True, timeout=120)
    assert dense.returncode == 0 and sirius.returncode == 0, sirius.stderr
    assert sirius.stdout == dense.stdout
    assert "AAL" in sirius.stderr and "/4" in sirius.stderr and "x dense" in sirius.stderr
    tree = subprocess.run(args + ["--mode", "sirius", "--acceptance", "strict", "--period", "4", "--density", "0.8",
                                  "--width", "3"], capture_output=True, text=True, timeout=120)
    assert tree.returncode == 0 and tree.stdout == dense.stdout, tree.stderr
    bad = subprocess.run(args + ["--mode", "sirius", "--period", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "period must be" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(args + ["--mode", "sirius", "--width", "9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "width must be" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_sirius_rows(model_path, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([EXE, "bench", model_path, "--modes", "dense,sirius", "--density", "0.8", "--period", "2,4",
                        "--tokens", "12", "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(out.read_text())
    runs = res["runs"]
    assert [(x["mode"], x.get("period")) for x in runs] == [("dense", None), ("sirius", 2), ("sirius", 4)]
    for x in runs[1:]:
        assert 1 <= x["aal"] <= x["period"] and 0 < x["effective_density"]
        assert 0 <= x["agreement_with_dense"] <= 1 and x["predicted_tokens_per_second"] > 0
    ks = [v["k"] for v in res["verify_curve"]]
    assert ks[0] == 1 and res["verify_curve"][0]["r"] == 1.0 and all(v["seconds"] > 0 for v in res["verify_curve"])
    for v in res["verify_curve"]:  # the bounds: linear in K for arithmetic, ~1 for bytes (weights read once)
        assert v["arith_bound_r"] == pytest.approx(v["k"] * res["verify_curve"][0]["arith_bound_r"])
        assert 1.0 <= v["bytes_bound_r"] < 1.0 + 0.1 * v["k"]
    assert "arithmetic bound" in r.stdout


def test_bench_marks_auto_rows_that_decoded_densely():
    """An auto row that drafted nothing, or whose cost model gave up drafting, ran dense decoding, so its ratio to
    the dense row is the machine's drift: the table marks it, and the best Sirius configuration is one that
    drafted (or says none did)."""
    from sirius_local import bench

    def row(mode, tps, period=None, auto_dense=False):
        r = {"mode": mode, "sparsity": None if mode == "dense" else "topk", "density": 0.5,
             "density_actual": 1.0 if mode == "dense" else 0.5, "tokens_per_second": tps, "ratio_vs_dense": tps / 20.0,
             "ideal_ratio": None, "group_size": None if mode == "dense" else 1, "draft_vocab": None,
             "sparse_param_fraction": 1.0 if mode == "dense" else 0.78, "sparse_bytes": 0, "sparse_build_seconds": 0.0,
             "agreement_with_dense": 1.0}
        if mode == "sirius":
            r.update(period=period, width=1, aal=3.8 if not auto_dense else 0.0, accept_rate=0.97,
                     effective_density=0.8 if not auto_dense else 1.0, predicted_tokens_per_second=None,
                     auto_dense=auto_dense)
        return r

    runs = [row("dense", 20.0), row("sirius", 19.0, period=4), row("sirius", 24.0, period="auto", auto_dense=True)]
    b = bench.best_sirius(runs)
    assert b["period"] == 4 and b["decoded_densely"] is False
    res = {"model": "m.gguf", "architecture": "qwen2", "machine": {"threads": 2}, "decode_tokens": 64, "repeats": 3,
           "runs": runs, "best_sirius": b}
    table = bench.format_table(res)
    assert " auto* " in table and "gave up drafting" in table and "K=4" in table and "none beat dense" not in table
    every = [runs[0], row("sirius", 24.0, period="auto", auto_dense=True), row("sirius", 23.0, period="auto")]
    every[2]["aal"] = 0.0  # auto still in its first dense stretch: it drafted nothing
    b = bench.best_sirius(every)
    assert b["period"] == "auto" and b["decoded_densely"] is True
    assert "none beat dense decoding" in bench.format_table(dict(res, runs=every, best_sirius=b))


def test_bench_json(model_path, tmp_path):
    """The bench's plumbing (not its timings): every configuration measured, ratios consistent."""
    out = tmp_path / "bench.json"
    # --draft-vocab 0: the full head, so the ideal ratios below are the FFN's alone
    r = subprocess.run([EXE, "bench", model_path, "--density", "0.5,1.0", "--tokens", "8", "--repeats", "2",
                        "--draft-vocab", "0", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(out.read_text())
    assert {"machine", "model", "runs"} <= set(res)
    runs = res["runs"]
    assert [(x["mode"], x["density"]) for x in runs] == [("dense", 1.0), ("sparse", 0.5), ("sparse", 1.0)]
    for x in runs:
        assert len(x["samples"]) == 2 and x["tokens_per_second"] > 0
        assert min(x["samples"]) <= x["tokens_per_second"] <= max(x["samples"])  # the median
    assert runs[0]["ideal_ratio"] == 1.0 and runs[2]["ideal_ratio"] == 1.0
    assert 1.2 < runs[1]["ideal_ratio"] < 2.0  # half the FFN bytes of a 135M model with a tied 28M-row head
    assert "sparse" in r.stdout and "vs dense" in r.stdout
    bad = subprocess.run([EXE, "bench", model_path, "--density", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "densities must be in (0, 1]" in bad.stderr


def test_calibrate_then_threshold(model_path, tmp_path):
    link = tmp_path / "model.gguf"
    os.symlink(model_path, link)
    text = tmp_path / "cal.txt"  # a short custom text keeps this fast; the built-in text is tested in test_threshold
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12 + "\n\n" + "One, two, three, four. " * 15)
    r = subprocess.run([EXE, "calibrate", str(link), "--density", "0.5", "--text", str(text), "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "thresholds written to " + str(link) + ".sirius-thresholds.json" in r.stdout
    assert os.path.isfile(str(link) + ".sirius-thresholds.json")
    args = [EXE, "generate", str(link), "-p", "Once upon a time", "--max-tokens", "6", "--mode", "sparse",
            "--sparsity", "threshold", "--json"]
    r = subprocess.run(args + ["--density", "0.5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(args + ["--density", "0.4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "sirius-local calibrate" in r.stderr and "0.4" in r.stderr, r.stderr
