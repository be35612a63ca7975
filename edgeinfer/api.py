"""The library surface desktop apps embed: `edgeinfer.load(...)` and `LLM`.

    llm = edgeinfer.load("smollm2-135m")               # a path or a registry name
    llm.generate("The sky is", max_tokens=20, temperature=0)
    for piece in llm.chat([{"role": "user", "content": "Hi"}], stream=True): print(piece, end="")
"""

from __future__ import annotations

import os
from pathlib import Path

import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from .arch import build_model
from .engine.generate import GenerationStats, generate_stream
from .engine.constrain import grammar_from_request
from .engine.kv_cache import KVCache, kv_bytes_per_token
from .engine.sampling import SamplingParams
from .engine.speculative import MODES, CostModel, SpecConfig, check_vocab_compatible, make_speculator
from .errors import ContextFullError, EdgeInferError
from .gguf import GGUFFile
from .models import resolve_model
from .nn.kv import DEFAULT_KV_TYPE, kv_type as _kv_type
from .system import default_threads
from .tokenizer import Tokenizer
from .tokenizer.chat import ChatTemplate


SPECULATIVE_MODES = ("auto", *MODES, None)


class LLM:
    """A loaded model: its weights (memory-mapped), tokenizer, chat template and backend."""

    offload = None  # the GPU offload plan (kernels.cuda.offload.OffloadPlan) when load() was asked for one

    def __init__(self, path: Path, gguf: GGUFFile, tokenizer: Tokenizer, model, n_ctx: int, n_threads: int,
                 draft: "LLM | None" = None):
        self.path = path
        # speculative decoding: the draft model (None without one), the defaults of its settings, and
        # the costs measured on this machine (shared by all requests; engine/speculative.py)
        self.draft = draft
        self.spec_config = SpecConfig()
        self.spec_costs = CostModel()
        self.gguf = gguf
        self.tokenizer = tokenizer
        self.model = model
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.last_stats: GenerationStats | None = None
        m = gguf.metadata
        self.chat_template = ChatTemplate.from_metadata(
            m,
            token_texts=set(tokenizer.vocab.token_to_id),
            bos_token=tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else "",
            eos_token=tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else "",
        )

    @property
    def metadata(self) -> dict:
        return self.gguf.metadata

    @property
    def architecture(self) -> str | None:
        return self.gguf.architecture

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    @property
    def kv_type(self) -> str:
        """What the KV caches store K and V in: "f16", "q8_0" or "f32" (load's kv_type)."""
        return self.model.kv_type

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V (and convolution rows, LFM2) one token takes in the cache (all layers), in its
        kv_type."""
        return kv_bytes_per_token(self.model.kv_dims())

    @property
    def n_ctx_train(self) -> int | None:
        return self.gguf.arch_get("context_length")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, exactly as llama.cpp's `llama_tokenize` gives them.
        `add_special`: BOS/EOS as the file's flags say; `parse_special`: spell control tokens in text."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes a str, not {type(text).__name__}")
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """Text of token ids (invalid UTF-8 across a cut becomes U+FFFD)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special=skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` under the model's chat template."""
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def tokenize_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat prompt: the template's text, special tokens parsed, BOS added once."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        add_bos = not self.chat_template.starts_with_bos(text)
        return self.tokenizer.encode(text, add_special=add_bos, parse_special=True)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of a fresh sequence: float32 (len(ids), n_vocab)."""
        tokens = np.asarray(list(ids), dtype=np.int64)
        if tokens.size > self.n_ctx:
            raise ContextFullError(
                f"{tokens.size} tokens do not fit the context of {self.n_ctx}: load with a larger n_ctx."
            )
        cache = KVCache.for_model(self.model, max(int(tokens.size), 1))
        return self.model.forward(tokens, cache, all_logits=True)

    POOLINGS = ("mean", "last")

    def embed(self, inputs, pooling: str = "mean", normalize: bool = True, batch_tokens: int = 512) -> np.ndarray:
        """Embeddings: the last hidden state (after the output norm, llama.cpp's t_embd) pooled over each
        input, "mean" (every token's) or "last" (the last token's), L2-normalized unless normalize=False.

        inputs: a text (tokenized with BOS as the file says, special tokens not parsed, as llama.cpp's
        embedding example), a list of token ids, or a list of either. Returns float32 (n_embd,) for one
        input, (n_inputs, n_embd) for a list. Inputs run together: each pass holds up to `batch_tokens`
        rows from several inputs (each on its own cache), a long input spans passes. An input longer
        than the context is a ContextFullError, never truncated."""
        if pooling not in self.POOLINGS:
            raise EdgeInferError(f"pooling must be 'mean' or 'last', got {pooling!r}.")
        single = isinstance(inputs, str) or (isinstance(inputs, (list, tuple, np.ndarray)) and len(inputs) > 0
                                             and all(isinstance(t, (int, np.integer)) for t in inputs))  # fmt: skip
        items = [inputs] if single else list(inputs)
        ids = [self.tokenize(x) if isinstance(x, str) else [int(t) for t in x] for x in items]
        out = self.embed_tokens(ids, pooling, normalize, batch_tokens)
        return out[0] if single else out

    def embed_tokens(self, ids: Sequence[Sequence[int]], pooling: str = "mean", normalize: bool = True,
                     batch_tokens: int = 512) -> np.ndarray:  # fmt: skip
        """embed() for inputs already tokenized: float32 (len(ids), n_embd)."""
        job = self.embed_passes(ids, pooling, normalize, batch_tokens)
        while not job.step():
            pass
        return job.result()

    def embed_passes(self, ids: Sequence[Sequence[int]], pooling: str = "mean", normalize: bool = True,
                     batch_tokens: int = 512) -> "EmbedPasses":  # fmt: skip
        """embed_tokens() as a job of forward passes run one by one (EmbedPasses.step), so that a server can
        run other work between them. The inputs are checked here (EdgeInferError, ContextFullError)."""
        if pooling not in self.POOLINGS:
            raise EdgeInferError(f"pooling must be 'mean' or 'last', got {pooling!r}.")
        ids = [[int(x) for x in t] for t in ids]
        for i, t in enumerate(ids):
            if not t:
                raise EdgeInferError(f"Input {i} has no tokens; an embedding needs at least one.")
            if len(t) > self.n_ctx:
                raise ContextFullError(f"Input {i} is {len(t)} tokens long, more than the context of {self.n_ctx}: "
                                       "shorten it or load with a larger n_ctx.")  # fmt: skip
            bad = [x for x in t if not 0 <= x < self.n_vocab]
            if bad:
                raise EdgeInferError(f"Input {i} holds token id {bad[0]}, outside the vocabulary (0..{self.n_vocab - 1}).")
        return EmbedPasses(self.model, ids, pooling, normalize, max(1, int(batch_tokens)))

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        temperature: float = SamplingParams.temperature,  # the defaults live in SamplingParams only
        top_k: int = SamplingParams.top_k,
        top_p: float = SamplingParams.top_p,
        min_p: float = SamplingParams.min_p,
        repeat_penalty: float = SamplingParams.repeat_penalty,
        presence_penalty: float = SamplingParams.presence_penalty,
        frequency_penalty: float = SamplingParams.frequency_penalty,
        seed: int | None = SamplingParams.seed,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        speculative: str | None = "auto",
        logit_bias: dict[int, float] | None = None,
        draft_max: int | None = None,
        draft_p_min: float | None = None,
        response_format: dict | None = None,
        grammar: str | None = None,
        json_schema: dict | str | None = None,
        regex: str | None = None,
        logprobs: int | None = None,
    ) -> str | Iterator[str]:
        """The continuation of a prompt (text, tokenized with BOS and special tokens parsed, or ids).
        Returns the text, or an iterator of text pieces when stream=True. `last_stats` holds the
        timings and finish reason of the latest call.

        speculative: "auto" (the draft model when one was loaded, else plain decoding), "draft",
        "ngram" (prompt lookup: drafts copied from the prompt and the reply so far), or None (plain).
        With temperature 0 the text is the same with and without. draft_max: the most tokens drafted
        per pass (default llm.spec_config.draft_max, 16; the tuner picks the length up to it);
        draft_p_min: a draft model also stops drafting where its top probability falls under this
        (llama.cpp's rule, default 0.75; 0 keeps every draft).

        Constrained output (engine/constrain.py, llguidance; at most one of these): response_format as
        OpenAI's ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {...}}}),
        grammar (GBNF, or Lark), json_schema (a JSON Schema), regex. Every token obeys it; one that does
        not compile raises GrammarError (never unconstrained output). logprobs: None, or N >= 0: each
        generated token's log-probability (and the N likeliest beside it) in `last_stats.logprobs`."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        else:
            ids = [int(i) for i in prompt]
        return self._run(ids, locals(), stream)

    def chat(self, messages: list[dict], tools: list[dict] | None = None, tool_choice=None,
             parallel_tool_calls: bool = True, top_logprobs: int | None = None,
             reasoning_budget: int | None = None, chat_template_kwargs: dict | None = None, **kwargs):  # fmt: skip
        """The assistant's reply to `messages` (the model's chat template applied); same keywords as
        `generate`. Returns the text (or its pieces with stream=True) -- or, when tools, logprobs or a
        reasoning_budget are asked for, a `ChatResult(text, tool_calls, reasoning, logprobs,
        finish_reason)` (with stream=True: `ChatDelta`s, the last one carrying finish_reason).

        tools: OpenAI's [{"type": "function", "function": {"name", "description", "parameters"}}], shown
        to the model by its own template (edgeinfer/toolcalls.py); tool_choice: "auto" (default), "none",
        "required" or {"type": "function", "function": {"name": ...}} -- the last two enforced by a grammar,
        so the reply is a valid call whose arguments obey the function's parameters schema;
        parallel_tool_calls: several calls allowed in one reply. logprobs: True (or N) with top_logprobs=N:
        each token's log-probability and the N likeliest. reasoning_budget: the most tokens a <think>
        block may take before it is closed; reasoning goes to ChatResult.reasoning, never the text.
        chat_template_kwargs: more variables for the template, e.g. {"enable_thinking": True} (Qwen3,
        Gemma 4). A model whose replies come in channels (gpt-oss's harmony format) answers with its
        final channel's text; its analysis goes to ChatResult.reasoning when a ChatResult is returned."""
        lp = kwargs.pop("logprobs", None)
        plain = tools is None and tool_choice is None and lp in (None, False) and reasoning_budget is None
        if plain and chat_template_kwargs is None and not self._channel_replies():
            return self.generate(self.tokenize_chat(messages), **kwargs)
        from .toolcalls import plan_chat

        n_top = None
        if lp is not None and lp is not False:
            n_top = top_logprobs if lp is True else lp
            n_top = 0 if n_top is None else n_top
        base = grammar_from_request(kwargs.pop("response_format", None), kwargs.pop("grammar", None),
                                    kwargs.pop("json_schema", None), kwargs.pop("regex", None))  # fmt: skip
        plan = plan_chat(self.chat_template, self.tokenizer, messages, tools, tool_choice, parallel_tool_calls, base,
                         reasoning_budget, chat_template_kwargs)  # fmt: skip
        stream = kwargs.pop("stream", False)
        pieces = self.generate(plan.prompt_ids, stream=True, logprobs=n_top, grammar=plan.grammar, **kwargs)
        stats = self.last_stats
        parser = plan.parser()
        if plain:  # text in, text out, as the plain call: the reply's content
            if not stream:
                for piece in pieces:
                    parser.feed(piece)
                parser.finish()
                return parser.result(stats.finish_reason or "length").text
            return (d.content for d in self._chat_deltas(pieces, parser, stats) if d.content)
        if not stream:
            for piece in pieces:
                parser.feed(piece)
            parser.finish()
            return parser.result(stats.finish_reason or "length", stats.logprobs)
        return self._chat_deltas(pieces, parser, stats)

    def _channel_replies(self) -> bool:
        """Whether the model's replies are channels that must be parsed (gpt-oss's harmony format)."""
        if self.chat_template is None:
            return False
        from .toolcalls import detect_family

        return detect_family(self.chat_template) == "harmony"

    @staticmethod
    def _chat_deltas(pieces, parser, stats):
        sent = 0

        def logprobs():
            nonlocal sent
            if stats.logprobs is None:
                return None
            new = stats.logprobs[sent:]
            sent += len(new)
            return new

        pending: list = []
        for piece in pieces:
            deltas = parser.feed(piece)
            lp = logprobs()
            if lp:
                pending.extend(lp)
            for i, d in enumerate(deltas):
                if i == 0 and stats.logprobs is not None:
                    d.logprobs, pending = pending, []
                yield d
        from .toolcalls import ChatDelta

        for d in parser.finish():
            yield d
        last = ChatDelta(finish_reason=parser.result(stats.finish_reason or "length").finish_reason)
        if stats.logprobs is not None:
            last.logprobs = pending + (logprobs() or [])
        yield last

    def _run(self, ids: list[int], kw: dict, stream: bool):
        if not isinstance(kw["max_tokens"], int) or kw["max_tokens"] < 0:
            raise EdgeInferError(f"max_tokens must be a non-negative integer, got {kw['max_tokens']!r}.")
        if kw["speculative"] not in SPECULATIVE_MODES:
            raise EdgeInferError(f"speculative must be one of {SPECULATIVE_MODES}, got {kw['speculative']!r}.")
        mode = kw["speculative"]
        if mode == "auto":
            mode = "draft" if self.draft is not None else None
        if mode == "draft" and self.draft is None:
            raise EdgeInferError(
                "speculative='draft' needs a draft model: load with edgeinfer.load(model, draft=PATH_OR_NAME) "
                "(or use speculative='ngram', which needs none)."
            )
        cfg = self.spec_config
        if kw["draft_max"] is not None or kw["draft_p_min"] is not None:
            from dataclasses import replace

            cfg = replace(cfg, **{k: kw[k] for k in ("draft_max", "draft_p_min") if kw[k] is not None})
        cfg.validate()
        stop = kw["stop"]
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        params = SamplingParams(
            temperature=kw["temperature"], top_k=kw["top_k"], top_p=kw["top_p"], min_p=kw["min_p"],
            repeat_penalty=kw["repeat_penalty"], presence_penalty=kw["presence_penalty"],
            frequency_penalty=kw["frequency_penalty"], seed=kw["seed"], logit_bias=dict(kw["logit_bias"] or {}),
        ).validate(self.n_vocab)  # fmt: skip
        if kw["grammar"] is not None and not isinstance(kw["grammar"], str):  # compiled already (chat's tools)
            constraint = kw["grammar"]
        else:
            constraint = grammar_from_request(kw["response_format"], kw["grammar"], kw["json_schema"], kw["regex"])
        n_top = kw["logprobs"]
        if n_top is not None and (isinstance(n_top, bool) or not isinstance(n_top, int) or not 0 <= n_top <= 20):
            raise EdgeInferError(f"logprobs must be None or an integer in 0..20, got {n_top!r}.")
        stats = GenerationStats()
        self.last_stats = stats
        ratio = self._draft_ratio() if mode == "draft" else 0.0
        spec = make_speculator(mode, self.draft.model if self.draft is not None else None, self.n_ctx, cfg,
                               self.spec_costs, params, ratio)  # fmt: skip
        pieces = generate_stream(self.model, self.tokenizer, ids, self.n_ctx, params, kw["max_tokens"], stops, stats, spec,
                                 grammar=constraint, logprobs=n_top)  # fmt: skip
        pieces = self._warn_on_context_end(pieces, stats)
        return pieces if stream else "".join(pieces)

    def _draft_ratio(self) -> float:
        """Bytes of the draft's weights over the model's: what a draft step costs beside a decode step."""
        size = lambda llm: sum(t.n_bytes for t in llm.gguf.tensors.values())  # noqa: E731
        return size(self.draft) / max(size(self), 1)

    def _warn_on_context_end(self, pieces: Iterator[str], stats: GenerationStats) -> Iterator[str]:
        yield from pieces
        if stats.context_full:
            warnings.warn(
                f"Generation stopped at the end of the {self.n_ctx}-token context; load with a larger n_ctx "
                "for longer replies.",
                stacklevel=3,
            )

    def __repr__(self) -> str:
        draft = f", draft={str(self.draft.path)!r}" if self.draft is not None else ""
        return f"LLM({str(self.path)!r}, arch={self.architecture!r}, n_ctx={self.n_ctx}, kv_type={self.kv_type!r}{draft})"


class EmbedPasses:
    """An embedding job (LLM.embed_passes): each step() is one forward pass over up to `batch_tokens` rows
    of the inputs not yet done (several inputs side by side, each on its own cache; a long input spans
    passes), without the output head; result() pools and normalizes once every input is done."""

    def __init__(self, model, ids: list[list[int]], pooling: str, normalize: bool, batch_tokens: int):
        self.model, self.ids, self.pooling, self.normalize, self.budget = model, ids, pooling, normalize, batch_tokens
        self.acc = np.zeros((len(ids), model.config.n_embd), dtype=np.float64)
        self.caches: dict[int, KVCache] = {}
        self.done = [0] * len(ids)
        self.pending = list(range(len(ids)))
        self.n_tokens = sum(len(t) for t in ids)
        self.closed = False

    def step(self) -> bool:
        """One forward pass; True when every input is done (then result())."""
        from .nn import ForwardBatch

        if self.closed:
            raise EdgeInferError("EmbedPasses.step(): the job was closed.")
        if not self.pending:
            return True
        ids, done = self.ids, self.done
        take, left = [], self.budget
        for i in self.pending:
            if left <= 0:
                break
            k = min(len(ids[i]) - done[i], left)
            take.append((i, k))
            left -= k
        try:
            toks, cs = [], []
            for i, k in take:
                if i not in self.caches:
                    self.caches[i] = KVCache.for_model(self.model, len(ids[i]))
                toks.append(np.asarray(ids[i][done[i] : done[i] + k], dtype=np.int32))
                cs.append(self.caches[i])
            rows = ["all" if self.pooling == "mean" else "last"] * len(take)
            hs = self.model.hidden_states(ForwardBatch.plan(toks, cs), rows)
        except BaseException:
            self.close()
            raise
        for (i, k), h in zip(take, hs):
            done[i] += k
            if self.pooling == "mean":
                self.acc[i] += h.sum(axis=0, dtype=np.float64)
            elif done[i] == len(ids[i]):
                self.acc[i] = h[-1]
            if done[i] == len(ids[i]):
                self.caches.pop(i).release()
        self.pending = [i for i in self.pending if done[i] < len(ids[i])]
        return not self.pending

    def result(self) -> np.ndarray:
        """float32 (n_inputs, n_embd): pooled (and L2-normalized unless normalize=False)."""
        if self.pending or self.closed:
            raise EdgeInferError("EmbedPasses.result(): the job has passes left (call step() until it returns True).")
        acc = self.acc.copy()
        if self.pooling == "mean":
            acc /= np.array([len(t) for t in self.ids], dtype=np.float64)[:, None]
        if self.normalize:
            norms = np.linalg.norm(acc, axis=1, keepdims=True)
            acc /= np.where(norms > 0, norms, 1.0)
        return acc.astype(np.float32)

    def close(self) -> None:
        """Give the caches of unfinished inputs back (a job abandoned midway)."""
        for c in self.caches.values():
            c.release()
        self.caches.clear()
        self.closed = True


def load(
    model: str | os.PathLike,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    draft: str | os.PathLike | None = None,
    n_gpu_layers: int | None = None,
    progress: bool = True,
    backend="auto",
    kv_type: str = DEFAULT_KV_TYPE,
) -> LLM:
    """Load a GGUF file or a registry name (fetched on first use) and return an `LLM`.

    backend: "auto" (the native C kernels where they were built, else Numba), "native", "numba",
    "reference" (slow float32 twin, for tests), or a backend object. draft: a smaller model with the
    same vocabulary (a path or a name) for speculative decoding; it runs on the same backend and
    threads (an EdgeInferError names what differs when the vocabularies do).
    n_gpu_layers: layers 0..N-1 on an NVIDIA GPU (CUDA, built on first use), the rest on `backend`; -1:
    as many as fit in the GPU's free memory (the output head too when every layer fits), or none, with a
    warning, where CUDA is unavailable; an explicit N > 0 without CUDA is an EdgeInferError saying why;
    None (the default): $EDGEINFER_N_GPU_LAYERS when set, else 0. The draft model gets the same setting.
    `llm.offload` describes the split.
    kv_type: what the KV cache stores K and V in: "f16" (default, as llama.cpp: half the memory of
    float32), "q8_0" (ggml's 8-bit blocks: about a quarter; heads of a multiple of 32 values), or "f32"
    (exact, twice f16's memory). Each K/V row is rounded once, when written; the draft model's cache too."""
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise EdgeInferError(f"n_ctx must be a positive integer, got {n_ctx!r}.")
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads <= 0):
        raise EdgeInferError(f"n_threads must be a positive integer or None, got {n_threads!r}.")
    kv_type = _kv_type(kv_type).name  # a bad name fails before the (slow) load
    if n_gpu_layers != 0:
        from .kernels.cuda.offload import default_n_gpu_layers

        n_gpu_layers = default_n_gpu_layers(n_gpu_layers)  # None: $EDGEINFER_N_GPU_LAYERS, else 0
    path = resolve_model(model, progress=progress)
    gguf = GGUFFile(path)
    tokenizer = Tokenizer.from_gguf(gguf)
    n_threads = n_threads or default_threads()
    if backend is None or isinstance(backend, str):
        from .kernels import get_backend

        try:
            backend = get_backend(backend or "auto", n_threads=n_threads)
        except (ValueError, EdgeInferError) as e:
            raise EdgeInferError(str(e)) from None
    plan = None
    if n_gpu_layers:
        from .arch import load_config
        from .kernels.cuda.offload import plan_offload

        load_config(gguf)  # the file's hyper-parameters checked before the plan reads them
        plan = plan_offload(gguf, backend, n_gpu_layers)
        if plan.device is not None and (plan.n_gpu_layers or plan.head_on_device):
            from .energy import note_gpu_in_use

            note_gpu_in_use(f"cuda:{getattr(plan.device, 'device', 0)}")  # meters count the GPU board too
    model = build_model(gguf, backend, layer_backend=plan.layer_backend if plan and plan.device else None)
    model.set_kv_type(kv_type)
    draft_llm = None
    if draft is not None:
        draft_path = resolve_model(draft, progress=progress)
        draft_gguf = GGUFFile(draft_path)
        draft_tok = Tokenizer.from_gguf(draft_gguf)
        draft_plan = None
        if plan is not None and plan.device is not None:
            draft_plan = plan_offload(draft_gguf, backend, n_gpu_layers, device=plan.device, used_bytes=plan.device_bytes)
        draft_model = build_model(draft_gguf, backend, layer_backend=draft_plan.layer_backend if draft_plan else None)
        check_vocab_compatible(tokenizer, draft_tok, model, draft_model)
        draft_model.set_kv_type(kv_type)
        draft_llm = LLM(draft_path, draft_gguf, draft_tok, draft_model, n_ctx=n_ctx, n_threads=n_threads)
        draft_llm.offload = draft_plan
    llm = LLM(path, gguf, tokenizer, model, n_ctx=n_ctx, n_threads=n_threads, draft=draft_llm)
    llm.offload = plan
    return llm
