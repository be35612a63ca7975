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
from concurrent.futures import Future

from ..errors import PromptTooLongError
from .core import Engine, Request, Sequence as Seq_
from .kv_cache import BlockPool, KVCache
from .runner import Finish, Handle, SerialRunner
from .scheduler import Scheduler, SeqState
from .spec_policy import CostModel
from .speculative import make_speculator

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
        self._spec_costs = CostModel()  # this runner's pass costs (a batched pass is not a lone one)
        self.engine = Engine(llm.model, llm.tokenizer, self.n_ctx, on_end=self._ended)
        self._jobs: list[tuple] = []  # (fn, Future): work run on the worker between steps (embeddings)

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

    def run_between_steps(self, fn) -> Future:
        """Run fn() on the worker thread between two steps (the model is never run by two threads at
        once); its result or exception lands in the returned Future. The server's embeddings use it."""
        fut: Future = Future()
        with self._cv:
            if self._stopping or self._thread is None:
                fut.set_exception(RuntimeError("the runner is stopped"))
                return fut
            self._jobs.append((fn, fut))
            self._cv.notify()
        return fut

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
                while (not self._incoming and not self._jobs and not self.sched.active and not self.sched.waiting
                       and not self._stopping):  # fmt: skip
                    self._cv.wait()
                jobs, self._jobs = self._jobs, []
                if self._stopping:
                    for _, fut in jobs:
                        if not fut.cancelled():
                            fut.set_exception(RuntimeError("the runner is stopped"))
                    for h in self._incoming:
                        h.emit(Finish("cancelled", len(h.prompt_ids)))
                    self._incoming.clear()
                    break
                incoming, self._incoming = self._incoming, []
            for fn, fut in jobs:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # the job's caller gets it; the runner goes on
                        fut.set_exception(e)
            bs = self.pool.block_size
            for h in incoming:  # blocks for the prompt and the longest reply it may get, up to the context
                longest = min(self.n_ctx, len(h.prompt_ids) + max(1, h.max_tokens))
                reserve = min(-(-longest // bs), self.pool.n_blocks)
                self.sched.waiting.append(_Waiting(list(h.prompt_ids), reserve=reserve, client=h))
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
            if seq.client.cancelled.is_set():
                self._end(seq, "cancelled")
        for i, seq in enumerate(sched.admit()):
            with self._lock:
                self._stats.queue_depth -= 1
                self._stats.active += 1
            started = self._start(seq)
            sched.active[sched.active.index(seq)] = started
        work = sched.plan()
        if work:
            self._count_tokens(self.engine.step(work))

    def _speculator(self, h: Handle):
        """The request's Speculator (engine/speculative.py), or None for plain decoding."""
        draft = getattr(self.llm, "draft", None)
        mode = ("draft" if draft is not None else None) if h.speculative == "auto" else h.speculative
        if mode is None:
            return None
        ratio = self.llm._draft_ratio() if mode == "draft" else 0.0
        return make_speculator(mode, draft.model if draft is not None else None, self.n_ctx,
                               getattr(self.llm, "spec_config", None), self._spec_costs, h.params, ratio)  # fmt: skip

    def _start(self, waiting: "_Waiting") -> Seq_:
        """A sequence for an admitted request: its cache (holding the longest known prefix of its
        prompt), sampler, reply and speculator."""
        h: Handle = waiting.client
        prompt = waiting.prompt
        limit = len(prompt) - 1  # at least one token is computed: its logits choose the first token
        best_n, best_src = 0, None
        sources = [(tokens, c.n_past, c) for tokens, c in self._kept]
        sources += [(o.prompt, o.n_prefilled, o.cache) for o in self.sched.active if isinstance(o, Seq_)]
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
        self.prefix_tokens_reused += cache.n_past
        request = Request(prompt, h.params, h.max_tokens, h.stop, h.speculative, h.grammar, h.logprobs)
        seq = self.engine.sequence(
            request, cache, self._speculator(h), limit=min(self.n_ctx, waiting.reserve * self.pool.block_size),
            emit=h.emit, reserve=waiting.reserve, client=h,
        )  # fmt: skip
        seq.t_admitted = time.perf_counter()
        h.live_logprobs = seq.logprobs  # read by the server's stream, chunk by chunk
        return seq

    def _end(self, seq, reason: str, error: str | None = None) -> None:
        """End a sequence from outside a step (cancelled, failed): the engine's end rules, then _ended."""
        if isinstance(seq, Seq_):
            seq.error = error
            self.engine.end(seq, reason)
        else:  # still waiting: never started
            seq.finish, seq.error = reason, error
            self._ended(seq)

    def _ended(self, seq) -> None:
        """A sequence ended (in a step, or by _end): its slot and cache back, its Finish out."""
        h: Handle = seq.client
        was_active = seq in self.sched.active
        self.sched.remove(seq)
        reason = seq.finish
        started = isinstance(seq, Seq_)
        if started:
            cache = seq.cache
            if reason != "error":  # kept for the prefix of a later request
                self._kept.append((list(seq.prompt) + seq.generated[:-1], cache))
                if len(self._kept) > self.parallel:
                    self._kept.pop(0)[1].release()
            else:
                cache.release()
            if seq.speculator is not None:
                with self._lock:
                    self._stats_spec[0] += seq.speculator.n_drafted
                    self._stats_spec[1] += seq.speculator.n_accepted
        now = time.perf_counter()
        n_gen = len(seq.generated) if started else 0
        admitted = getattr(seq, "t_admitted", None) or now
        first = seq.t_first if started and seq.t_first is not None else now
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
            reason, len(seq.prompt), n_gen, queued_s=admitted - h.submitted,
            ttft_s=first - h.submitted, total_s=now - h.submitted, error=getattr(seq, "error", None),
            logprobs=seq.logprobs if started else None,
        ))  # fmt: skip


class _Waiting(SeqState):
    """A request in the queue, not yet started (no cache yet): the scheduler's view and its handle."""

    def __init__(self, prompt: list[int], reserve: int, client: Handle):
        super().__init__(prompt, reserve=reserve)
        self.client = client
        self.finish: str | None = None
        self.error: str | None = None


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


def make_runner(llm, parallel: int = 1, max_queue: int = 16, n_ctx: int | None = None, kv_cells: int | None = None):
    """The runner `edgeinfer serve` uses: continuous batching of up to `parallel` sequences over a paged
    KV cache of `kv_cells` cells (default n_ctx * parallel), with prompt-prefix reuse and chunked prefill."""
    return BatchRunner(llm, parallel=parallel, max_queue=max_queue, n_ctx=n_ctx, kv_cells=kv_cells)


__all__ = ["BatchRunner", "make_runner"]
