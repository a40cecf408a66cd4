"""Runs untrusted generated Python (HumanEval completions) in a separate process: its own session (the whole
group is killed on timeout), CPU-time and address-space limits, no stdin, a scratch working directory, and
Python's isolated mode. It never runs in the evaluator's process. Not a security boundary against a determined
attacker (no network or filesystem isolation); it stops the infinite loops and memory bombs models write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

TIMEOUT_S = 10.0
MEMORY_BYTES = 1 << 30


def _limits(cpu_s: int, mem: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        except (ValueError, OSError):  # macOS does not enforce RLIMIT_AS; the wall-clock timeout still holds
            pass

    return apply


def run_python(program: str, timeout_s: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> dict:
    """{"passed": exit status 0, "status": "passed" | "failed" | "timeout" | "memory", "stderr": tail}"""
    with tempfile.TemporaryDirectory(prefix="sirius-eval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as f:
            f.write(program)
        p = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=tmp, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=_limits(int(timeout_s) + 1, memory_bytes))
        try:
            _out, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return {"passed": False, "status": "timeout", "stderr": ""}
    tail = err.decode("utf-8", "replace")[-500:]
    if p.returncode == 0:
        return {"passed": True, "status": "passed", "stderr": tail}
    if p.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return {"passed": False, "status": "timeout", "stderr": tail}
    if "MemoryError" in tail:
        return {"passed": False, "status": "memory", "stderr": tail}
    return {"passed": False, "status": "failed", "stderr": tail}
