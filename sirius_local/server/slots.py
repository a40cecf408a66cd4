"""The server's slots: N sessions over one loaded model, handed to requests one at a time.

A request takes the idle slot whose KV cache holds the longest common prefix of its prompt (as llama.cpp's server
does), so a chat's next turn reuses its prefill; among equals, the least recently used. When every slot is busy
a request waits, first come first served, in a queue of at most `queue` requests; past that it is refused
(QueueFull: the server's 503). Slots busy together share the CPU threads: with k busy, each decodes with 1/k of
its threads (at least one), so they compute side by side instead of taking turns on every core (on a 2-core VM,
2 clients at 1 thread each: 1.9x the tokens/s of one alone; both at 2 threads, taking turns: 0.95x).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..llm import LLM


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    id: int
    llm: LLM
    busy: bool = False
    tokens: list[int] = field(default_factory=list)  # what its KV cache holds, as of its last release
    last_used: float = 0.0


class SlotPool:
    def __init__(self, sessions: list[LLM], queue: int):
        if not sessions:
            raise ValueError("a slot pool needs at least one session")
        self.slots = [Slot(i, s) for i, s in enumerate(sessions)]
        self.queue = queue
        self.waiting = 0
        self._cond: asyncio.Condition | None = None  # made in the server's event loop, on first use

    @property
    def _free(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def _idle(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    async def acquire(self, prompt: list[int]) -> Slot:
        """The best idle slot for this prompt, once one is idle; QueueFull if the queue is full."""
        async with self._free:
            if not self._idle() and self.waiting >= self.queue:
                raise QueueFull(f"all {len(self.slots)} slots are busy and {self.waiting} requests are waiting")
            self.waiting += 1
            try:
                await self._free.wait_for(lambda: bool(self._idle()))
            finally:
                self.waiting -= 1
            slot = max(self._idle(), key=lambda s: (common_prefix(s.tokens, prompt), -s.last_used))
            slot.busy = True
            self._share_threads()
            return slot

    async def release(self, slot: Slot) -> None:
        # The generation has returned, so reading the session's tokens does not wait.
        try:
            slot.tokens = slot.llm.tokens
        except Exception:  # a closed session (shutdown)
            slot.tokens = []
        slot.last_used = time.monotonic()
        async with self._free:
            slot.busy = False
            self._share_threads()
            self._free.notify_all()  # (every waiter re-checks: a cancelled one cannot swallow the wake-up)

    def _share_threads(self) -> None:
        busy = [s for s in self.slots if s.busy]
        for s in busy:
            try:
                s.llm.set_threads(max(1, s.llm.n_threads // len(busy)), max(1, s.llm.n_threads_batch // len(busy)))
            except Exception:  # a closed session (shutdown)
                pass

    def describe(self) -> list[dict]:
        return [{"id": s.id, "state": "processing" if s.busy else "idle", "n_ctx": s.llm.n_ctx(),
                 "tokens_cached": len(s.tokens)} for s in self.slots]
