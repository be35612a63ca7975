"""The batched runner: continuous batching of up to `parallel` sequences over one model.

Every step is one forward pass over all running sequences (DecoderModel.forward_many): one token for
each decoding sequence plus a chunk of a new prompt (engine/scheduler.py plans it), so each weight is
read once per step for all of them. Requests join and leave between steps. Each sequence has its own
KV cache, sampler (own seed), streaming detokenizer and stop-string filter.

The KV cache is paged: every sequence's cache is a block table into one shared BlockPool of `kv_cells`
cells (default: n_ctx for each of the `parallel` sequences), so memory follows the tokens held. A request
is admitted when a slot is free and the blocks it may need (prompt + max_tokens, up to the context)
fit beside the reservations of the running ones; otherwise it waits in the queue.

A new prompt that starts like one the runner has seen (the same system prompt, the turns of the same
chat) starts from that prefix's K/V instead of computing it again: the full blocks are shared (nothing
copied, copy on write), the rest copied; from the cache of a running sequence, or from one kept from a
finished request (the last `parallel` are kept, and dropped first when the pool runs short of blocks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from .generate import ReplyText
from .kv_cache import BlockPool, KVCache
from .runner import Finish, Handle, PromptTooLongError, SerialRunner
from .sampling import Sampler
from .scheduler import Scheduler, SeqState

MIN_PREFIX = 4  # shorter common prefixes are computed again (not worth a copy)


class BatchRunner(SerialRunner):
    """SerialRunner's interface (submit, events, cancel, stats); up to `parallel` requests at once."""

    def __init__(self, llm, parallel: int = 4, max_queue: int = 16, n_ctx: int | None = None,
                 prefill_chunk: int = 128, step_tokens: int = 512, kv_cells: int | None = None):  # fmt: skip
        super().__init__(llm, max_queue=max_queue, n_ctx=n_ctx)
        self.parallel = parallel
        self.pool = BlockPool.for_model(llm.model, int(kv_cells or self.n_ctx * parallel))
        self.pool.reclaim = self._reclaim
        self.sched = Scheduler(parallel, max_queue, prefill_chunk, step_tokens, kv_blocks=self.pool.n_blocks)
        self._incoming: list[Handle] = []
        self._cv = threading.Condition(self._lock)
        self._stopping = False
        self._kept: list[tuple[list[int], KVCache]] = []  # finished sequences' tokens and caches, newest last
        self.prefix_tokens_reused = 0
        self._stats_spec = [0, 0]  # tokens drafted, drafts accepted
        from .speculative import CostModel

        self._spec_costs = CostModel()  # this runner's pass costs (a batched pass is not a lone one)

    # -- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="edgeinfer-batch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stopping = True
                self._cv.notify()
            self._thread.join(timeout=30)
            self._thread = None

    def _enqueue(self, handle: Handle) -> None:
        self._incoming.append(handle)
        self._cv.notify()  # the condition shares the runner's lock, held here

    def check_prompt(self, prompt_ids: Sequence[int]) -> None:
        super().check_prompt(prompt_ids)
        if len(prompt_ids) >= self.pool.n_cells:
            raise PromptTooLongError(
                f"The prompt is {len(prompt_ids)} tokens long but the server's KV cache holds {self.pool.n_cells} "
                "(and needs room for at least one generated token): shorten the prompt or start the server "
                "with a larger --kv-size."
            )

    def stats(self) -> dict:
        out = super().stats()
        out["parallel"] = self.parallel
        out["prefix_tokens_reused"] = self.prefix_tokens_reused
        pool = self.pool
        out["kv_blocks_total"] = pool.n_blocks
        out["kv_blocks_used"] = pool.n_used
        out["kv_block_tokens"] = pool.block_size
        out["kv_bytes_used"] = pool.n_used * pool.block_nbytes
        out["kv_bytes_total"] = pool.nbytes  # in the pool's kv_type (f16: half of f32)
        out["kv_blocks_reserved"] = self.sched.reserved
        with self._lock:
            out["spec_drafted_tokens_total"], out["spec_accepted_tokens_total"] = self._stats_spec
        return out

    def _reclaim(self) -> bool:
        """The pool is out of blocks: drop the oldest cache kept for prefix reuse."""
        if not self._kept:
            return False
        self._kept.pop(0)[1].release()
        return True

    # -- the worker
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._incoming and not self.sched.active and not self.sched.waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    for h in self._incoming:
                        h.emit(Finish("cancelled", len(h.prompt_ids)))
                    self._incoming.clear()
                    break
                incoming, self._incoming = self._incoming, []
            bs = self.pool.block_size
            for h in incoming:  # blocks for the prompt and the longest reply it may get, up to the context
                longest = min(self.n_ctx, len(h.prompt_ids) + max(1, h.max_tokens))
                reserve = min(-(-longest // bs), self.pool.n_blocks)
                self.sched.waiting.append(SeqState(list(h.prompt_ids), reserve=reserve, data={"handle": h}))
            try:
                self._step()
            except Exception as e:  # a failed step fails its sequences, never the runner
                for seq in list(self.sched.active):
                    self._end(seq, "error", f"{type(e).__name__}: {e}")
        for seq in list(self.sched.active) + list(self.sched.waiting):
            self._end(seq, "cancelled")

    def _step(self) -> None:
        sched = self.sched
        for seq in list(sched.active) + list(sched.waiting):  # clients that went away
            if seq.data["handle"].cancelled.is_set():
                self._end(seq, "cancelled")
        for seq in sched.admit():
            with self._lock:
                self._stats.queue_depth -= 1
                self._stats.active += 1
            self._start(seq)
        work = sched.plan()
        if not work:
            return
        feeds, drafts = [], []
        for w in work:  # a speculating sequence's decode step carries its drafts
            d = self._propose(w.seq) if w.sample and not w.seq.prefilling else []
            feeds.append(np.asarray(list(w.tokens) + d, np.int32))
            drafts.append(d)
        spec = [w.seq.data.get("spec") is not None and w.sample and not w.seq.prefilling for w in work]
        n_past = [w.seq.data["cache"].n_past for w in work]
        start = time.perf_counter()
        logits = self.llm.model.forward_many(feeds, [w.seq.data["cache"] for w in work], all_logits=spec)
        step_s = time.perf_counter() - start
        n_fed = sum(len(f) for f in feeds)
        sched.advance(work)
        n_new = 0
        for w, lg, f, d, sp, n0 in zip(work, logits, feeds, drafts, spec, n_past):
            if not w.sample:
                continue
            if not sp:
                n_new += 1
                self._sample(w.seq, lg[-1])
                continue
            n_new += self._verify(w.seq, lg, d, n0, step_s * len(f) / n_fed)
        self._count_tokens(n_new)

    # -- speculative decoding inside the batch
    def _speculator(self, h: Handle):
        """The request's Speculator (engine/speculative.py), or None for plain decoding."""
        mode = h.speculative
        draft = getattr(self.llm, "draft", None)
        if mode == "auto":
            mode = "draft" if draft is not None else None
        if mode is None:
            return None
        from .speculative import CostModel, Speculator

        cfg = getattr(self.llm, "spec_config", None)
        costs = self._spec_costs
        if h.params.seed is not None and not h.params.greedy:  # reproducible: no clock in the choices
            costs = CostModel.nominal(self.llm._draft_ratio() if mode == "draft" else 0.0)
        if mode == "draft":
            return Speculator.draft(draft.model, self.n_ctx, costs, cfg, seed=h.params.seed)
        return Speculator.ngram(costs, cfg)

    def _propose(self, seq: SeqState) -> list[int]:
        """Drafts for a decoding sequence's next pass (none without speculation, or when its tuner
        says they do not pay, or when no room is left for them)."""
        spec = seq.data.get("spec")
        if spec is None:
            return []
        d, h = seq.data, seq.data["handle"]
        # the pass adds 1 + k tokens to the cache; the reply needs at most the tokens it has left
        room = min(h.max_tokens - len(d["generated"]), d["limit"] - d["cache"].n_past) - 1
        k = spec.draft_length(room) if room > 0 else 0
        return spec.propose(seq.prompt + d["generated"], k, d["sampler"]) if k > 0 else []

    def _verify(self, seq: SeqState, logits: np.ndarray, drafts: list[int], n_past: int, share_s: float) -> int:
        """A speculating sequence's pass: the tokens its drafts yield (verify() accepts them into the
        sampler), its cache rolled back past the first rejection, each token then taken as a sampled one
        would be (stops and limits end it at exactly the right token). Returns the tokens taken."""
        spec, d = seq.data["spec"], seq.data
        out = spec.verify(d["sampler"], logits, drafts)
        d["cache"].truncate(n_past + len(out))
        spec.observe_pass(len(drafts) + 1, share_s)
        if drafts:
            spec.observe_round(len(out), spec.last_propose_seconds + share_s)
        with self._lock:
            self._stats_spec[0] += len(drafts)
            self._stats_spec[1] += len(out) - 1 if drafts else 0
        taken = 0
        for tok in out:
            taken += 1  # the cache as a plain decode would hold it when this token is sampled
            if not self._take(seq, tok, n_held=n_past + taken):
                break
        return taken

    def _start(self, seq: SeqState) -> None:
        """A sequence's cache (holding the longest known prefix of its prompt), sampler and filters."""
        h: Handle = seq.data["handle"]
        seq.data["admitted"] = time.perf_counter()
        prompt = seq.prompt
        limit = len(prompt) - 1  # at least one token is computed: its logits choose the first token
        best_n, best_src = 0, None
        sources = [(tokens, c.n_past, c) for tokens, c in self._kept]
        sources += [(o.prompt, o.n_prefilled, o.data["cache"]) for o in self.sched.active if o is not seq and "cache" in o.data]
        for tokens, n_held, c in sources:
            n = _common_prefix(tokens, prompt, min(limit, n_held))
            if n > best_n:
                best_n, best_src = n, c
        cache = KVCache.for_model(self.llm.model, self.n_ctx, pool=self.pool)
        if best_n >= MIN_PREFIX:
            kept = [k for k in self._kept if k[1] is best_src]
            for k in kept:  # out of the pool's reach while it is read
                self._kept.remove(k)
            cache.copy_prefix(best_src, best_n)  # full blocks shared, the rest copied
            self._kept.extend(kept)  # the most recently used now
        seq.n_prefilled = cache.n_past
        self.prefix_tokens_reused += cache.n_past
        reply = ReplyText(self.llm.tokenizer, h.stop, h.max_tokens)
        seq.data.update(
            cache=cache,
            limit=min(self.n_ctx, seq.reserve * self.pool.block_size),  # tokens it may hold
            sampler=Sampler(h.params, self.llm.n_vocab, history=prompt),
            reply=reply,
            generated=reply.tokens,
            spec=self._speculator(h),
        )

    def _sample(self, seq: SeqState, logits: np.ndarray) -> None:
        token = seq.data["sampler"].sample(logits)
        seq.data["sampler"].accept(token)
        self._take(seq, token)

    def _take(self, seq: SeqState, token: int, n_held: int | None = None) -> bool:
        """A new token of the sequence (already accepted by its sampler): emit its text, end the
        sequence on EOG, a stop string or a limit; else it feeds the next step. Whether it goes on.
        n_held: the tokens in its cache when this one was chosen (default: the cache's n_past)."""
        h: Handle = seq.data["handle"]
        d = seq.data
        reply: ReplyText = d["reply"]
        text = reply.push(token)
        if len(reply.tokens) == 1:
            d["first"] = time.perf_counter()
        if text:
            h.emit(text)
        if reply.finish:
            self._end(seq, reply.finish)
            return False
        if (d["cache"].n_past if n_held is None else n_held) >= d["limit"]:
            self._end(seq, "length")
            return False
        seq.next_token = token
        return True

    def _end(self, seq: SeqState, reason: str, error: str | None = None) -> None:
        h: Handle = seq.data["handle"]
        was_active = seq in self.sched.active
        self.sched.remove(seq)
        d = seq.data
        if "reply" in d and reason in ("stop", "length"):
            tail = d["reply"].tail()  # nothing after a stop string
            if d["reply"].finish == "stop":
                reason = "stop"  # the held-back text completed a stop string
            if tail:
                h.emit(tail)
        cache = d.pop("cache", None)
        if cache is not None and reason != "error":  # kept for the prefix of a later request
            self._kept.append((list(seq.prompt) + d.get("generated", [])[:-1], cache))
            if len(self._kept) > self.parallel:
                self._kept.pop(0)[1].release()
        elif cache is not None:
            cache.release()
        now = time.perf_counter()
        n_gen = len(d.get("generated", []))
        with self._lock:
            total = now - h.submitted
            self._mean_request_s = total if not self._mean_request_s else 0.8 * self._mean_request_s + 0.2 * total
            if was_active:
                self._stats.active -= 1
                self._stats.prompt_tokens_total += len(seq.prompt)
            else:
                self._stats.queue_depth -= 1
            self._stats.requests_finished[reason] = self._stats.requests_finished.get(reason, 0) + 1
        h.emit(Finish(
            reason, len(seq.prompt), n_gen, queued_s=d.get("admitted", now) - h.submitted,
            ttft_s=d.get("first", now) - h.submitted, total_s=now - h.submitted, error=error,
        ))  # fmt: skip


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


__all__ = ["BatchRunner"]
