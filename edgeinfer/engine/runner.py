"""Runners: the engine side of a server. A runner owns the model, takes generation requests from any
thread, runs them on its own worker thread, and hands their text back piece by piece.

    runner = SerialRunner(llm, max_queue=16)          # or BatchRunner (continuous batching)
    runner.start()
    handle = runner.submit(prompt_ids, SamplingParams(temperature=0), max_tokens=64, stop=["\\n\\n"])
    for event in handle.events_sync():                # or `async for event in handle.events()`
        if isinstance(event, Finish): ...             # always the last event
        else: print(event, end="")                    # a str: the next piece of text
    handle.cancel()                                   # stop at the next step (a client went away)
    runner.stats()                                    # counters for /metrics
    runner.stop()

submit() raises QueueFullError when `max_queue` requests already wait, and PromptTooLongError when the
prompt cannot fit the context with room for one generated token (never a silent truncation).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import EdgeInferError, InvalidPromptError, PromptTooLongError, QueueFullError
from .core import check_prompt
from .generate import GenerationStats, generate_stream
from .sampling import SamplingParams
from .spec_policy import MODES


@dataclass
class Finish:
    """The last event of a request."""

    reason: str  # "stop" (EOS, EOT or a stop string), "length" (max_tokens or the context's end),
    #              "cancelled", "error"
    n_prompt: int = 0
    n_generated: int = 0
    queued_s: float = 0.0  # from submit() to the start of its prefill
    ttft_s: float = 0.0  # from submit() to its first generated token
    total_s: float = 0.0  # from submit() to the end
    error: str | None = None
    logprobs: list | None = None  # engine.core.TokenLogprob of each generated token, when asked for


_ids = itertools.count(1)


class Handle:
    """One request's stream of events: str pieces of text, then one Finish."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, max_tokens: int, stop: Sequence[str],
                 loop: asyncio.AbstractEventLoop | None, speculative: str | None = None, grammar=None,
                 logprobs: int | None = None):  # fmt: skip
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.stop = list(stop)
        self.speculative = speculative  # "auto", "draft", "ngram" or None (BatchRunner)
        self.grammar = grammar  # engine.constrain.Grammar every token obeys, or None
        self.logprobs = logprobs  # None, or the top-n to report beside each token's log-probability
        self.live_logprobs: list | None = None  # the TokenLogprobs so far (the runner's list, appended before each piece)
        self.submitted = time.perf_counter()
        self.cancelled = threading.Event()
        self.finished = False
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._loop = loop
        self._wake = asyncio.Event() if loop is not None else None

    def cancel(self) -> None:
        """Stop generating at the next step; the stream ends with Finish("cancelled")."""
        self.cancelled.set()

    # -- the runner's side
    def emit(self, event: str | Finish) -> None:
        if self.finished:
            return
        if isinstance(event, Finish):
            self.finished = True
        self._q.put(event)
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed: nobody listens any more
                self.cancel()

    # -- the consumer's side
    def events_sync(self, timeout: float | None = None) -> Iterator[str | Finish]:
        while True:
            event = self._q.get(timeout=timeout)
            yield event
            if isinstance(event, Finish):
                return

    async def events(self) -> AsyncIterator[str | Finish]:
        """Text pieces, then the Finish. Pieces that arrived while the consumer was busy come joined
        as one (the same text in fewer, larger pieces: a busy server sends fewer chunks)."""
        if self._wake is None:
            raise RuntimeError("submit(..., loop=asyncio.get_running_loop()) to read events asynchronously")
        held: Finish | None = None
        while True:
            try:
                event = self._q.get_nowait()
            except queue.Empty:
                self._wake.clear()
                if self._q.empty():
                    await self._wake.wait()
                continue
            if isinstance(event, str):
                parts = [event]
                while True:
                    try:
                        more = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, str):
                        parts.append(more)
                    else:
                        held = more
                        break
                yield "".join(parts)
                if held is None:
                    continue
                event = held
            yield event
            if isinstance(event, Finish):
                return


@dataclass
class RunnerStats:
    """Counters since start, as /metrics shows them."""

    requests_total: int = 0
    requests_finished: dict[str, int] = field(default_factory=dict)  # by finish reason
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0
    queue_depth: int = 0
    active: int = 0
    started: float = field(default_factory=time.time)


class SerialRunner:
    """One request at a time, in submission order: the simplest runner (and the yardstick for batching).
    Each request gets its own KV cache and sampler (its own seed)."""

    def __init__(self, llm, max_queue: int = 16, n_ctx: int | None = None):
        self.llm = llm
        self.n_ctx = int(n_ctx or llm.n_ctx)
        self.max_queue = max_queue
        self._queue: queue.Queue[Handle | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats = RunnerStats()
        self._recent: list[tuple[float, int]] = []  # (time, tokens) of recent steps, for tokens/s
        self._mean_request_s = 0.0  # moving mean of finished requests' time from submit to end

    # -- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgeinfer-runner", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    # -- requests
    def _queue_full(self) -> QueueFullError:
        """The error for a full queue, with an estimate of the wait: the requests ahead times the recent
        mean request time, over the sequences that run at once (1 s to 60 s)."""
        depth = self._stats.queue_depth
        mean = self._mean_request_s or 1.0
        wait = depth * mean / max(1, getattr(self, "parallel", 1))
        return QueueFullError(
            f"{depth} requests are already waiting; try again in about {max(1, round(wait))} s.",
            retry_after_s=min(60.0, max(1.0, wait)),
        )

    def check_prompt(self, prompt_ids: Sequence[int]) -> None:
        check_prompt(prompt_ids, self.llm.n_vocab, self.n_ctx, hint="start the server with a larger --ctx-size")

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, max_tokens: int, stop: Sequence[str] = (),
               loop: asyncio.AbstractEventLoop | None = None, speculative: str | None = None, grammar=None,
               logprobs: int | None = None) -> Handle:  # fmt: skip
        """Queue a request. speculative: "auto" (the draft model when the runner has one), "draft",
        "ngram" or None; only the batched runner speculates (SerialRunner decodes plainly). grammar:
        engine.constrain.Grammar the reply obeys; logprobs: None, or the top-n beside each token's."""
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_prompt(prompt_ids)
        params.validate(self.llm.n_vocab)
        self.check_speculative(speculative)
        handle = Handle(prompt_ids, params, max_tokens, stop, loop, speculative, grammar, logprobs)
        with self._lock:
            if self._stats.queue_depth >= self.max_queue:
                raise self._queue_full()
            self._stats.queue_depth += 1
            self._stats.requests_total += 1
            self._enqueue(handle)
        return handle

    def check_speculative(self, mode: str | None) -> None:
        if mode not in ("auto", *MODES, None):
            raise EdgeInferError(f"speculative must be 'auto', 'draft', 'ngram' or None, got {mode!r}.")
        if mode == "draft" and getattr(self.llm, "draft", None) is None:
            raise EdgeInferError("speculative 'draft' needs a draft model: start the server with --draft MODEL.")

    def _enqueue(self, handle: Handle) -> None:
        """Hand an accepted request to the worker (called with the lock held)."""
        self._queue.put(handle)

    def stats(self) -> dict:
        with self._lock:
            s = self._stats
            now = time.perf_counter()
            self._recent = [(t, n) for t, n in self._recent if now - t <= 10.0]
            window = max(1e-9, min(10.0, now - self._recent[0][0])) if self._recent else 0.0
            rate = sum(n for _, n in self._recent) / window if self._recent and window > 0 else 0.0
            return {
                "requests_total": s.requests_total,
                "requests_finished": dict(s.requests_finished),
                "prompt_tokens_total": s.prompt_tokens_total,
                "generated_tokens_total": s.generated_tokens_total,
                "queue_depth": s.queue_depth,
                "active": s.active,
                "tokens_per_second": rate,  # generated tokens, over the last 10 s
                "uptime_s": time.time() - s.started,
            }

    def _count_tokens(self, n: int) -> None:
        with self._lock:
            self._stats.generated_tokens_total += n
            self._recent.append((time.perf_counter(), n))

    def _finish(self, h: Handle, f: Finish) -> None:
        with self._lock:
            self._mean_request_s = f.total_s if not self._mean_request_s else 0.8 * self._mean_request_s + 0.2 * f.total_s
            self._stats.requests_finished[f.reason] = self._stats.requests_finished.get(f.reason, 0) + 1
            self._stats.active -= 1
        h.emit(f)

    # -- the worker
    def _run(self) -> None:
        while True:
            h = self._queue.get()
            if h is None:
                return
            with self._lock:
                self._stats.queue_depth -= 1
                self._stats.active += 1
            start = time.perf_counter()
            stats = GenerationStats()
            first = None
            reason = "error"
            error = None
            try:
                if h.cancelled.is_set():
                    reason = "cancelled"
                else:
                    pieces = generate_stream(self.llm.model, self.llm.tokenizer, h.prompt_ids, self.n_ctx, h.params,
                                             h.max_tokens, h.stop, stats, grammar=h.grammar,
                                             logprobs=h.logprobs)  # fmt: skip
                    seen = 0
                    reason = None
                    for piece in pieces:
                        if first is None:
                            first = time.perf_counter()
                            h.live_logprobs = stats.logprobs
                        self._count_tokens(stats.n_generated - seen)
                        seen = stats.n_generated
                        h.emit(piece)
                        if h.cancelled.is_set():
                            reason = "cancelled"
                            break
                    self._count_tokens(stats.n_generated - seen)
                    if reason is None:
                        reason = stats.finish_reason or "length"
            except Exception as e:  # one bad request never takes the runner down
                reason, error = "error", f"{type(e).__name__}: {e}"
            end = time.perf_counter()
            with self._lock:
                self._stats.prompt_tokens_total += len(h.prompt_ids)
            self._finish(h, Finish(
                reason, len(h.prompt_ids), stats.n_generated, queued_s=start - h.submitted,
                ttft_s=((first or end) - h.submitted), total_s=end - h.submitted, error=error,
                logprobs=stats.logprobs,
            ))  # fmt: skip


__all__ = ["Finish", "Handle", "InvalidPromptError", "PromptTooLongError", "QueueFullError", "RunnerStats", "SerialRunner"]
