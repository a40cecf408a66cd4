"""What `sirius-local serve` costs and what its slots buy, side by side in one run.

1. Overhead: a streamed greedy completion of --tokens tokens through the server (the real `openai` client, on
   loopback) against the same completion through the Python API in this process, interleaved over --repeats;
   the figure is the median time per generated token (first token to last, so the prefill is out of it).
2. Concurrency: C clients (each a thread with its own connection) send --requests streamed greedy completions
   each, at once, to a server with --parallel slots; aggregate generated tokens/s over the wall time, for each C
   in --clients.

  python benchmarks/server_load.py smollm2-135m-instruct --parallel 2 --clients 1,2,4 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import openai

from sirius_local import LLM, registry

MODEL_ID: str | None = None  # the server's model id, read once from /v1/models
PROMPTS = ["Once upon a time", "The history of the printing press", "A recipe for bread:", "def fibonacci(n):"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, parallel: int, threads: int, n_ctx: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sirius_local.server", model, "--port", str(port), "--parallel",
                             str(parallel), "--threads", str(threads), "--n-ctx", str(n_ctx), "--queue", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def streamed_server(client, prompt: str, tokens: int) -> tuple[int, float]:
    """(tokens, seconds from the first token to the last) of one streamed completion."""
    first = last = None
    n = 0
    for c in client.completions.create(model=client.models.list().data[0].id if MODEL_ID is None else MODEL_ID, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True}):
        if c.choices and c.choices[0].text:
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
        if c.choices and c.choices[0].finish_reason:
            n = c.model_extra["sirius"]["completion_tokens"]
    return n, (last - first)


def streamed_raw(port: int, prompt: str, tokens: int) -> tuple[int, float]:
    """The same through a lean SSE reader (http.client): the client's own parsing left out of the figure."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    first = last = None
    n = 0
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        c = json.loads(line[6:])
        if c["choices"] and c["choices"][0]["text"]:
            now = time.perf_counter()
            first = first or now
            last = now
        if c["choices"] and c["choices"][0]["finish_reason"]:
            n = c["sirius"]["completion_tokens"]
    conn.close()
    return n, (last - first)


def streamed_api(llm: LLM, prompt: str, tokens: int) -> tuple[int, float]:
    first = last = None
    n = 0
    for c in llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True, ignore_eos=True):
        if c["choices"][0]["text"]:
            now = time.perf_counter()
            first = first or now
            last = now
        if c["choices"][0]["finish_reason"]:
            n = c["stats"]["completion_tokens"]
    return n, (last - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=registry.DEFAULT_MODEL)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--requests", type=int, default=4, help="per client, in the concurrency runs")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    path = str(registry.resolve(a.model))
    proc, port = start(path, a.parallel, a.threads, a.n_ctx)
    out = {"model": a.model, "parallel": a.parallel, "threads": a.threads, "tokens": a.tokens,
           "cpu": _cpu(), "overhead": {}, "concurrency": []}
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        global MODEL_ID
        MODEL_ID = client.models.list().data[0].id
        with LLM(path, n_ctx=a.n_ctx, n_threads=a.threads) as llm:
            streamed_api(llm, PROMPTS[0], 8), streamed_server(client, PROMPTS[0], 8)  # warm-up
            api, raw, srv = [], [], []
            for r in range(a.repeats):  # interleaved, so drift hits all three alike
                p = PROMPTS[r % len(PROMPTS)]
                for times, fn in ((api, lambda: streamed_api(llm, p, a.tokens)),
                                  (raw, lambda: streamed_raw(port, p, a.tokens)),
                                  (srv, lambda: streamed_server(client, p, a.tokens))):
                    n, s = fn()
                    times.append(s / (n - 1))
        ms = {k: statistics.median(v) * 1e3 for k, v in (("api", api), ("raw", raw), ("openai", srv))}
        out["overhead"] = {"api_ms_per_token": ms["api"], "server_lean_client_ms_per_token": ms["raw"],
                           "server_openai_client_ms_per_token": ms["openai"],
                           "server_over_api": ms["raw"] / ms["api"] - 1.0,
                           "server_and_openai_client_over_api": ms["openai"] / ms["api"] - 1.0}
        print(f"{a.model}, {a.tokens}-token streamed greedy completion, {a.threads} threads: Python API "
              f"{ms['api']:.2f} ms/token; server {ms['raw']:.2f} ms/token with a lean client "
              f"({100 * (ms['raw'] / ms['api'] - 1):+.1f}%), {ms['openai']:.2f} with the openai client "
              f"({100 * (ms['openai'] / ms['api'] - 1):+.1f}%)")

        def client_run(c: int) -> int:
            cl = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
            return sum(streamed_server(cl, PROMPTS[(c + i) % len(PROMPTS)], a.tokens)[0] for i in range(a.requests))

        for n_clients in [int(x) for x in a.clients.split(",")]:
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(n_clients) as ex:
                toks = sum(ex.map(client_run, range(n_clients)))
            wall = time.perf_counter() - t0
            row = {"clients": n_clients, "tokens": toks, "seconds": wall, "tokens_per_second": toks / wall}
            out["concurrency"].append(row)
        one = out["concurrency"][0]["tokens_per_second"]
        print(f"--parallel {a.parallel}: clients | aggregate tok/s | vs {out['concurrency'][0]['clients']} client(s)")
        for row in out["concurrency"]:
            row["vs_first"] = row["tokens_per_second"] / one
            print(f"  {row['clients']:>2} | {row['tokens_per_second']:7.1f} | {row['vs_first']:.2f}x")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
