"""The generation loop: prefill the prompt, then sample and decode one token at a time.

Text comes out through a streaming detokenizer (never half a UTF-8 character) and a stop-string
filter that holds back only the text that could still become a stop string, so a stop string is never
shown and everything before it always is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ContextFullError, EdgeInferError
from ..tokenizer.stream import StreamingDetokenizer
from .kv_cache import KVCache
from .sampling import Sampler, SamplingParams


@dataclass
class GenerationStats:
    n_prompt: int = 0
    prompt_s: float = 0.0  # prefill time (first logits included)
    n_generated: int = 0
    gen_s: float = 0.0  # from the first sampled token to the last
    finish_reason: str = ""  # "stop" (EOS/EOT or a stop string), "length" (max_tokens or context end)
    context_full: bool = False
    tokens: list[int] | None = None
    # MoE models: how often each expert was chosen in this generation (prompt and generated tokens),
    # int (n_moe_layer, n_expert); None for a dense model
    expert_counts: np.ndarray | None = None
    # speculative decoding (engine/speculative.py): tokens proposed (by a draft model or n-gram lookup)
    # and verified by the model, and how many of them it accepted; speculative: the mode that ran
    # ("draft", "ngram"; "" for plain decoding), spec_rounds: verify passes, spec_off: the tuner found
    # speculation did not pay and turned it off (it may have probed again later)
    n_drafted: int = 0
    n_accepted: int = 0
    speculative: str = ""
    spec_rounds: int = 0
    spec_off: bool = False

    @property
    def pp_tps(self) -> float:
        return self.n_prompt / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def tg_tps(self) -> float:
        return (self.n_generated - 1) / self.gen_s if self.gen_s > 0 and self.n_generated > 1 else 0.0

    @property
    def acceptance(self) -> float:
        """Share of the drafted tokens the model accepted (0.0 when nothing was drafted)."""
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0


class StopFilter:
    """Holds back text that might be the start of a stop string; finds the first stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text safe to show now; sets `stopped` (and drops the rest) when a stop string appears."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = 0
        for s in self.stops:  # the longest suffix of pending that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class ReplyText:
    """One reply's tokens as text, and the end rules every decode loop applies after each sampled token
    (plain, speculative and the batch runner alike): an end-of-generation token ends the reply ("stop"),
    a stop string ends it at exactly the token that completes it ("stop", its text and what follows never
    shown), `max_tokens` ends it ("length"). Text goes through the streaming detokenizer, then the stop
    filter."""

    def __init__(self, tokenizer, stop: Sequence[str], max_tokens: int):
        self.tokenizer = tokenizer
        self.detok = StreamingDetokenizer(tokenizer)
        self.stops = StopFilter(stop)
        self.max_tokens = max_tokens
        self.tokens: list[int] = []
        self.finish: str | None = None  # "stop" or "length" once the reply has ended

    def push(self, token: int) -> str:
        """Take the next sampled token; the text that may be shown now ("" if none). Sets `finish` when
        this token ends the reply."""
        self.tokens.append(token)
        if self.tokenizer.is_eog(token):
            self.finish = "stop"
            return ""
        text = self.stops.push(self.detok.add(token))
        if self.stops.stopped:
            self.finish = "stop"
        elif len(self.tokens) >= self.max_tokens:
            self.finish = "length"
        return text

    def tail(self) -> str:
        """The text still held back, at the end of a reply that did not end on a stop string (a stop
        string completed by it ends the reply as "stop")."""
        if self.stops.stopped:
            return ""
        text = self.stops.push(self.detok.flush())
        if self.stops.stopped:
            self.finish = "stop"
            return text
        return text + self.stops.flush()


def check_prompt(prompt_ids: Sequence[int], n_vocab: int, n_ctx: int) -> np.ndarray:
    """The prompt as int32 ids, or an EdgeInferError (empty, ids outside the vocabulary) or a
    ContextFullError (no room left for a reply)."""
    prompt = np.asarray(list(prompt_ids), dtype=np.int32)
    if prompt.size == 0:
        raise EdgeInferError("The prompt is empty: give at least one token (or text that tokenizes to one).")
    if prompt.min() < 0 or prompt.max() >= n_vocab:
        raise EdgeInferError(f"The prompt holds token ids outside the vocabulary (0..{n_vocab - 1}).")
    if prompt.size >= n_ctx:
        raise ContextFullError(
            f"The prompt is {prompt.size} tokens long but the context holds {n_ctx}: shorten the prompt "
            "or load the model with a larger n_ctx."
        )
    return prompt


def generate_stream(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    n_ctx: int,
    params: SamplingParams,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Text pieces of the continuation of `prompt_ids`. `stats` is filled in as it runs."""
    stats = stats if stats is not None else GenerationStats()
    n_vocab = tokenizer.n_vocab
    prompt = check_prompt(prompt_ids, n_vocab, n_ctx)
    if max_tokens <= 0:
        return
    sampler = Sampler(params, n_vocab, history=prompt.tolist())
    reply = ReplyText(tokenizer, stop, max_tokens)
    cache = KVCache.for_model(model, n_ctx)
    generated = reply.tokens
    stats.tokens = generated
    stats.n_prompt = int(prompt.size)

    counts = getattr(model, "expert_counts", lambda: None)
    base = counts()

    def count_experts() -> None:
        if base is not None:
            stats.expert_counts = counts() - base

    start = time.perf_counter()
    logits = model.forward(prompt, cache, all_logits=False)[-1]
    stats.prompt_s = time.perf_counter() - start
    count_experts()
    gen_start = time.perf_counter()
    stats.finish_reason = "length"  # what a reader sees if the consumer stops early
    while True:
        token = sampler.sample(logits)
        sampler.accept(token)
        text = reply.push(token)
        stats.n_generated = len(generated)
        stats.gen_s = time.perf_counter() - gen_start
        if text:
            yield text
        if reply.finish:
            break
        if cache.n_past >= n_ctx:
            stats.context_full = True
            break
        logits = model.forward(np.array([token], dtype=np.int32), cache, all_logits=False)[-1]
        count_experts()
    tail = reply.tail()
    stats.finish_reason = reply.finish or "length"
    if tail:
        yield tail
