"""Text and stats over the engine core (engine/core.py), for one request: `generate_stream` submits one
sequence, steps it to its end and yields its text as it comes, filling in `GenerationStats`. The
library (`LLM.generate/chat`), `edgeinfer run`, the chat app and the serial runner all read replies
through it; the batch runner steps many sequences with the same core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .core import Engine, Request, check_prompt
from .reply import ReplyText, StopFilter
from .sampling import SamplingParams


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
    # ("draft", "ngram"; "" for plain decoding), spec_rounds: verify passes, spec_off: the adaptive
    # policy found speculation did not pay and turned it off (it may have probed again later)
    n_drafted: int = 0
    n_accepted: int = 0
    speculative: str = ""
    spec_rounds: int = 0
    spec_off: bool = False
    logprobs: list | None = None  # engine.core.TokenLogprob of each generated token, when asked for

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


def generate_stream(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    n_ctx: int,
    params: SamplingParams,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
    stats: GenerationStats | None = None,
    speculator=None,
    clock: Callable[[], float] = time.perf_counter,
    grammar=None,
    logprobs: int | None = None,
) -> Iterator[str]:
    """Text pieces of the continuation of `prompt_ids`. `stats` is filled in as it runs. speculator:
    engine.speculative.Speculator for speculative decoding (None: plain); grammar: engine.constrain.Grammar
    every token obeys; logprobs: None, or the top-n to record beside each token's (stats.logprobs)."""
    stats = stats if stats is not None else GenerationStats()
    prompt = check_prompt(prompt_ids, tokenizer.n_vocab, n_ctx)
    stats.speculative = speculator.mode if speculator is not None else ""
    if max_tokens <= 0:
        return
    engine = Engine(model, tokenizer, n_ctx, clock=clock)
    pieces: list[str] = []
    request = Request(prompt.tolist(), params, max_tokens, stop, stats.speculative or None, grammar, logprobs)
    seq = engine.sequence(request, speculator=speculator, emit=pieces.append)
    stats.tokens = seq.generated
    stats.logprobs = seq.logprobs
    stats.n_prompt = int(prompt.size)
    counts = getattr(model, "expert_counts", lambda: None)
    base = counts()
    start = clock()
    stats.finish_reason = "length"  # what a reader sees if the consumer stops early
    while seq.finish is None:
        engine.step([engine.next_work(seq)])
        if base is not None:
            stats.expert_counts = counts() - base
        if seq.t_prefilled is not None:
            stats.prompt_s = seq.t_prefilled - start
        stats.n_generated = len(seq.generated)
        stats.gen_s = (seq.t_last - seq.t_prefilled) if seq.t_last is not None else 0.0
        if speculator is not None:
            stats.n_drafted, stats.n_accepted = speculator.n_drafted, speculator.n_accepted
            stats.spec_rounds, stats.spec_off = speculator.rounds, speculator.was_off
        if seq.finish is not None:
            stats.finish_reason = seq.finish
            stats.context_full = seq.context_full
        while pieces:
            yield pieces.pop(0)


__all__ = ["GenerationStats", "ReplyText", "StopFilter", "check_prompt", "generate_stream"]
