"""Seeded mutations of the test model's GGUF header (magic, counts, metadata keys and values, the tensor table),
each loaded and decoded for one token in a subprocess: no mutant may kill the process (a signal: an abort or a
segfault inside llama.cpp) or hang it, and every failure must be a ModelLoadError (or another SiriusError
naming the problem). The default run tries 200 mutants; `-m slow` tries 5,000.

Only bytes before the tensor data are mutated, so one copy of the file serves every mutant: its header is
restored and re-mutated in place between mutants, and one worker process loads them in turn (a new worker
starts after a crash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

WORKER = textwrap.dedent("""
    import json, sys
    from sirius_local import LLM
    from sirius_local.errors import SiriusError
    for line in sys.stdin:
        path = line.strip()
        try:
            with LLM(path, n_ctx=64, n_threads=1) as llm:
                bos = llm.token_bos()
                out = llm.create_completion([bos if 0 <= bos < llm.n_vocab() else 0], max_tokens=1)
            res = {"ok": True, "finish": out["choices"][0]["finish_reason"]}
        except SiriusError as e:
            res = {"ok": False, "error": type(e).__name__, "message": str(e)[:300]}
        except Exception as e:  # not a SiriusError: the test fails on it
            res = {"ok": False, "error": "unexpected " + type(e).__name__, "message": str(e)[:300]}
        print(json.dumps(res), flush=True)
""")

# Integer extremes a corrupt file may hold, per GGUF scalar type (as unsigned bit patterns of its width).
_INT_TYPES = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
              GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8,
              GGUFValueType.BOOL: 1}


@dataclass
class Spot:
    """A region of the header: where it is, how wide, and what it holds."""
    offset: int
    size: int
    kind: str  # "count", "length", "type", "int", "float", "dims", "tensor_type", "tensor_offset", "bytes"


def header_spots(path: str) -> tuple[list[Spot], int]:
    """Every field of the header as (offset, size, kind), and where the tensor data starts."""
    r = GGUFReader(path)
    base = r.data.ctypes.data
    spots = [Spot(0, 4, "bytes"), Spot(4, 4, "int"), Spot(8, 8, "count"), Spot(16, 8, "count")]
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        parts = f.parts
        off = lambda p: p.ctypes.data - base  # noqa: E731
        spots.append(Spot(off(parts[0]), 8, "length"))  # key length
        spots.append(Spot(off(parts[1]), min(len(f.name), 16), "bytes"))  # key text
        spots.append(Spot(off(parts[2]), 4, "type"))  # value type
        vtype = f.types[0] if f.types else None
        if vtype == GGUFValueType.ARRAY:
            spots.append(Spot(off(parts[3]), 4, "type"))  # element type
            spots.append(Spot(off(parts[4]), 8, "length"))  # element count
            for i in f.data[:3]:  # the first elements
                p = parts[i]
                spots.append(Spot(off(p), p.nbytes, "length" if p.dtype == np.uint64 else "bytes"))
        elif vtype == GGUFValueType.STRING:
            spots.append(Spot(off(parts[3]), 8, "length"))
            spots.append(Spot(off(parts[4]), min(parts[4].nbytes, 16), "bytes"))
        elif vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            spots.append(Spot(off(parts[3]), parts[3].nbytes, "float"))
        elif vtype in _INT_TYPES:
            spots.append(Spot(off(parts[3]), parts[3].nbytes, "int"))
    for t in r.tensors:
        fld = t.field
        parts = fld.parts
        off = lambda p: p.ctypes.data - base  # noqa: E731
        spots.append(Spot(off(parts[0]), 8, "length"))  # name length
        spots.append(Spot(off(parts[1]), min(parts[1].nbytes, 16), "bytes"))
        spots.append(Spot(off(parts[2]), 4, "dims"))  # n_dims
        spots.append(Spot(off(parts[3]), parts[3].nbytes, "dims"))  # the dims (u64 each)
        spots.append(Spot(off(parts[4]), 4, "tensor_type"))
        spots.append(Spot(off(parts[5]), 8, "tensor_offset"))
    return spots, int(r.data_offset)


def mutate(header: bytearray, spots: list[Spot], rng: np.random.Generator) -> str:
    """Applies one to three seeded mutations in place; returns their description."""
    done = []
    for _ in range(int(rng.integers(1, 4))):
        s = spots[int(rng.integers(len(spots)))]
        kind = s.kind
        if kind == "float" or (kind in ("int", "dims", "count", "length") and rng.random() < 0.1):
            if s.size in (4, 8):
                v = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, -1e-30])
                raw = np.array([v], dtype=np.float32 if s.size == 4 else np.float64).tobytes()
                header[s.offset:s.offset + s.size] = raw
                done.append(f"{kind}@{s.offset}={v}")
                continue
        if kind in ("int", "count", "length", "dims", "type", "tensor_type", "tensor_offset"):
            width = 8 if kind in ("dims",) and s.size % 8 == 0 and s.size > 4 else min(s.size, 8)
            at = s.offset + (8 * int(rng.integers(s.size // 8)) if kind == "dims" and s.size >= 8 else 0)
            bits = 8 * width
            choices = [0, 1, 2, 3, (1 << bits) - 1, (1 << (bits - 1)) - 1, 1 << (bits - 1), 255, 1 << 16, 1 << 20,
                       int(rng.integers(0, 1 << min(bits, 62)))]
            if kind in ("type", "tensor_type"):
                choices += list(range(0, 42))
            if kind == "tensor_offset":
                choices += [int(rng.integers(0, 1 << 40)), 1 << 62, 31]
            v = int(rng.choice(choices)) & ((1 << bits) - 1)
            header[at:at + width] = v.to_bytes(width, "little")
            done.append(f"{kind}@{at}={v}")
        else:  # bytes: flip some
            for _ in range(int(rng.integers(1, 4))):
                i = s.offset + int(rng.integers(max(s.size, 1)))
                header[i] ^= 1 << int(rng.integers(8))
            done.append(f"flip@{s.offset}")
    if rng.random() < 0.15:  # and some anywhere in the header
        i = int(rng.integers(len(header)))
        header[i] ^= 0xFF
        done.append(f"byte@{i}")
    return " ".join(done)


class Worker:
    def __init__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env)

    def run(self, path: str, timeout: float) -> dict:
        import selectors

        self.p.stdin.write(path + "\n")
        self.p.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.p.kill()
            self.p.wait()
            return {"ok": False, "error": "hang", "message": f"no answer in {timeout} s"}
        line = self.p.stdout.readline()
        if not line:
            rc = self.p.wait()
            return {"ok": False, "error": "died", "message": f"exit status {rc}", "signal": -rc if rc < 0 else 0}
        return json.loads(line)

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=30)


def run_mutants(model_path: str, tmp_dir: str, n: int, seed: int) -> list[dict]:
    spots, data_offset = header_spots(model_path)
    with open(model_path, "rb") as f:
        original = f.read()
    header = original[:data_offset]
    path = os.path.join(tmp_dir, "mutant.gguf")
    with open(path, "wb") as f:
        f.write(original)
    rng = np.random.default_rng(seed)
    results, worker = [], Worker()
    try:
        for i in range(n):
            h = bytearray(header)
            what = mutate(h, spots, rng)
            with open(path, "r+b") as f:
                f.write(h)
            res = worker.run(path, timeout=60)
            res.update(i=i, mutation=what)
            results.append(res)
            if not res["ok"] and res["error"] in ("hang", "died"):
                worker = Worker()
    finally:
        worker.close()
    return results


def check(results: list[dict]) -> None:
    bad = [r for r in results if not r["ok"] and r["error"] not in ("ModelLoadError", "InvalidParameterError",
                                                                  "DecodeError", "UnsupportedError")]
    summary = {}
    for r in results:
        k = "loaded" if r["ok"] else r["error"]
        summary[k] = summary.get(k, 0) + 1
    print("mutants:", summary)
    assert not bad, f"{len(bad)} of {len(results)} mutants were not handled cleanly, e.g. {bad[:3]}"


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        import tempfile
        d = tempfile.mkdtemp(prefix="sirius-mutants-", dir=shm)
        yield d
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path_factory.mktemp("mutants"))


def test_the_header_spots_cover_the_file(model_path):
    spots, data_offset = header_spots(model_path)
    kinds = {s.kind for s in spots}
    assert {"count", "length", "type", "int", "float", "dims", "tensor_type", "tensor_offset", "bytes"} <= kinds
    assert all(0 <= s.offset and s.offset + s.size <= data_offset for s in spots)


def test_200_mutants_never_kill_the_process(model_path, tmp_dir):
    results = run_mutants(model_path, tmp_dir, 200, seed=0)
    check(results)
    # Not vacuous: most mutants must be refused, and some must still load.
    assert sum(not r["ok"] for r in results) >= 50
    assert any(r["ok"] for r in results)


@pytest.mark.slow
def test_5000_mutants_never_kill_the_process(model_path, tmp_dir):
    check(run_mutants(model_path, tmp_dir, 5000, seed=1))
