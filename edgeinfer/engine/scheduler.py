"""Continuous batching, the plan of each step (no model here: the logic alone, tested alone).

Up to `max_active` sequences run at once. Each step feeds one forward pass with
- one token for every sequence that is decoding, and
- the next chunk of the prompt of sequences still prefilling, oldest first, within the step's token
  budget (a chunk of at most `prefill_chunk` tokens while others decode, so their streams keep
  flowing; up to `step_tokens` when nobody decodes).
New requests wait in a bounded queue (QueueFullError past `max_queue`) and join between steps, in the
order they came, when a slot is free and, with a KV budget (`kv_blocks`), when the blocks the request
reserves (`SeqState.reserve`: enough for its prompt and its longest reply) fit beside those of the running
ones; a request that does not fit waits, and the ones behind it wait too (first come, first served).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..errors import QueueFullError


@dataclass(eq=False)
class SeqState:
    """One request as the scheduler sees it (engine/core.py's Sequence adds the model-side state)."""

    prompt: list[int]
    n_prefilled: int = 0  # prompt tokens already in the cache (a reused prefix counts)
    next_token: int | None = None  # the sampled token the next decode step feeds
    done: bool = False
    reserve: int = 0  # KV blocks it may need at most (counted against the scheduler's kv_blocks)

    @property
    def prefilling(self) -> bool:
        return self.n_prefilled < len(self.prompt)


@dataclass(frozen=True)
class Work:
    """One sequence's part of a step: feed `tokens`; `sample` when this completes its prompt or is a
    decode step (its last row's logits then choose the next token)."""

    seq: SeqState
    tokens: list[int]
    sample: bool


class Scheduler:
    def __init__(self, max_active: int, max_queue: int = 16, prefill_chunk: int = 128, step_tokens: int = 512,
                 kv_blocks: int | None = None):  # fmt: skip
        if max_active < 1 or max_queue < 0 or prefill_chunk < 1 or step_tokens < 1:
            raise ValueError("max_active, prefill_chunk and step_tokens must be >= 1, max_queue >= 0")
        if kv_blocks is not None and kv_blocks < 1:
            raise ValueError("kv_blocks must be >= 1 (or None: no KV budget)")
        self.max_active = max_active
        self.kv_blocks = kv_blocks
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.step_tokens = max(step_tokens, max_active)
        self.waiting: deque[SeqState] = deque()
        self.active: list[SeqState] = []

    def add(self, seq: SeqState) -> None:
        """Queue a request; QueueFullError when max_queue already wait."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self.waiting)} requests are already waiting; try again shortly.")
        self.waiting.append(seq)

    @property
    def reserved(self) -> int:
        """KV blocks reserved by the running sequences."""
        return sum(s.reserve for s in self.active)

    def admit(self) -> list[SeqState]:
        """Move waiting requests into free slots (oldest first) while their KV reservations fit;
        returns the ones admitted."""
        admitted = []
        reserved = self.reserved
        while self.waiting and len(self.active) < self.max_active:
            if self.kv_blocks is not None and reserved + self.waiting[0].reserve > self.kv_blocks:
                break  # it waits for blocks to come back, and the ones behind it wait with it
            seq = self.waiting.popleft()
            reserved += seq.reserve
            self.active.append(seq)
            admitted.append(seq)
        return admitted

    def remove(self, seq: SeqState) -> None:
        """A sequence finished or was cancelled: free its slot (or its place in the queue)."""
        seq.done = True
        if seq in self.active:
            self.active.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def plan(self) -> list[Work]:
        """The next step's work (empty when nothing is active)."""
        work = []
        decoding = [s for s in self.active if not s.prefilling]
        for s in decoding:
            if s.next_token is None:
                raise RuntimeError("a decoding sequence has no next token")
            work.append(Work(s, [s.next_token], True))
        budget = self.step_tokens - len(decoding)
        chunk = self.prefill_chunk if decoding else self.step_tokens
        for s in self.active:
            if budget <= 0:
                break
            if not s.prefilling:
                continue
            n = min(len(s.prompt) - s.n_prefilled, chunk, budget)
            tokens = s.prompt[s.n_prefilled : s.n_prefilled + n]
            work.append(Work(s, tokens, s.n_prefilled + n == len(s.prompt)))
            budget -= n
        return work

    def advance(self, work: list[Work]) -> None:
        """Record that a step's work ran (prompt chunks are now in the caches)."""
        advance(work)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)


def advance(work: list[Work]) -> None:
    """Record that a step's work ran: prompt chunks are now in the caches."""
    for w in work:
        if w.seq.prefilling:
            w.seq.n_prefilled += len(w.tokens)


__all__ = ["Scheduler", "SeqState", "Work", "advance"]
