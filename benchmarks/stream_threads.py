"""Does a host app's threading slow decoding? Dense greedy tokens/s (the engine's own figure) of one LLM, three
ways, interleaved over --repeats: a plain call; a stream (its C loop on a worker thread, a consumer thread
taking each piece); a plain call while another live thread has once run a generation on a second session.

Run it against another build's libraries with SIRIUS_LOCAL_LIB_DIR=.../sirius_local/lib (e.g. the OpenMP
variant, -DSIRIUS_GGML_OPENMP=ON) to compare builds side by side.

  python benchmarks/stream_threads.py smollm2-135m-instruct --threads 2

--polls 0,1,50 instead compares ggml's worker poll levels (SIRIUS_POLL, read when a session is made): one
session per level in this process, plain calls interleaved, 0.3 s apart so one's idle workers stop first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading

from sirius_local import LLM, registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=registry.DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--polls", default=None, help="compare these poll levels instead, e.g. 0,1,50")
    a = ap.parse_args()
    if a.polls:
        return compare_polls(a)
    llm = LLM(a.model, n_ctx=1024, n_threads=a.threads)
    kw = dict(max_tokens=a.tokens, ignore_eos=True, temperature=0)
    prompt = "Once upon a time"

    def plain() -> float:
        return llm.create_completion(prompt, **kw)["stats"]["tokens_per_second"]

    def streamed() -> float:
        stats = None
        for c in llm.create_completion(prompt, stream=True, **kw):
            stats = c.get("stats", stats)
        return stats["tokens_per_second"]

    other = llm.session()
    release = threading.Event()
    ran = threading.Event()

    def bystander() -> None:  # runs one generation, then stays alive (idle) until the end
        other.create_completion(prompt, max_tokens=4)
        ran.set()
        release.wait()

    plain()  # warm-up
    results = {"plain": [], "stream": []}
    for _ in range(a.repeats):
        results["plain"].append(plain())
        results["stream"].append(streamed())
    t = threading.Thread(target=bystander)
    t.start()
    ran.wait()
    results["plain, another thread alive"] = [plain() for _ in range(a.repeats)]
    release.set()
    t.join()
    other.close()
    lib = os.environ.get("SIRIUS_LOCAL_LIB_DIR", "installed")
    print(f"{a.model}, {a.threads} threads, {a.tokens} tokens, libraries: {lib}")
    for k, v in results.items():
        print(f"  {k:30} {statistics.median(v):7.1f} tok/s  (min {min(v):.1f}, max {max(v):.1f})")
    llm.close()


def compare_polls(a) -> None:
    import time

    sessions = {}
    for level in a.polls.split(","):
        os.environ["SIRIUS_POLL"] = level.strip()
        sessions[level.strip()] = LLM(a.model, n_ctx=1024, n_threads=a.threads)
    got = {k: [] for k in sessions}
    for _ in range(a.repeats):
        for k, llm in sessions.items():
            time.sleep(0.3)
            got[k].append(llm.create_completion("Once upon a time", max_tokens=a.tokens, ignore_eos=True)
                          ["stats"]["tokens_per_second"])
    print(f"{a.model}, {a.threads} threads, {a.tokens} tokens: " +
          ", ".join(f"poll {k}: {statistics.median(v):.1f} tok/s" for k, v in got.items()))
    for llm in sessions.values():
        llm.close()


if __name__ == "__main__":
    main()
