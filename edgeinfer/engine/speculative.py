"""Speculative decoding: a cheap proposer guesses the next tokens, the model checks them all in one pass.

Decoding reads every weight once per token, so a pass over k+1 tokens costs far less than k+1 passes.
A proposer suggests drafts d1..dk after the tokens so far; the model runs [last token, d1..dk] in ONE
forward pass with every position's logits; position i's logits decide whether d(i+1) stands. The
first rejected draft is replaced by a token the model samples itself, and when every draft stands the
last position gives one more ("bonus") token: each pass yields 1..k+1 tokens. The KV caches roll back
past the first rejection (`KVCache.truncate`).

Proposers:
- `DraftProposer`: a smaller model with the same vocabulary (its own KV cache per sequence). It drafts
  up to k tokens, as far as the tuner finds another draft worth it (from the draft's confidence, its
  top probability); with `draft_p_min` set it also stops where its confidence falls under it
  (llama.cpp's `p_min` rule, 0.75 there; off by default here: see `Calibration`). Greedy requests:
  it drafts its argmax; sampled requests: it samples from its own distribution after the request's
  full sampling chain.
- `NgramProposer` (prompt lookup, no second model): the longest recent n-gram (n_max down to n_min)
  ending the text so far is looked up earlier in the prompt and the reply, and what followed it is
  proposed. It pays on replies that quote their input (edits, code, summaries, "repeat after me").

Correctness (`Speculator.verify`):
- temperature 0: each position's token is exactly what plain decoding picks (argmax after bias and
  penalties, the penalty history advanced token by token), so the text is identical token for token,
  given that a pass of k+1 tokens computes every row as a pass of one token would. The kernels are
  batch-invariant (tests/test_matmul.py, tests/test_speculative.py check it on both backends).
- temperature > 0: the rejection rule that keeps the model's distribution exactly (Leviathan et al.
  2023, Chen et al. 2023): accept draft x with probability min(1, p(x)/q(x)), else sample from
  normalize(max(0, p - q)); p and q are the full sampling chain's distributions on each side
  (`Sampler.distribution`). For n-gram drafts q is one-hot: accept with p(x), else sample p without x.
  The sampler's penalty history advances by exactly the tokens kept. Seeds make runs reproducible:
  the same seed gives the same text with the same speculation settings (the text differs from plain
  decoding's with that seed, its distribution does not). For that, a seeded sampled request tunes
  itself on nominal costs (`CostModel.nominal`) rather than on the clock, whose readings differ
  from run to run and would change the draft lengths, and so the random numbers each token uses.

Self-tuning (`Tuner`, `CostModel`, `Calibration`): costs per LLM, measured as it runs (seconds of a
pass of m tokens, m = 1 being a plain decode step, and of a draft step; low quantiles, so that other
programs' load does not sway the choices); how often a draft model's drafts stand at each confidence
(per LLM); the acceptance of n-gram drafts (per sequence). n-gram rounds draft the k that maximizes
E[tokens] / (t_lookup + t_pass(k+1)) with E[tokens] = (1 - a^(k+1)) / (1 - a); a draft model drafts
while one more draft raises the expected tokens per second. When recent rounds yield fewer tokens per
second than plain decoding (1 / t_pass(1)), speculation is off for the sequence, and probed again after
a cooldown that doubles while it keeps not paying.

For a batch runner the per-sequence object is `Speculator`:

    spec.prefill(prompt_ids)                        # optional, with the model's prefill (a draft's prompt)
    k = spec.draft_length(k_cap)                    # 0: a plain step this time
    drafts = spec.propose(context, k, sampler)      # context: every token so far, its last one not yet in the cache
    logits = <the model over [context[-1]] + drafts after the cache, all logits>   # (len(drafts)+1, n_vocab)
    tokens = spec.verify(sampler, logits, drafts)   # the accepted drafts + one more; sampler.accept() done
    cache.truncate(n_past_before + len(tokens))     # forget the rejected drafts
    spec.observe_pass(len(drafts) + 1, seconds)     # optional: teach the cost model (alone in a pass)
    spec.observe_round(len(tokens), spec.round_cost(len(drafts)))   # the on/off judgement

`Speculator.step` does exactly that for one sequence, and `generate_speculative` is the generation loop
of engine/generate.py with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeInferError
from .generate import GenerationStats, ReplyText, check_prompt
from .kv_cache import KVCache
from .sampling import Sampler, SamplingParams

MODES = ("draft", "ngram")


@dataclass
class SpecConfig:
    """Speculation settings. draft_max: the most tokens drafted per pass (the tuner picks up to this);
    draft_p_min: a draft model stops drafting when its top probability falls under this (None: the
    tuner alone decides, from the draft's calibration); ngram_min,
    ngram_max: the n-gram lengths looked up (longest first); adaptive: let the tuner choose the draft
    length and turn speculation off when it does not pay (False: always draft_max, for tests);
    reprobe: try again after a cooldown once off."""

    draft_max: int = 16
    draft_p_min: float | None = None
    ngram_min: int = 2
    ngram_max: int = 4
    adaptive: bool = True
    reprobe: bool = True

    def validate(self) -> "SpecConfig":
        for name in ("draft_max", "ngram_min", "ngram_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgeInferError(f"{name} must be a positive integer, got {v!r}.")
        if self.ngram_min > self.ngram_max:
            raise EdgeInferError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max}).")
        p = self.draft_p_min
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
            raise EdgeInferError(f"draft_p_min must be None or a number in [0, 1], got {p!r}.")
        return self


# -- vocabularies ------------------------------------------------------------------------------------------


def check_vocab_compatible(target_tok, draft_tok, target_model=None, draft_model=None) -> None:
    """Raise an EdgeInferError naming the difference unless the two tokenizers (and models' logits)
    share one vocabulary: the same tokenizer type, token count, every token's text, BOS and EOS ids."""
    tv, dv = target_tok.vocab, draft_tok.vocab
    what = "The draft model cannot draft for this model: "
    if tv.model != dv.model:
        raise EdgeInferError(f"{what}their tokenizers differ (model {tv.model!r}, draft {dv.model!r}).")
    if tv.n_vocab != dv.n_vocab:
        raise EdgeInferError(
            f"{what}their vocabularies differ in size (model {tv.n_vocab} tokens, draft {dv.n_vocab}). "
            "Use a draft of the same model family (the same tokenizer)."
        )
    if tv.tokens != dv.tokens:
        i = next(i for i, (a, b) in enumerate(zip(tv.tokens, dv.tokens)) if a != b)
        n_diff = sum(a != b for a, b in zip(tv.tokens, dv.tokens))
        raise EdgeInferError(
            f"{what}their vocabularies differ in {n_diff} token text(s), first at id {i} "
            f"(model {tv.tokens[i]!r}, draft {dv.tokens[i]!r}). Use a draft of the same model family."
        )
    for name in ("bos_id", "eos_id"):
        a, b = getattr(tv, name), getattr(dv, name)
        if a != b:
            raise EdgeInferError(f"{what}their {name.split('_')[0].upper()} tokens differ (model {a}, draft {b}).")
    if target_model is not None and draft_model is not None and int(target_model.n_vocab) != int(draft_model.n_vocab):
        raise EdgeInferError(
            f"{what}their output layers differ in size (model {target_model.n_vocab} logits, "
            f"draft {draft_model.n_vocab})."
        )


# -- proposers --------------------------------------------------------------------------------------------


class NgramProposer:
    """Prompt lookup: propose what followed the latest earlier occurrence of the text's last n tokens.

    An index maps every n-gram (n_min..n_max) to the end of its latest occurrence that has a token after
    it; it grows with the context (rebuilt when a context does not extend the last one)."""

    kind = "ngram"

    def __init__(self, n_min: int = 2, n_max: int = 4):
        self.n_min, self.n_max = n_min, n_max
        self.tokens: list[int] = []
        self.index: dict[int, dict[tuple, int]] = {n: {} for n in range(n_min, n_max + 1)}

    def _sync(self, context: Sequence[int]) -> None:
        m = len(self.tokens)
        if len(context) < m or list(context[:m]) != self.tokens:
            self.tokens, m = [], 0
            self.index = {n: {} for n in self.index}
        new = [int(t) for t in context[m:]]
        self.tokens.extend(new)
        toks = self.tokens
        # an n-gram ending at e (toks[e-n:e]) is indexed once toks[e] exists: e in [m, len-1]
        for n, table in self.index.items():
            for e in range(max(m, n), len(toks)):
                table[tuple(toks[e - n : e])] = e

    def propose(self, context: Sequence[int], k: int, sampler: Sampler | None = None) -> tuple[list[int], None]:
        """Up to k tokens that followed the longest matching n-gram, and None (the proposal is
        deterministic: its distribution is one-hot)."""
        if k <= 0 or len(context) < self.n_min + 1:
            return [], None
        self._sync(context)
        toks = self.tokens
        for n in range(min(self.n_max, len(toks) - 1), self.n_min - 1, -1):
            e = self.index[n].get(tuple(toks[-n:]))
            if e is not None:
                return toks[e : e + k], None
        return [], None


class DraftProposer:
    """A draft model drafting for one sequence: its own KV cache, synced to the context each round.

    How far it drafts is the tuner's call, position by position (`Tuner.include`, `Tuner.proceed`, from
    the draft's confidence); with a fixed `p_min` it also stops where its top probability falls under it
    (llama.cpp's rule)."""

    kind = "draft"

    def __init__(self, model, n_ctx: int, p_min: float | None = None, seed: int | None = None):
        self.model = model
        self.cache = KVCache.for_model(model, n_ctx)
        self.tokens: list[int] = []  # the tokens whose K/V the draft cache holds
        self.p_min = p_min
        self.rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EED])
        self.confidences: list[float] = []  # of the latest proposal's drafts
        self.step_seconds: list[tuple[int, float]] = []  # (tokens fed, seconds) of each draft step
        # (catch-ups over more than two tokens, after plain steps, are left out)
        self.catchup_seconds = 0.0

    def _sync(self, context: Sequence[int]) -> list[int]:
        """Roll the draft cache back to its longest prefix shared with context (leaving the last token
        out, whose logits are needed); returns the tokens to feed."""
        m = min(len(self.tokens), len(context) - 1)
        if self.tokens[:m] != list(context[:m]):
            m = next(i for i, (a, b) in enumerate(zip(self.tokens, context)) if a != b)
        if m < self.cache.n_past:
            self.cache.truncate(m)
            del self.tokens[m:]
        return [int(t) for t in context[m:]]

    def prefill(self, prompt: Sequence[int]) -> None:
        """Run the prompt through the draft (with the model's own prefill: it is prompt processing)."""
        feed = self._sync(list(prompt) + [0])
        if feed[:-1]:
            self.model.forward(np.asarray(feed[:-1], np.int32), self.cache, all_logits=False)
            self.tokens.extend(feed[:-1])

    def propose(self, context: Sequence[int], k: int, sampler: Sampler, tuner: "Tuner | None" = None):
        """Up to k drafts after context and, for a sampled request, the distribution each was drawn from."""
        self.confidences, self.step_seconds, self.catchup_seconds = [], [], 0.0
        if k <= 0:
            return [], None
        feed = self._sync(context)
        greedy = sampler.params.greedy
        chain = sampler.fork(self.rng)  # the draft's view of the sampling chain and its penalty history
        drafts: list[int] = []
        probs: list[np.ndarray] | None = None if greedy else []
        if tuner is not None:
            tuner.begin_round()
        for i in range(1, k + 1):
            start = time.perf_counter()
            n_fed = len(feed)
            logits = self.model.forward(np.asarray(feed, np.int32), self.cache, all_logits=False)[-1]
            self.tokens.extend(feed)
            scores = chain.apply_penalties(logits) if chain.adjusts else logits
            top = scores.max()
            confidence = 1.0 / float(np.exp(scores - top).sum(dtype=np.float64))  # top probability at T=1
            keep = self.p_min is None or confidence >= self.p_min
            keep = keep and (tuner is None or tuner.include(i, confidence))
            if keep:
                if greedy:
                    tok = int(np.argmax(scores))
                else:
                    p = chain.distribution(logits)
                    tok = chain.draw(p)
                    probs.append(p)
                chain.accept(tok)
                drafts.append(tok)
                self.confidences.append(confidence)
                feed = [tok]
            seconds = time.perf_counter() - start
            if n_fed <= 2:
                self.step_seconds.append((n_fed, seconds))
            else:
                self.catchup_seconds += seconds
            # the last draft is not fed to the draft model: if every draft stands, the next round feeds
            # it with the bonus token (two tokens in one step, cheaper than a step that may be wasted)
            if not keep or i == k or (tuner is not None and not tuner.proceed(i, confidence)):
                break
        return drafts, probs


# -- costs and tuning -------------------------------------------------------------------------------------


class Calibration:
    """How often a draft model's draft stands, by its confidence (top probability): decayed counts per
    band, shared by the requests of one LLM (a property of the model pair). A band with few
    observations leans on the overall rate (optimistic enough to get explored).

    Measured here (SmolLM2 F32 target, greedy): a Q8_0 draft's argmax agreed 86% of the time where its
    confidence was under 0.3 and 99-100% above 0.5; a Q4_0 draft's 38% under 0.3, 83% at 0.5-0.75, 99%
    above 0.9. Half of all positions had confidence under 0.75: a fixed p_min of 0.75 would give up
    most of what a good draft offers."""

    EDGES = np.array([0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97])
    DECAY = 0.99  # per observation in a band
    PRIOR_ALPHA, PRIOR_WEIGHT = 0.6, 2.0

    def __init__(self):
        n = len(self.EDGES) + 1
        self.accepted = np.zeros(n)
        self.seen = np.zeros(n)
        self.total_accepted = 0.0
        self.total_seen = 0.0

    def band(self, confidence: float) -> int:
        return int(np.searchsorted(self.EDGES, confidence, side="right"))

    @property
    def overall(self) -> float:
        return (self.total_accepted + self.PRIOR_ALPHA * self.PRIOR_WEIGHT) / (self.total_seen + self.PRIOR_WEIGHT)

    def estimate(self, confidence: float) -> float:
        b = self.band(confidence)
        lo = self.EDGES[b - 1] if b > 0 else 0.0
        hi = self.EDGES[b] if b < len(self.EDGES) else 1.0
        prior = max(0.5 * (lo + hi), self.overall)
        return float((self.accepted[b] + prior * 2.0) / (self.seen[b] + 2.0))

    def observe(self, confidence: float, accepted: bool) -> None:
        b = self.band(confidence)
        self.accepted[b] = self.DECAY * self.accepted[b] + float(accepted)
        self.seen[b] = self.DECAY * self.seen[b] + 1.0
        self.total_accepted = 0.998 * self.total_accepted + float(accepted)
        self.total_seen = 0.998 * self.total_seen + 1.0


class CostModel:
    """Seconds measured on this machine, shared by the requests of one LLM: a pass of m tokens with its
    verification (m = 1: a plain decode step), one draft step, one n-gram lookup; and the draft's
    calibration.

    Every figure tracks a low quantile of its readings (it follows a faster reading at once and a
    slower one only slowly): what the work costs on this machine when nothing else runs. Other programs'
    load slows every pass alike and would otherwise make the tuner's choices follow the noise; the
    choices compare costs, and the on/off judgement compares what a round yielded against these costs,
    so a busy moment changes neither.

    A pass length's cost is a straight line a + b (m - 1), fitted to every length measured (weighted by
    how often, up to 10), pulled towards that length's own figure as it is measured more often (the
    kernels' token tiles make some lengths cheaper than the line): one odd reading neither sticks to a
    length nor keeps the tuner from trying it again. Before two lengths are known the slope is a prior,
    0.3 x t(1) per extra token. A draft step that feeds two tokens (the last draft and the bonus token,
    after a pass that kept every draft) has its own figure."""

    PRIOR_SLOPE = 0.3
    DOWN, UP = 0.3, 0.03  # how far a reading below / above the figure moves it
    TRUST = 3.0  # readings of a length at which its own figure and the line weigh the same

    def __init__(self):
        self.passes: dict[int, float] = {}  # m -> moving average of its seconds
        self.counts: dict[int, int] = {}
        self.passes_at: dict[int, float] = {}  # time.monotonic() of each pass length's latest measurement
        self.steps: dict[int, float] = {}  # tokens fed (1 or 2) -> seconds of a draft step
        self.lookup: float = 0.0  # seconds of one n-gram lookup (a round, not per token)
        self.calibration = Calibration()
        self.cooldowns: dict[str, int] = {}  # kind -> the first cooldown of a new sequence (Tuner)
        self.frozen = False  # nominal costs that measurements do not change (see nominal())
        self._line: tuple[float, float] | None = None

    @property
    def draft_step(self) -> float | None:
        """Seconds of a draft step that feeds one token."""
        return self.steps.get(1)

    def step_cost(self, n_fed: int) -> float:
        one = self.steps.get(1, 0.0)
        return self.steps.get(n_fed, one * n_fed) if n_fed > 1 else one

    @classmethod
    def nominal(cls, draft_ratio: float = 0.0, max_pass: int = 257) -> "CostModel":
        """Costs in units of a plain decode step that no measurement changes, for a seeded sampled
        request: a pass of m tokens costs 1 + 0.3 (m - 1), a draft step `draft_ratio` (the draft's
        bytes of weights over the model's: decoding reads each once per token). The tuner's choices
        then depend on the request's own tokens only, so the seed gives the same text every run."""
        c = cls()
        c.passes = {1: 1.0}
        c.counts = {1: 1}
        c._line = (1.0, cls.PRIOR_SLOPE)
        c.steps = {1: float(draft_ratio), 2: 1.5 * float(draft_ratio)}
        c.frozen = True
        return c

    def _track(self, old: float | None, new: float) -> float:
        if old is None:
            return new
        return old + (self.DOWN if new < old else self.UP) * (new - old)

    def observe_pass(self, m: int, seconds: float) -> None:
        if not self.frozen:
            self.passes[m] = self._track(self.passes.get(m), seconds)
            self.counts[m] = self.counts.get(m, 0) + 1
            self.passes_at[m] = time.monotonic()
            self._line = None

    def observe_draft_step(self, seconds: float, n_fed: int = 1) -> None:
        if not self.frozen:
            self.steps[n_fed] = self._track(self.steps.get(n_fed), seconds)

    def observe_lookup(self, seconds: float) -> None:
        if not self.frozen:
            self.lookup = self._track(self.lookup or None, seconds)

    def age(self, m: int) -> float:
        """Seconds since a pass of m tokens was last measured (inf: never; 0 for nominal costs)."""
        if self.frozen:
            return 0.0
        return time.monotonic() - self.passes_at[m] if m in self.passes_at else math.inf

    def line(self) -> tuple[float, float] | None:
        """(t(1), seconds per extra token) of the fitted line; None before t(1) is measured."""
        if self._line is None and 1 in self.passes:
            ms = sorted(self.passes)
            if len(ms) == 1:
                self._line = (self.passes[1], self.PRIOR_SLOPE * self.passes[1])
            else:
                x = np.array(ms, np.float64) - 1.0
                y = np.array([self.passes[m] for m in ms])
                w = np.array([min(self.counts.get(m, 1), 10) for m in ms], np.float64)
                xm, ym = np.average(x, weights=w), np.average(y, weights=w)
                var = np.average((x - xm) ** 2, weights=w)
                b = max(float(np.average((x - xm) * (y - ym), weights=w) / var), 0.0) if var > 0 else 0.0
                self._line = (float(ym - b * xm), b)
        return self._line

    def t_pass(self, m: int) -> float | None:
        """Seconds of a pass of m tokens (with its verification); None before a plain step is measured."""
        line = self.line()
        if line is None:
            return None
        fit = max(line[0] + line[1] * (m - 1), 1e-9)
        n = self.counts.get(m, 0)
        if n == 0:
            return fit
        w = n / (n + self.TRUST)
        return w * self.passes[m] + (1.0 - w) * fit


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a pass with k drafts yields when each draft stands with probability alpha (independently):
    1 + alpha + ... + alpha^k."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class Tuner:
    """One sequence's draft length and on/off switch.

    - n-gram drafts: each stands with probability alpha (decayed counts of this sequence's rounds, a
      prior of 0.6); the pass drafts the k maximizing E[tokens](alpha, k) / (t_lookup + t_pass(k+1)).
    - draft-model drafts: decided position by position. Each draft step is taken only while it is
      expected to raise the pass's tokens per second (`proceed`: its chance to stand, all drafts before
      it too, estimated from the draft's calibration at the last draft's confidence, against a draft
      step and the pass's growth by one token); a draft it made is verified unless its own confidence
      says the pass's growth is not worth it (`include`).
    - on/off: the tokens recent speculative rounds yielded over what they cost (their draft steps and
      passes, by the cost model) against a plain decode step's 1 / t_pass(1). Below it, speculation is
      off for `cooldown` tokens, then a probe of a few rounds; the cooldown doubles (16 .. 512) while it
      keeps not paying. The first cooldown of a sequence is learned per LLM: it doubles with each
      judgement that speculation does not pay (up to 256) and halves with each that it does.
    """

    PRIOR_ALPHA = 0.6  # belief before any evidence, worth PRIOR_WEIGHT rounds
    PRIOR_WEIGHT = 2.0
    DECAY = 0.85  # per round: recent rounds weigh most
    RATE_DECAY = 0.8  # per round, for the measured rate
    COOLDOWN = 16
    MAX_COOLDOWN = 512
    MAX_START = 256  # the first cooldown of a sequence, learned per LLM (a draft's catch-up after a
    # cooldown costs about a tenth of the plain steps it skipped: where probes keep failing, fewer)
    K_START = 4  # the first pass of a cold cost model
    MIN_ROUNDS = 3  # measured rounds (of a request, or of a probe) before it may be judged not to pay
    REFRESH_S = 5.0  # a plain step when t_pass(1) is older than this: the machine's speed drifts

    def __init__(self, costs: CostModel, cfg: SpecConfig, kind: str):
        self.costs, self.cfg, self.kind = costs, cfg, kind
        self.successes = 0.0  # decayed counts of drafts accepted, and of rounds that ended in a rejection
        self.failures = 0.0
        self.rounds = 0
        self.rate_tokens = 0.0  # decayed sums over speculative rounds: tokens yielded, seconds spent
        self.rate_seconds = 0.0
        self.rate_rounds = 0
        self.off = False
        self.was_off = False
        self.cooldown = costs.cooldowns.get(kind, self.COOLDOWN)
        self.off_left = 0
        self.k_last = 0
        self._E = self._T = self._P = 0.0

    @property
    def alpha(self) -> float:
        a0, w = self.PRIOR_ALPHA, self.PRIOR_WEIGHT
        return (self.successes + a0 * w) / (self.successes + self.failures + w)

    def rate(self, k: int) -> float | None:
        """Expected tokens per second with k n-gram drafts (k = 0: plain decoding); None before t(1) is known."""
        t1 = self.costs.t_pass(1)
        if t1 is None:
            return None
        if k == 0:
            return 1.0 / t1
        return expected_tokens(self.alpha, k) / (self.costs.lookup + self.costs.t_pass(k + 1))

    def best_k(self, k_cap: int) -> int:
        ks = range(1, max(1, min(self.cfg.draft_max, k_cap)) + 1)
        return max(ks, key=lambda k: self.rate(k))

    def measured_rate(self) -> float | None:
        return self.rate_tokens / self.rate_seconds if self.rate_seconds > 0 else None

    def draft_length(self, k_cap: int) -> int:
        """The most drafts for the next pass (0: a plain step), at most k_cap."""
        if k_cap <= 0:
            return 0
        if not self.cfg.adaptive:
            return min(self.cfg.draft_max, k_cap)
        if self.costs.t_pass(1) is None or self.costs.age(1) > self.REFRESH_S:
            return 0  # measure a plain step (first, and now and then: what speculation must beat)
        if self.off:
            if self.off_left > 0 or not self.cfg.reprobe:
                self.off_left -= 1
                return 0
            self.off = False  # a probe: MIN_ROUNDS speculative rounds, then judged again
            self.rate_tokens *= 0.2
            self.rate_seconds *= 0.2
            self.rate_rounds = 0
            self.successes *= 0.25
            self.failures *= 0.25
        cap = min(self.cfg.draft_max, k_cap)
        if self.kind == "draft":
            k = cap  # include() and proceed() decide where to stop
        elif self.rounds == 0:
            k = min(self.K_START, cap)
        else:
            k = self.best_k(k_cap)
        self.k_last = k
        return k

    def begin_round(self) -> None:
        """A draft-model round starts: its first draft step is taken (the tuner chose k > 0)."""
        self._E, self._P = 1.0, 1.0  # expected tokens of the pass, chance that every draft so far stands
        t1, step = self.costs.t_pass(1), self.costs.draft_step
        self._T = (t1 or 0.0) + (step or 0.0)  # expected seconds of the round

    def _warm(self) -> bool:
        return self.costs.draft_step is not None and self.costs.t_pass(1) is not None

    def include(self, i: int, confidence: float) -> bool:
        """Whether draft i (1-based, already made, with this confidence) is worth verifying: the pass
        grows by one token."""
        if not self.cfg.adaptive or not self._warm():
            return True
        P = self._P * self.costs.calibration.estimate(confidence)
        E = self._E + P
        T = self._T + max(self.costs.t_pass(i + 1) - self.costs.t_pass(i), 0.0)
        if E * self._T < self._E * T:  # E / T < self._E / self._T: verifying it lowers the rate
            return False
        self._E, self._T, self._P = E, T, P
        return True

    def proceed(self, i: int, confidence: float) -> bool:
        """Whether to take draft step i + 1 after draft i (with this confidence): the next draft's chance
        is guessed from this one's confidence; its cost is a draft step and one more token in the pass."""
        if not self.cfg.adaptive:
            return True
        if not self._warm():
            return i < self.K_START  # cold: a short first pass, which measures the costs
        P = self._P * self.costs.calibration.estimate(confidence)
        E = self._E + P
        T = self._T + self.costs.draft_step + max(self.costs.t_pass(i + 2) - self.costs.t_pass(i + 1), 0.0)
        if E * self._T < self._E * T:
            return False
        self._T += self.costs.draft_step  # the step is taken; include() adds the pass's growth
        return True

    def observe(self, n_drafted: int, n_accepted: int) -> None:
        """Acceptance of a verified pass: n_drafted drafts, the first n_accepted of them kept."""
        if n_drafted <= 0:
            return
        self.rounds += 1
        d = self.DECAY
        self.successes = d * self.successes + n_accepted
        self.failures = d * self.failures + (1.0 if n_accepted < n_drafted else 0.0)

    def observe_round(self, n_tokens: int, seconds: float) -> None:
        """A speculative round (drafting included) yielded n_tokens in `seconds`: judge whether it pays."""
        d = self.RATE_DECAY
        self.rate_tokens = d * self.rate_tokens + n_tokens
        self.rate_seconds = d * self.rate_seconds + seconds
        self.rate_rounds += 1
        if not self.cfg.adaptive or self.rate_rounds < self.MIN_ROUNDS:
            return
        t1 = self.costs.t_pass(1)
        if t1 is None:
            return
        starts = self.costs.cooldowns  # per LLM: the first cooldown of the next sequences
        if self.measured_rate() < 1.0 / t1:
            self.off = self.was_off = True
            self.off_left = self.cooldown
            self.cooldown = min(2 * self.cooldown, self.MAX_COOLDOWN)
            starts[self.kind] = min(2 * starts.get(self.kind, self.COOLDOWN), self.MAX_START)
        else:
            self.cooldown = self.COOLDOWN
            starts[self.kind] = max(starts.get(self.kind, self.COOLDOWN) // 2, self.COOLDOWN)


# -- the per-sequence speculator ---------------------------------------------------------------------------


def accept_draft(rng: np.random.Generator, p: np.ndarray, q: np.ndarray | None, token: int) -> bool:
    """The rejection rule's test: keep `token` with probability min(1, p(token) / q(token)); q None:
    a deterministic proposal (one-hot q), kept with probability p(token)."""
    qx = 1.0 if q is None else float(q[token])
    px = float(p[token])
    if px <= 0.0:
        return False
    return rng.random() * qx < px


def residual(p: np.ndarray, q: np.ndarray | None, token: int) -> np.ndarray:
    """Where a rejected draft's replacement is drawn from: max(0, p - q) (unnormalized); q None: p
    without `token`. Falls back to p if rounding left nothing."""
    if q is None:
        r = p.copy()
        r[token] = 0.0
    else:
        r = np.maximum(p - q, 0.0)
    return r if r.sum() > 0.0 else p


class Speculator:
    """One sequence's speculation: a proposer, its tuner and counters (see the module docstring)."""

    def __init__(self, proposer, costs: CostModel, cfg: SpecConfig | None = None):
        self.proposer = proposer
        self.cfg = (cfg or SpecConfig()).validate()
        self.costs = costs
        self.tuner = Tuner(costs, self.cfg, proposer.kind)
        self.n_drafted = 0
        self.n_accepted = 0
        self.rounds = 0
        self.draft_seconds = 0.0  # time spent proposing (the draft model's steps, catch-ups, lookups)
        self._probs: list[np.ndarray] | None = None
        self._drafts: list[int] = []
        self._confidences: list[float] = []
        self._propose_s = 0.0
        self.last_propose_seconds = 0.0

    @property
    def mode(self) -> str:
        return self.proposer.kind

    @classmethod
    def ngram(cls, costs: CostModel, cfg: SpecConfig | None = None) -> "Speculator":
        cfg = (cfg or SpecConfig()).validate()
        return cls(NgramProposer(cfg.ngram_min, cfg.ngram_max), costs, cfg)

    @classmethod
    def draft(cls, draft_model, n_ctx: int, costs: CostModel, cfg: SpecConfig | None = None, seed: int | None = None) -> "Speculator":
        cfg = (cfg or SpecConfig()).validate()
        return cls(DraftProposer(draft_model, n_ctx, cfg.draft_p_min, seed), costs, cfg)

    def draft_length(self, k_cap: int) -> int:
        """The most drafts worth proposing for the next pass (0: make it a plain step)."""
        return self.tuner.draft_length(k_cap)

    def prefill(self, prompt: Sequence[int]) -> None:
        """The prompt's share of the proposer's work, done with the model's prefill (a draft model's
        prompt processing); optional: propose() catches up on whatever was not prefilled."""
        prefill = getattr(self.proposer, "prefill", None)
        if prefill is not None:
            prefill(prompt)

    def propose(self, context: Sequence[int], k: int, sampler: Sampler) -> list[int]:
        """Up to k drafts to follow `context` (every token so far; its last one is the one the next
        pass starts with, not yet in the model's cache). The sampler is only read (its chain, history)."""
        start = time.perf_counter()
        self._confidences = []
        if k <= 0:
            drafts, probs = [], None
        elif self.proposer.kind == "draft":
            drafts, probs = self.proposer.propose(context, k, sampler, self.tuner)
            self._confidences = list(self.proposer.confidences)
            for n_fed, s in self.proposer.step_seconds:
                self.costs.observe_draft_step(s, n_fed)
        else:
            drafts, probs = self.proposer.propose(context, k, sampler)
            self.costs.observe_lookup(time.perf_counter() - start)
        self._propose_s = time.perf_counter() - start
        self.draft_seconds += self._propose_s
        self.last_propose_seconds = self._propose_s
        self._drafts, self._probs = list(drafts), probs
        return list(drafts)

    def verify(self, sampler: Sampler, logits: np.ndarray, drafts: Sequence[int]) -> list[int]:
        """The tokens this pass yields: the drafts that stand, then the model's own next token (the
        replacement of the first rejected draft, or the bonus token after all of them). logits: the
        pass's rows (len(drafts) + 1, n_vocab). Calls sampler.accept() for exactly these tokens."""
        drafts = [int(d) for d in drafts]
        if len(logits) < len(drafts) + 1:
            raise EdgeInferError(f"verify() needs {len(drafts) + 1} rows of logits, got {len(logits)}.")
        mine = drafts == self._drafts
        probs = self._probs if mine else None
        if probs is None and not sampler.params.greedy and self.proposer.kind == "draft" and drafts:
            raise EdgeInferError("verify() got drafts that propose() did not make (their probabilities are unknown).")
        out: list[int] = []
        for i, d in enumerate(drafts):
            if sampler.params.greedy:
                tok = sampler.sample(logits[i])
                sampler.accept(tok)
                out.append(tok)
                if tok != d:
                    break
                continue
            p = sampler.distribution(logits[i])
            q = probs[i] if probs is not None else None
            if accept_draft(sampler.rng, p, q, d):
                sampler.accept(d)
                out.append(d)
                continue
            tok = sampler.draw(residual(p, q, d))
            sampler.accept(tok)
            out.append(tok)
            break
        else:
            tok = sampler.sample(logits[len(drafts)])
            sampler.accept(tok)
            out.append(tok)
        n_acc = len(out) - 1
        if drafts:
            self.rounds += 1
            self.n_drafted += len(drafts)
            self.n_accepted += n_acc
            self.tuner.observe(len(drafts), n_acc)
            if mine:
                calib = self.costs.calibration
                for i, c in enumerate(self._confidences[: n_acc + 1]):  # up to the first rejection
                    calib.observe(c, i < n_acc)
        self._drafts, self._probs, self._confidences = [], None, []
        return out

    def observe_pass(self, m: int, seconds: float) -> None:
        """A pass of m tokens (and its verification) took `seconds`: teach the cost model."""
        self.costs.observe_pass(m, seconds)

    def round_cost(self, n_drafts: int) -> float:
        """What the latest round cost by the cost model (not the clock): its draft steps (or lookup)
        and a pass over n_drafts + 1 tokens."""
        c = self.costs
        steps = sum(c.step_cost(n) for n, _ in getattr(self.proposer, "step_seconds", ()))
        return steps + (c.lookup if self.proposer.kind == "ngram" else 0.0) + (c.t_pass(n_drafts + 1) or 0.0)

    def observe_round(self, n_tokens: int, seconds: float) -> None:
        """A round that drafted (or tried to) yielded n_tokens at a cost of `seconds` (`round_cost`: by
        the cost model, so that others' load on the machine does not sway the judgement): whether
        speculation pays, against a plain step's t_pass(1)."""
        self.tuner.observe_round(n_tokens, seconds)

    def step(self, model, cache, sampler: Sampler, context: Sequence[int], k_cap: int) -> list[int]:
        """One pass for one sequence: draft, run [context[-1]] + drafts after the cache, verify, roll the
        cache back past the first rejection. cache.n_past must be len(context) - 1. Returns 1..k+1 tokens."""
        n_past = cache.n_past
        k = self.draft_length(k_cap)
        drafts = self.propose(context, k, sampler)
        start = time.perf_counter()
        logits = model.forward(np.asarray([context[-1], *drafts], np.int32), cache, all_logits=True)
        out = self.verify(sampler, logits, drafts)
        pass_s = time.perf_counter() - start
        self.observe_pass(len(drafts) + 1, pass_s)
        if k > 0 and (drafts or self.proposer.kind == "draft"):
            self.observe_round(len(out), self.round_cost(len(drafts)))
        if cache.n_past > n_past + len(out):
            cache.truncate(n_past + len(out))
        return out


# -- the generation loop ----------------------------------------------------------------------------------


def generate_speculative(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    n_ctx: int,
    params: SamplingParams,
    speculator: Speculator,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """engine.generate.generate_stream with speculation: the same text pieces (at temperature 0 the same
    tokens), the same stops, limits and stats, plus n_drafted / n_accepted."""
    stats = stats if stats is not None else GenerationStats()
    n_vocab = tokenizer.n_vocab
    prompt = check_prompt(prompt_ids, n_vocab, n_ctx)
    stats.speculative = speculator.mode
    if max_tokens <= 0:
        return
    sampler = Sampler(params, n_vocab, history=prompt.tolist())
    reply = ReplyText(tokenizer, stop, max_tokens)
    cache = KVCache.for_model(model, n_ctx)
    generated = reply.tokens
    context: list[int] = prompt.tolist()
    stats.tokens = generated
    stats.n_prompt = int(prompt.size)

    counts = getattr(model, "expert_counts", lambda: None)
    base = counts()

    def count_experts() -> None:
        if base is not None:
            stats.expert_counts = counts() - base

    def update_spec_stats() -> None:
        stats.n_drafted, stats.n_accepted = speculator.n_drafted, speculator.n_accepted
        stats.spec_rounds, stats.spec_off = speculator.rounds, speculator.tuner.was_off

    start = time.perf_counter()
    logits = model.forward(prompt, cache, all_logits=False)[-1]
    speculator.prefill(prompt.tolist())
    stats.prompt_s = time.perf_counter() - start
    count_experts()
    gen_start = time.perf_counter()
    stats.finish_reason = "length"
    token = sampler.sample(logits)
    sampler.accept(token)
    batch = [token]
    while True:
        for token in batch:  # emitted one by one: a stop, EOS or max_tokens ends at exactly that token
            context.append(token)
            text = reply.push(token)
            stats.n_generated = len(generated)
            stats.gen_s = time.perf_counter() - gen_start
            if text:
                yield text
            if reply.finish:
                break
        update_spec_stats()
        if reply.finish:
            break
        if cache.n_past >= n_ctx:
            stats.context_full = True
            break
        # at most max_tokens in all, and the pass must fit the context
        k_cap = min(max_tokens - len(generated) - 1, n_ctx - cache.n_past - 1)
        batch = speculator.step(model, cache, sampler, context, k_cap)
        count_experts()
    tail = reply.tail()
    stats.finish_reason = reply.finish or "length"
    if tail:
        yield tail
