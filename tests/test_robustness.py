"""Bad input and misuse never kill the host process, hang it, race or answer silently wrong (issue 20's sweep):
close during generation, tiny contexts, corrupt hyperparameters and weights, Ctrl-C, calls from other threads,
resource caps, integers cffi cannot hold, prompt types. Whatever could crash runs in a subprocess, so that a
regression fails one test instead of killing the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from gguf import GGUFReader

from sirius_local import LLM
from sirius_local.errors import DecodeError, InvalidParameterError
from sirius_local.llm import max_threads
from sirius_local import _testing

EXE = shutil.which("sirius-local") or ""


def run_py(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter; the test asserts on its exit status (negative: killed by a signal)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


def test_close_during_a_stream_and_during_a_threaded_generation(model_path):
    r = run_py(f"""
        import threading, time
        from sirius_local import LLM
        M = {model_path!r}
        # leaving a with-block while holding a live stream
        with LLM(M) as llm:
            it = llm.create_completion("Once upon a time", max_tokens=64, stream=True)
            next(it)
        print("with-block", flush=True)
        for mode in ("dense", "sirius"):
            llm = LLM(M)
            out = {{}}
            def gen():
                out["r"] = llm.create_completion("Once upon a time", max_tokens=400, mode=mode, ignore_eos=True)
            t = threading.Thread(target=gen)
            t.start()
            time.sleep(0.3)
            llm.close()  # another thread: cancels at the next token, waits, then frees
            t.join()
            print(mode, out["r"]["choices"][0]["finish_reason"], out["r"]["usage"]["completion_tokens"] < 400, flush=True)
            try:
                llm.create_completion("hi", max_tokens=2)
            except Exception as e:
                print("after close:", type(e).__name__, e, flush=True)
        # a stream closed from its consumer's loop
        llm = LLM(M)
        for chunk in llm.create_completion("Once upon a time", max_tokens=64, stream=True):
            llm.close()
        print("closed inside the loop", flush=True)
    """)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert lines[0] == "with-block"
    assert "dense cancelled True" in lines and "sirius cancelled True" in lines
    assert sum(line.startswith("after close: SiriusError this LLM is closed") for line in lines) == 2
    assert lines[-1] == "closed inside the loop"


def test_small_contexts_and_batches_work_or_are_refused(model_path):
    with pytest.raises(InvalidParameterError, match=r"n_ctx must be an integer in \[32"):
        LLM(model_path, n_ctx=16)
    r = run_py(f"""
        from sirius_local import LLM
        for kw in ({{"n_ctx": 32}}, {{"n_batch": 1}}, {{"n_batch": 16}}):
            with LLM({model_path!r}, **kw) as llm:
                for mode, width in (("dense", 1), ("sirius", 1), ("sirius", 4)):
                    out = llm.create_completion("Once upon", max_tokens=8, mode=mode, width=width, acceptance="strict")
                    print(kw, mode, width, out["usage"]["completion_tokens"], flush=True)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert len(r.stdout.splitlines()) == 9


def _mutated_copy(src: str, dst, key: str, value, dtype) -> str:
    shutil.copy(src, dst)
    rd = GGUFReader(str(dst), "r+")
    f = rd.fields[key]
    f.parts[f.data[0]][...] = np.array([value], dtype=dtype)
    del rd
    return str(dst)


@pytest.mark.parametrize("key,value,dtype,says", [
    ("llama.block_count", 0, np.uint32, "llama.block_count = 0"),
    ("llama.block_count", 10**6, np.uint32, "llama.block_count = 1000000"),
    ("llama.attention.layer_norm_rms_epsilon", np.nan, np.float32, "layer_norm_rms_epsilon = nan"),
    ("llama.attention.head_count", 0, np.uint32, "head_count = 0"),
    ("llama.attention.head_count_kv", 4, np.uint32, "must divide attention.head_count"),
    ("llama.rope.dimension_count", 1000, np.uint32, "rope.dimension_count = 1000"),
])
def test_corrupt_hyperparameters_are_a_model_load_error(model_path, tmp_path, key, value, dtype, says):
    path = _mutated_copy(model_path, tmp_path / "bad.gguf", key, value, dtype)
    r = run_py(f"""
        from sirius_local import LLM
        from sirius_local.errors import ModelLoadError
        try:
            LLM({path!r}, n_ctx=64).create_completion([1], max_tokens=1)
            print("loaded")
        except ModelLoadError as e:
            print("ModelLoadError:", e)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("ModelLoadError:") and says in r.stdout and "re-download" in r.stdout
    assert "gdb" not in r.stderr and "Backtrace" not in r.stderr


def test_nan_weights_raise_a_decode_error_naming_them(model_path, tmp_path):
    path = tmp_path / "nan.gguf"
    shutil.copy(model_path, path)
    rd = GGUFReader(str(path), "r+")
    t = next(t for t in rd.tensors if t.name == "output_norm.weight")
    t.data[...] = np.nan
    del rd
    with LLM(str(path), n_ctx=64) as llm:
        with pytest.raises(DecodeError, match="NaN or infinite"):
            llm.create_completion("Once upon a time", max_tokens=4)
        with pytest.raises(DecodeError, match="NaN or infinite"):  # the session stays usable, and says so again
            llm.create_completion("Hello", max_tokens=4)


def test_ctrl_c_during_a_non_streamed_completion_raises_at_the_next_token(model_path):
    r = run_py(f"""
        import os, signal, threading, time
        from sirius_local import LLM
        llm = LLM({model_path!r}, n_ctx=4096)
        def interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as Ctrl-C sends
        for mode in ("dense", "sirius"):
            threading.Timer(1.0, interrupt).start()
            t0 = time.perf_counter()
            try:
                llm.create_completion("Once upon a time", max_tokens=4000, ignore_eos=True, mode=mode)
                print(mode, "finished", time.perf_counter() - t0)
            except KeyboardInterrupt:
                print(mode, "interrupted holding", llm.n_tokens, flush=True)  # prompt + tokens decoded before it
        print("usable:", llm.create_completion("The capital of France is", max_tokens=3)["usage"]["completion_tokens"])
    """, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "Exception ignored" not in r.stderr
    lines = r.stdout.splitlines()
    for mode, line in zip(("dense", "sirius"), lines):
        assert line.startswith(f"{mode} interrupted holding"), r.stdout
        # cancelled where the signal landed (~1 s of decoding), not at the 4000-token limit
        assert int(line.split()[-1]) < 1500, line
    assert lines[-1] == "usable: 3"


def test_session_calls_from_another_thread_wait_for_the_generation(model_path):
    with LLM(model_path, n_ctx=512) as llm:
        ref = llm.create_completion("Once upon a time", max_tokens=48)["choices"][0]["text"]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=llm.create_completion("Once upon a time", max_tokens=48)))
        t.start()
        time.sleep(0.1)
        llm.reset()  # waits for the generation: neither it nor the reset is torn
        assert llm.n_tokens == 0
        t.join()
        assert out["r"]["choices"][0]["text"] == ref
        t = threading.Thread(target=lambda: out.update(r=llm.create_completion("Once upon a time", max_tokens=48,
                                                                               mode="sparse")))
        t.start()
        time.sleep(0.1)
        llm.griffin_collect(False)
        llm.set_ffn_mode("dense")
        t.join()
        assert out["r"]["usage"]["completion_tokens"] == 48


def test_an_abandoned_stream_is_cancelled_by_the_next_call(model_path):
    with LLM(model_path) as llm:
        it = llm.create_completion("Once upon a time", max_tokens=2000, ignore_eos=True, stream=True)
        next(it)
        out = llm.create_completion("The capital of France is", max_tokens=3)
        assert out["usage"]["completion_tokens"] == 3
        last = list(it)[-1]
        assert last["choices"][0]["finish_reason"] == "cancelled"
        assert last["usage"]["completion_tokens"] < 1000  # stopped by the call, not run on to its 2000 tokens


def test_a_session_call_cancels_a_paused_stream(model_path):
    # A stream is lazy (its generation waits for the consumer between pieces): a session call from the same
    # thread would wait forever on a consumer that is itself, so it cancels the stream instead.
    with LLM(model_path) as llm:
        it = llm.create_completion("Once upon a time", max_tokens=2000, ignore_eos=True, stream=True)
        next(it)
        done = threading.Event()
        box = {}

        def call():
            box["tokens"] = llm.tokens
            done.set()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        assert done.wait(60), "a session call waited on a paused stream"
        last = list(it)[-1]
        assert last["choices"][0]["finish_reason"] == "cancelled" and last["usage"]["completion_tokens"] < 1000
        assert len(box["tokens"]) >= len(llm.tokenize("Once upon a time"))
        assert llm.create_completion("Hi", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_resource_caps(model_path):
    with pytest.raises(InvalidParameterError, match="n_threads must be an integer in"):
        LLM(model_path, n_threads=10**4)
    with pytest.raises(InvalidParameterError, match="n_threads_batch"):
        LLM(model_path, n_threads_batch=max_threads() + 1)
    with pytest.warns(RuntimeWarning, match="above the 8192 tokens"):
        with pytest.raises(InvalidParameterError, match="GiB of KV cache"):  # the estimate's refusal, before llama.cpp allocates
            LLM(model_path, n_ctx=10**9)
    with pytest.warns(RuntimeWarning, match="above the 8192 tokens"):
        with LLM(model_path, n_ctx=8192 * 2) as llm:
            assert llm.n_ctx() == 16384


@pytest.mark.parametrize("kw", [{"n_ctx": 2**32}, {"n_threads": 2**31}, {"n_batch": 2**40}, {"n_gpu_layers": -2},
                                {"n_ctx": 64.0}, {"seed": -1}])
def test_oversize_and_wrong_type_constructor_integers(model_path, kw):
    with pytest.raises(InvalidParameterError, match=next(iter(kw))):
        LLM(model_path, **kw)


def test_oversize_generation_integers(llm):
    for kw in ({"max_tokens": 10**10}, {"top_k": 2**31}, {"seed": 2**32}, {"draft_vocab": 2**31, "mode": "sparse"},
               {"max_tokens": 2.5}):
        with pytest.raises(InvalidParameterError, match=next(iter(kw))):
            llm.create_completion("hi", **kw)
    with pytest.raises(InvalidParameterError, match="n_keep"):
        llm.truncate(2**40)
    with pytest.raises(InvalidParameterError, match="layer"):
        _testing.griffin_scores(llm, 2**40)


def test_prompt_types(llm):
    want = llm.create_completion("The capital of France is", max_tokens=4)["choices"][0]["text"]
    assert llm.create_completion(b"The capital of France is", max_tokens=4)["choices"][0]["text"] == want
    ids = llm.tokenize(b"The capital of France is")
    assert llm.create_completion(np.array(ids), max_tokens=4)["choices"][0]["text"] == want
    for bad, says in ((42, "got int"), (None, "got NoneType"), (["a"], r"prompt\[0\]"), ([1.0, 2.0], r"prompt\[0\]"),
                      ([True], r"prompt\[0\]"), ([llm.n_vocab()], "outside the vocabulary"), ([-3], "outside the vocabulary"), (b"\xff\xfe", "UTF-8"),
                      ([], "empty"), (np.array([1.5]), "integer array")):
        with pytest.raises(InvalidParameterError, match=says):
            llm.create_completion(bad, max_tokens=2)
    with pytest.raises(InvalidParameterError, match=r"tokens\[0\]"):
        llm.eval([0.5])
    with pytest.raises(InvalidParameterError, match=r"tokens\[1\]"):
        llm.detokenize([1, "x"])
    assert llm.create_completion("Hello", max_tokens=2)["usage"]["completion_tokens"] == 2  # still usable


def test_no_backtrace_from_a_library():
    import sirius_local  # noqa: F401

    assert os.environ.get("GGML_NO_BACKTRACE") == "1"


@pytest.mark.skipif(not EXE, reason="sirius-local is not on PATH (install the package)")
@pytest.mark.parametrize("args,code,says", [
    (["--max-tokens", "-5"], 2, "--max-tokens: must be an integer from 1 to 2^31-1"),
    (["--max-tokens", "99999999999"], 2, "--max-tokens: must be an integer"),
    (["--n-ctx", "16"], 1, "error: n_ctx must be an integer in [32"),
    (["--threads", "100000"], 1, "error: n_threads must be an integer in"),
])
def test_cli_refuses_bad_integers_in_one_line(model_path, args, code, says):
    r = subprocess.run([EXE, "generate", model_path, "-p", "hi", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == code and says in r.stderr, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error") or ": error:" in line]) == 1
