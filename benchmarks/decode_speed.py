"""Dense prefill and decode speed of one model through sirius-local's C loop (greedy, fixed prompt).

    python benchmarks/decode_speed.py [MODEL] [--threads N] [--tokens 128] [--repeats 5]

Reports the median over repeats (the KV cache is cleared before each, so every run prefills the prompt).
"""

import argparse
import json
import statistics

from sirius_local import LLM

PROMPT = ("Q: A farmer has 17 sheep and buys 3 times as many goats as sheep. He sells 12 goats. "
          "How many animals does he have now?\nA: Let's think step by step.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with LLM(a.model, n_ctx=1024, n_threads=a.threads) as llm:
        llm.create_completion(PROMPT, max_tokens=8)  # warm-up: page in the weights
        runs = []
        for _ in range(a.repeats):
            llm.reset()
            s = llm.create_completion(PROMPT, max_tokens=a.tokens, stop=None)["stats"]
            runs.append(s)
        out = {
            "model": llm.model_path,
            "threads": llm.n_threads,
            "prompt_tokens": runs[0]["prompt_tokens"],
            "completion_tokens": [r["completion_tokens"] for r in runs],
            "prefill_tokens_per_second": statistics.median(r["prompt_tokens_per_second"] for r in runs),
            "decode_tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
            "decode_ms_per_token": 1000.0 / statistics.median(r["tokens_per_second"] for r in runs),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
