"""The engine core: one request lifecycle under the library, the CLI, the chat app and the server.

A `Request` is what a caller asks for (prompt ids, sampling, limits, stops, speculation). A `Sequence`
is a request being served: its KV cache, sampler, reply text and end rules, speculator, progress and
timings. `Engine.step(work)` runs ONE forward pass for one sequence or many and then, for every
sequence whose last row chooses a token: verify its drafts (speculation) or sample, and apply the end
rules (EOG, stop strings, max_tokens, the context). Everything that happens where a token is chosen
and a reply ends happens here, once.

    engine = Engine(model, tokenizer, n_ctx)
    seq = engine.sequence(Request(prompt_ids, SamplingParams(temperature=0), max_tokens=64), emit=print)
    engine.step([Work(seq, seq.prompt, True)])                # prefill, then the first token
    while not seq.finish:
        engine.step([Work(seq, [seq.next_token], True)])     # one token (or a verified run of drafts)

`generate.generate_stream` drains one sequence this way; the batch runner (batch.py) feeds many, the
scheduler (scheduler.py) planning each step's work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidPromptError, PromptTooLongError
from ..nn import ForwardBatch
from .constrain import Grammar
from .kv_cache import KVCache
from .reply import ReplyText
from .sampling import Sampler, SamplingParams
from .scheduler import SeqState, Work, advance


def check_prompt(prompt_ids: Seq[int], n_vocab: int, n_ctx: int,
                 hint: str = "load the model with a larger n_ctx") -> np.ndarray:  # fmt: skip
    """The prompt as int32 ids; InvalidPromptError (empty, ids outside the vocabulary) or
    PromptTooLongError (no room left in the context for a generated token). `hint`: how to make room."""
    prompt = np.asarray([int(t) for t in prompt_ids], dtype=np.int64)
    if prompt.size == 0:
        raise InvalidPromptError("The prompt is empty: give at least one token (or text that tokenizes to one).")
    bad = prompt[(prompt < 0) | (prompt >= n_vocab)]
    if bad.size:
        raise InvalidPromptError(
            f"The prompt holds token id {int(bad[0])}, outside the vocabulary (0..{n_vocab - 1})."
        )
    if prompt.size >= n_ctx:
        raise PromptTooLongError(
            f"The prompt is {prompt.size} tokens long but the context holds {n_ctx} (and needs room for at "
            f"least one generated token): shorten the prompt or {hint}."
        )
    return prompt.astype(np.int32)


@dataclass
class Request:
    """What a caller asks for. speculative: the resolved mode ("draft", "ngram") or None; grammar: every
    token obeys it (engine/constrain.py); logprobs: None (off), or how many of the most likely tokens
    to report beside each chosen one's log-probability (0: the chosen one only)."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int = 256
    stop: Seq[str] = ()
    speculative: str | None = None
    grammar: Grammar | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability under the model (log_softmax of its raw logits: before the
    sampling chain and any grammar), and the `top` most likely tokens as (id, logprob), likeliest first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    top = ()
    if n_top > 0:
        k = min(n_top, x.size)
        ids = np.argpartition(-x, k - 1)[:k]
        ids = ids[np.lexsort((ids, -x[ids]))]
        top = tuple((int(i), float(x[i] - lse)) for i in ids)
    return TokenLogprob(int(token), float(x[token] - lse), top)


class Sequence(SeqState):
    """A request being served (what the scheduler plans, and its model-side state)."""

    def __init__(self, request: Request, cache: KVCache, sampler: Sampler, reply: ReplyText, speculator,
                 limit: int, emit: Callable[[str], None], reserve: int = 0, client=None, constraint=None):  # fmt: skip
        super().__init__(list(request.prompt), n_prefilled=cache.n_past, reserve=reserve)
        self.request = request
        self.cache = cache
        self.sampler = sampler
        self.reply = reply
        self.speculator = speculator  # engine/speculative.py Speculator, or None (plain decoding)
        self.constraint = constraint  # engine/constrain.py Constraint, or None
        self.logprobs: list[TokenLogprob] | None = [] if request.logprobs is not None else None
        self.limit = limit  # tokens its cache may hold (the context, or the server's reservation)
        self.emit = emit  # receives the reply's text, piece by piece
        self.client = client  # the caller's handle (a runner's Handle), untouched by the engine
        self.finish: str | None = None  # "stop", "length", "cancelled", "error" once it has ended
        self.error: str | None = None  # what went wrong, with "error"
        self.context_full = False  # it ended because its cache reached `limit`
        self.t_admitted: float | None = None  # clock() when a runner started it
        self.t_prefilled: float | None = None  # ... when its prompt was in the cache
        self.t_first: float | None = None  # ... when its first token was chosen
        self.t_last: float | None = None  # ... when its latest token was chosen

    @property
    def generated(self) -> list[int]:
        return self.reply.tokens

    @property
    def context(self) -> list[int]:
        """Every token so far: the prompt and the reply."""
        return self.prompt + self.reply.tokens


class Engine:
    """Steps sequences of one model. clock: seconds (time.perf_counter; tests may inject one);
    on_end(seq) is called once for every sequence that ends inside a step or by end()."""

    def __init__(self, model, tokenizer, n_ctx: int, clock: Callable[[], float] = time.perf_counter,
                 on_end: Callable[[Sequence], None] | None = None):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = int(n_ctx)
        self.clock = clock
        self.on_end = on_end

    def sequence(self, request: Request, cache: KVCache | None = None, speculator=None, limit: int | None = None,
                 emit: Callable[[str], None] | None = None, reserve: int = 0, client=None) -> Sequence:  # fmt: skip
        """A sequence for `request`: its cache (a fresh one of n_ctx cells unless given, possibly holding
        a prefix of the prompt already), sampler (own seed), reply and end rules."""
        cache = cache if cache is not None else KVCache.for_model(self.model, self.n_ctx)
        sampler = Sampler(request.params, self.tokenizer.n_vocab, history=list(request.prompt))
        reply = ReplyText(self.tokenizer, request.stop, request.max_tokens)
        constraint = request.grammar.matcher(self.tokenizer) if request.grammar is not None else None
        return Sequence(request, cache, sampler, reply, speculator, int(limit or self.n_ctx),
                        emit or (lambda text: None), reserve, client, constraint)  # fmt: skip

    # -- one pass
    def step(self, work: list[Work]) -> int:
        """One forward pass over every sequence's tokens (a prompt chunk, or the next token with its
        drafts), then the tokens it yields taken by each sequence whose work samples. Returns how many
        tokens were generated."""
        feeds, drafts, ks, every = [], [], [], []
        for w in work:
            s = w.seq
            k, d = 0, []
            decoding = w.sample and not s.prefilling
            if decoding and s.speculator is not None:  # the next token carries its drafts
                # the pass adds 1 + k tokens to the cache; the reply needs at most the tokens it has left
                room = min(s.request.max_tokens - len(s.generated), s.limit - s.cache.n_past) - 1
                k = s.speculator.draft_length(room) if room > 0 else 0
                d = s.speculator.propose(s.context, k, s.sampler) if k > 0 else []
            feeds.append(np.asarray(list(w.tokens) + d, np.int32))
            drafts.append(d)
            ks.append(k)
            every.append(decoding and s.speculator is not None)
        n_past = [w.seq.cache.n_past for w in work]
        start = self.clock()
        logits = self.model.run(ForwardBatch.plan(feeds, [w.seq.cache for w in work]), all_logits=every)
        pass_s = self.clock() - start
        n_fed = sum(len(f) for f in feeds)
        completing = [w.sample and w.seq.prefilling for w in work]
        advance(work)
        n_new = 0
        for w, lg, f, d, k, sp, n0, done in zip(work, logits, feeds, drafts, ks, every, n_past, completing):
            s = w.seq
            if done:  # its prompt is in the cache now (and in the draft model's, when it has one)
                if s.speculator is not None:
                    s.speculator.prefill(s.prompt)
                s.t_prefilled = self.clock()
            if not w.sample:
                continue
            if not sp:
                row = lg[-1]
                c = s.constraint
                token = s.sampler.sample(c.mask(row) if c is not None else row)
                s.sampler.accept(token)
                if c is not None:
                    c.consume(token)
                n_new += 1
                self._take(s, token, row=row)
                continue
            out = s.speculator.verify(s.sampler, lg, d, s.constraint)
            s.cache.truncate(n0 + len(out))  # forget the rejected drafts
            s.speculator.observe(len(f), pass_s * len(f) / n_fed, len(out), k)
            for i, token in enumerate(out, 1):
                n_new += 1  # the cache as a plain decode would hold it when this token is chosen
                if not self._take(s, token, n_held=n0 + i, row=lg[i - 1]):
                    break
        return n_new

    def _take(self, s: Sequence, token: int, n_held: int | None = None, row: np.ndarray | None = None) -> bool:
        """A chosen token (already accepted by the sampler): its text out, then the end rules. Whether
        the sequence goes on. n_held: the tokens in its cache when this one was chosen; row: the logits
        it was chosen from (for its log-probability)."""
        if s.logprobs is not None and row is not None:
            s.logprobs.append(token_logprob(row, token, s.request.logprobs))
        s.t_last = self.clock()
        if s.t_first is None:
            s.t_first = s.t_last
        text = s.reply.push(token)
        if text:
            s.emit(text)
        if s.reply.finish:
            self.end(s, s.reply.finish)
            return False
        if (s.cache.n_past if n_held is None else n_held) >= s.limit:
            s.context_full = True
            self.end(s, "length")
            return False
        s.next_token = token
        return True

    def end(self, s: Sequence, reason: str) -> None:
        """End a sequence (once): a reply that ran out ("stop", "length") shows the text it held back (a
        stop string completed by it makes the reason "stop"); "cancelled" and "error" show nothing more."""
        if s.finish is not None:
            return
        if reason in ("stop", "length"):
            tail = s.reply.tail()
            if s.reply.finish == "stop":
                reason = "stop"
            if tail:
                s.emit(tail)
        s.finish = reason
        s.done = True
        if self.on_end is not None:
            self.on_end(s)

    @staticmethod
    def next_work(s: Sequence) -> Work:
        """A lone sequence's next step: the rest of its prompt, or its next token."""
        if s.prefilling:
            return Work(s, s.prompt[s.n_prefilled :], True)
        return Work(s, [s.next_token], True)


__all__ = ["Engine", "Request", "Sequence", "TokenLogprob", "check_prompt", "token_logprob"]
