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
    child.expect(r"\w+ \w+ \w+")  # the reply has started
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
