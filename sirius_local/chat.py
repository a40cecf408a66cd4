"""The interactive `chat` loop: streamed replies, /reset, /exit, Ctrl-C stops the reply in progress."""

from __future__ import annotations

import sys

from .errors import SiriusError

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
            print(f"\n[{stats['completion_tokens']} tokens, {stats['tokens_per_second']:.1f} tok/s]")
