"""The sampling chain: logits of one position -> the next token.

Order as llama.cpp's default chain (common/sampling.cpp): logit bias, penalties, top-k, top-p, min-p,
temperature, then a draw from the softmax with the sequence's own seeded generator. Temperature <= 0 is
greedy: the argmax after bias and penalties. top-p and min-p see the probabilities before temperature,
as in llama.cpp.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgeInferError


class SamplingError(EdgeInferError, ValueError):
    """A sampling parameter out of its range."""


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # penalties look this far back (-1: the whole context, 0: off)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    def validate(self, n_vocab: int | None = None) -> "SamplingParams":
        def check(ok: bool, name: str, rule: str):
            if not ok:
                raise SamplingError(f"{name} = {getattr(self, name)!r} is out of range: {rule}.")

        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SamplingError(f"{name} must be a finite number, got {value!r}.")
        for name in ("top_k", "repeat_last_n"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise SamplingError(f"{name} must be an integer, got {getattr(self, name)!r}.")
        check(self.temperature >= 0, "temperature", "it must be >= 0 (0 is greedy)")
        check(0 < self.top_p <= 1, "top_p", "it must be in (0, 1]")
        check(0 <= self.min_p <= 1, "min_p", "it must be in [0, 1]")
        check(self.repeat_penalty > 0, "repeat_penalty", "it must be > 0 (1 is off)")
        check(self.repeat_last_n >= -1, "repeat_last_n", "it must be >= -1")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty", "it must be in [-2, 2]")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "it must be in [-2, 2]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise SamplingError(f"seed must be a non-negative integer or None, got {self.seed!r}.")
        for tok, bias in self.logit_bias.items():
            if not isinstance(tok, (int, np.integer)) or (n_vocab is not None and not 0 <= tok < n_vocab):
                raise SamplingError(f"logit_bias names token {tok!r}, not a token id of this vocabulary.")
            if not isinstance(bias, (int, float)) or math.isnan(bias):
                raise SamplingError(f"logit_bias for token {tok} must be a number, got {bias!r}.")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Sampler:
    """One sequence's sampler: parameters, random generator and the penalty window."""

    def __init__(self, params: SamplingParams, n_vocab: int, history: list[int] | None = None):
        self.params = params.validate(n_vocab)
        self.n_vocab = n_vocab
        self.rng = np.random.default_rng(params.seed)
        maxlen = None if params.repeat_last_n < 0 else params.repeat_last_n
        self.window: deque[int] = deque(maxlen=maxlen)
        self.counts: Counter[int] = Counter()
        for tok in history or []:
            self.accept(tok)

    def accept(self, token: int) -> None:
        """Record a token of the sequence (prompt or generated) for the penalties."""
        if self.params.repeat_last_n == 0:
            return
        if self.window.maxlen is not None and len(self.window) == self.window.maxlen:
            old = self.window[0]
            self.counts[old] -= 1
            if self.counts[old] == 0:
                del self.counts[old]
        self.window.append(int(token))
        self.counts[int(token)] += 1

    @property
    def adjusts(self) -> bool:
        """Whether bias or penalties change the logits at all (apply_penalties is a plain copy if not)."""
        p = self.params
        penalize = p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        return bool(p.logit_bias) or (penalize and bool(self.counts))

    def apply_penalties(self, logits: np.ndarray) -> np.ndarray:
        """Bias and penalties on a copy of the logits (llama_sampler_penalties_apply)."""
        p = self.params
        out = np.array(logits, dtype=np.float32, copy=True)
        n = out.shape[-1]
        for tok, bias in p.logit_bias.items():
            if 0 <= tok < n:  # a vocabulary may name more ids than the model has logits (no row: no bias)
                out[tok] += bias
        penalize = p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if penalize and self.counts:
            toks = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
            cnt = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
            keep = (toks >= 0) & (toks < n)
            toks, cnt = toks[keep], cnt[keep]
            vals = out[toks]
            vals = np.where(vals <= 0, vals * p.repeat_penalty, vals / p.repeat_penalty)
            vals -= cnt * p.frequency_penalty + p.presence_penalty
            out[toks] = vals
        return out

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, probabilities) left after top-k, top-p, min-p and temperature, most likely first."""
        p = self.params
        scores = self.apply_penalties(logits)
        ids = np.arange(scores.shape[0])
        if 0 < p.top_k < scores.shape[0]:
            ids = np.argpartition(-scores, p.top_k - 1)[: p.top_k]
        ids = ids[np.argsort(-scores[ids], kind="stable")]
        vals = scores[ids].astype(np.float64)
        if p.top_p < 1.0:
            probs = _softmax(vals)
            cum = np.cumsum(probs)
            keep = int(np.searchsorted(cum, p.top_p) + 1)  # smallest prefix reaching top_p
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0 and len(ids) > 1:
            keep = vals >= vals[0] + math.log(p.min_p)
            ids, vals = ids[keep], vals[keep]
        if p.greedy:
            return ids[:1], np.ones(1)
        return ids, _softmax(vals / p.temperature)

    def sample(self, logits: np.ndarray) -> int:
        """The next token; call `accept` with it afterwards (generation loops do)."""
        if self.params.greedy:
            return int(np.argmax(self.apply_penalties(logits)))
        ids, probs = self.candidates(logits)
        return int(ids[_draw(self.rng, probs)])

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probability of every token after the whole chain (bias, penalties, top-k, top-p, min-p,
        temperature): float64 (len(logits),), the distribution `sample` draws from. Greedy: one-hot at
        the token `sample` returns. (Speculative decoding's rejection rule compares these.)"""
        out = np.zeros(np.shape(logits)[-1], np.float64)
        if self.params.greedy:
            out[int(np.argmax(self.apply_penalties(logits)))] = 1.0
            return out
        ids, probs = self.candidates(logits)
        out[ids] = probs
        return out

    def draw(self, probs: np.ndarray) -> int:
        """A token drawn from a distribution over the whole vocabulary (any non-negative weights,
        normalized here) with this sequence's generator."""
        ids = np.flatnonzero(probs > 0)
        if ids.size == 0:
            raise SamplingError("draw() needs a distribution with some positive weight.")
        return int(ids[_draw(self.rng, np.asarray(probs, np.float64)[ids])])

    def fork(self, rng: np.random.Generator | None = None) -> "Sampler":
        """A copy of this sampler's state (parameters, penalty window) with its own generator `rng`
        (default: a copy of this one's): what a draft model samples with, so its chain sees the same
        history; accepting tokens on the fork leaves this sampler unchanged."""
        other = Sampler.__new__(Sampler)
        other.params = self.params
        other.n_vocab = self.n_vocab
        if rng is None:
            rng = np.random.default_rng()
            rng.bit_generator.state = self.rng.bit_generator.state
        other.rng = rng
        other.window = deque(self.window, maxlen=self.window.maxlen)
        other.counts = Counter(self.counts)
        return other


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    """Index drawn from probs by inverse CDF on one uniform number (reproducible per seed)."""
    cum = np.cumsum(probs)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(probs) - 1))
