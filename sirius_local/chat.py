"""The interactive `chat` loop: streamed replies, /reset, /exit, Ctrl-C stops the reply in progress."""

from __future__ import annotations

import sys

from .errors import SiriusError


def summary(stats: dict) -> str:
    """One line of figures after a reply or a completion."""
    parts = [f"{stats['completion_tokens']} tokens", f"{stats['tokens_per_second']:.1f} tok/s"]
    if stats.get("mode") in ("sparse", "sirius") and stats.get("sparse"):
        parts.append(f"{stats['sparsity']} density {stats['density_actual']:.2f} "
                     f"(a sparse step reads {stats['sparse_param_fraction']:.2f} of the parameters)")
    if stats.get("mode") == "sirius":
        if stats["periods"]:
            k = stats["period"] if stats["period"] != "auto" else f"auto={stats['period_last']}"
            parts.append(f"AAL {stats['aal']:.2f}/{k}")
            parts.append(f"effective density {stats['effective_density']:.2f}")
        if stats["auto_dense"]:
            parts.append("auto: decoded densely (drafting cannot pay on this machine)")
        if stats.get("speedup_vs_dense"):
            parts.append(f"{stats['speedup_vs_dense']:.2f}x dense ({stats['dense_tokens_per_second']:.1f} tok/s)")
    return "[" + ", ".join(parts) + "]"


HELP = "Type a message. /reset clears the conversation, /exit quits (Ctrl-D too). Ctrl-C stops a reply."


def run_chat(llm, *, system: str | None, sampling: dict) -> int:
    def fresh():
        return [{"role": "system", "content": system}] if system else []

    history = fresh()
    print(f"sirius-local chat: {llm.model_path} ({llm.architecture}, {llm.n_threads} threads, mode {sampling['mode']})")
    print(HELP)
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()  # Ctrl-C at the prompt: a new prompt, not an exit
            continue
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/exit", "/quit"):
            return 0
        if msg == "/reset":
            history = fresh()
            llm.reset()
            print("[conversation cleared]")
            continue
        if msg.startswith("/"):
            print(f"unknown command {msg.split()[0]}. {HELP}")
            continue

        history.append({"role": "user", "content": msg})
        reply, stats = [], None
        stream = None
        try:
            stream = llm.create_chat_completion(history, stream=True, **sampling)
            for chunk in stream:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    reply.append(delta)
                    sys.stdout.write(delta)
                    sys.stdout.flush()
                stats = chunk.get("stats", stats)
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()  # cancels generation between two tokens
            print("\n[stopped]")
        except SiriusError as e:
            history.pop()
            print(f"\nerror: {e}")
            continue
        history.append({"role": "assistant", "content": "".join(reply)})
        if stats:
            print("\n" + summary(stats))
