"""Shared by the generation tests: the prompts that cover every way a generation ends, one run of a prompt, the
KV cache check, and the sparse FFN's choices as masks for the NumPy reference."""

import numpy as np

import suite_model
from sirius_local import _testing

# Density 0.8 on SmolLM2-135M: drafts are often right and often wrong (strict AAL about 2-4 of 16), so both
# the accept and the rollback paths run in every test. The 135M model's sparse drafts at 0.5 are mostly wrong.
DENSITY = 0.8
LONG_TEXT = ("The history of the lighthouse begins with fires lit on hills to guide ships home. Over centuries "
             "these became towers of stone with lamps of oil, then lenses that bent the light into beams. ") * 27

CHAT = [
    ("What is the capital of France?", None),
    ("Write a haiku about autumn.", None),
    ("Explain recursion in one sentence.", None),
    ("List three colors.", None),
    ("Reply with just the word yes.", None),  # ends by end-of-generation
    ("Give me a Python function that reverses a string.", None),
    ("What is 12 times 7?", None),
    ("If I have 3 apples and eat one, how many are left? Think step by step.", None),
    ("Translate 'good morning' to French.", None),
    ("Name a planet in our solar system.", None),
    ("Describe the ocean.", "."),  # ends by a stop string
]
COMPLETION = [
    ("def fibonacci(n):", None),
    ("The quick brown fox", None),
    ("Q: What is 15 + 27?\nA:", None),
    ("1, 2, 3, 4,", ", 9"),  # stop string spanning tokens
    ("Once upon a time", None),
    ("import numpy as np\n", None),
    ("The three laws of robotics are", "\n\n"),
    ("Question: Is the sun a star?\nAnswer:", None),
    ("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n", None),
]
MAX_TOKENS = 40


def run(llm, kind, prompt, stop, **kw):
    # Every run prefills its whole prompt: a reused KV prefix would evaluate the rest of the prompt in a smaller
    # batch, and batches of 64+ tokens round differently from smaller ones (NOTES), which can flip a near-tied
    # greedy token (seen on Qwen 0.5B: top-2 margin 0.04). Dense and Sirius are compared on equal footing.
    llm.reset()
    if kind == "chat":
        r = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=kw.pop("max_tokens", MAX_TOKENS),
                                       stop=stop, **kw)
        return r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], r["stats"]
    r = llm.create_completion(prompt, max_tokens=kw.pop("max_tokens", MAX_TOKENS), stop=stop, **kw)
    return r["choices"][0]["text"], r["choices"][0]["finish_reason"], r["stats"]


CASES = [("chat", p, s) for p, s in CHAT] + [("completion", p, s) for p, s in COMPLETION] + [("long", LONG_TEXT, None)]


def reconstruct(first: int, trace: list[dict]) -> list[int]:
    out = [first]
    for t in trace:
        out += t["drafts"][:t["accepted"]] + [t["correction"]]
    return out


def dense_kv_error(llm, n_prompt: int) -> float:
    """max |logits| difference for one more token between the session's KV cache and a fresh dense evaluation
    of the same tokens: 0 only if every cached entry is the dense model's. The fresh pass evaluates the prompt in
    one batch and the rest in batches of 16, as the loop does: on this CPU build batches of 64 or more tokens take
    another matmul path whose rounding moves SmolLM2's logits by up to ~1.3, smaller ones are bit-identical to
    single-token decoding."""
    held = llm.tokens
    probe = held[-1]
    cont = llm.eval([probe], logits_all=False)[0]
    llm.reset()
    rest = held[n_prompt:] + [probe]
    llm.eval(held[:n_prompt], logits_all=False)
    for i in range(0, len(rest), 16):
        fresh = llm.eval(rest[i:i + 16], logits_all=False)[0]
    return float(np.abs(cont - fresh).max())


def prefill_collect(llm, toks):
    llm.reset()
    llm.griffin_collect(True)
    llm.eval(toks, logits_all=False)
    llm.griffin_collect(False)


def keep_masks(llm) -> dict[int, np.ndarray]:
    """Per layer, the FFN neurons the compact FFN keeps, as a boolean mask for LlamaReference(ffn_keep=...)."""
    keep = {}
    n_layer, n_ff, _ = suite_model.shape(llm.model_path)
    for il in range(n_layer):
        groups, G = _testing.sparse_groups(llm, il)
        mask = np.zeros(n_ff, dtype=bool)
        for g in groups:
            mask[g * G:(g + 1) * G] = True  # (G = 1 for Griffin, a neuron per entry)
        keep[il] = mask
    return keep
