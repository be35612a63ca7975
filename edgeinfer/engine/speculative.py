"""Speculative decoding: a cheap proposer guesses the next tokens, the model checks them all in one pass.

Decoding reads every weight once per token, so a pass over k+1 tokens costs far less than k+1 passes.
A proposer suggests drafts d1..dk after the tokens so far; the model runs [last token, d1..dk] in ONE
forward pass with every position's logits; position i's logits decide whether d(i+1) stands. The
first rejected draft is replaced by a token the model samples itself, and when every draft stands the
last position gives one more ("bonus") token: each pass yields 1..k+1 tokens. The KV caches roll back
past the first rejection (`KVCache.truncate`).

Three parts, each in its own module: proposers (proposers.py: n-gram lookup, a draft model; no clock),
verification (verify.py: greedy match and the rejection rule), and a policy (spec_policy.py: a fixed
draft length by default, an adaptive tuner on request). A `Speculator` is one sequence's speculation:
a proposer, a policy and counters. It is a property of a request (engine/core.py `Request.speculative`);
the engine's one step drafts, runs the pass, verifies and rolls back, for one sequence or many:

    k = spec.draft_length(k_cap)                    # 0: a plain step this time
    drafts = spec.propose(context, k, sampler)      # context: every token so far, its last one not yet in the cache
    logits = <the model over [context[-1]] + drafts after the cache, all logits>   # (len(drafts)+1, n_vocab)
    tokens = spec.verify(sampler, logits, drafts)   # the accepted drafts + one more; sampler.accept() done
    cache.truncate(n_past_before + len(tokens))     # forget the rejected drafts
    spec.observe(len(drafts) + 1, seconds, len(tokens))   # what the adaptive policy learns (fixed: nothing)

Seeds make sampled runs reproducible: the same seed gives the same text with the same speculation
settings (the text differs from plain decoding's with that seed, its distribution does not). The fixed
policy reads no clock; with the adaptive one a seeded sampled request tunes itself on nominal costs
(`CostModel.nominal`), not on the clock, whose readings differ from run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import EdgeInferError
from .proposers import DraftProposer, NgramProposer
from .sampling import Sampler, SamplingParams
from .spec_policy import (
    MODES,
    AdaptivePolicy,
    Calibration,
    CostModel,
    FixedPolicy,
    SpecConfig,
    Tuner,
    expected_tokens,
    make_policy,
)
from .verify import accept_draft, residual, verify


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



# -- the per-sequence speculator ---------------------------------------------------------------------------


class Speculator:
    """One sequence's speculation: a proposer, its policy (FixedPolicy unless cfg.adaptive) and counters."""

    def __init__(self, proposer, costs: CostModel | None = None, cfg: SpecConfig | None = None,
                 clock: Callable[[], float] | None = None):  # fmt: skip
        self.proposer = proposer
        self.cfg = (cfg or SpecConfig()).validate()
        self.policy = make_policy(self.cfg, proposer.kind, costs, clock)
        self.n_drafted = 0
        self.n_accepted = 0
        self.rounds = 0
        self._probs: list[np.ndarray] | None = None
        self._drafts: list[int] = []
        self._confidences: list[float] = []

    @property
    def mode(self) -> str:
        return self.proposer.kind

    @property
    def tuner(self) -> Tuner | None:
        """The adaptive policy's tuner (None with the fixed policy)."""
        return self.policy.tuner

    @property
    def was_off(self) -> bool:
        """The adaptive policy found speculation did not pay and turned it off (at some point)."""
        return self.policy.was_off

    @classmethod
    def ngram(cls, costs: CostModel | None = None, cfg: SpecConfig | None = None, clock=None) -> "Speculator":
        cfg = (cfg or SpecConfig()).validate()
        return cls(NgramProposer(cfg.ngram_min, cfg.ngram_max), costs, cfg, clock)

    @classmethod
    def draft(cls, draft_model, n_ctx: int, costs: CostModel | None = None, cfg: SpecConfig | None = None,
              seed: int | None = None, clock=None) -> "Speculator":  # fmt: skip
        return cls(DraftProposer(draft_model, n_ctx, seed), costs, cfg, clock)

    def draft_length(self, k_cap: int) -> int:
        """The most drafts worth proposing for the next pass (0: make it a plain step)."""
        return self.policy.draft_length(k_cap)

    def prefill(self, prompt: Sequence[int]) -> None:
        """The prompt's share of the proposer's work, done with the model's prefill (a draft model's
        prompt processing); optional: propose() catches up on whatever was not prefilled."""
        prefill = getattr(self.proposer, "prefill", None)
        if prefill is not None:
            prefill(prompt)

    def propose(self, context: Sequence[int], k: int, sampler: Sampler) -> list[int]:
        """Up to k drafts to follow `context` (every token so far; its last one is the one the next
        pass starts with, not yet in the model's cache). The sampler is only read (its chain, history)."""
        self._confidences = []
        if k <= 0:
            drafts, probs = [], None
        else:
            self.policy.begin()
            if self.proposer.kind == "draft":
                drafts, probs = self.proposer.propose(context, k, sampler, self.policy.decide)
                self._confidences = list(getattr(self.proposer, "confidences", ()))
            else:
                drafts, probs = self.proposer.propose(context, k, sampler)
            self.policy.proposed(getattr(self.proposer, "fed", ()))
        self._drafts, self._probs = [int(d) for d in drafts], probs
        return list(self._drafts)

    def verify(self, sampler: Sampler, logits: np.ndarray, drafts: Sequence[int], constraint=None) -> list[int]:
        """The tokens this pass yields (verify.verify) for the drafts propose() made (or any drafts of a
        greedy or deterministic proposal). Calls sampler.accept() (and constraint.consume()) for exactly
        these tokens."""
        drafts = [int(d) for d in drafts]
        mine = drafts == self._drafts
        probs = self._probs if mine else None
        if probs is None and not sampler.params.greedy and self.proposer.kind == "draft" and drafts:
            raise EdgeInferError("verify() got drafts that propose() did not make (their probabilities are unknown).")
        out = verify(sampler, logits, drafts, probs, constraint)
        n_acc = len(out) - 1
        if drafts:
            self.rounds += 1
            self.n_drafted += len(drafts)
            self.n_accepted += n_acc
            self.policy.verified(len(drafts), n_acc, self._confidences if mine else ())
        self._drafts, self._probs, self._confidences = [], None, []
        return out

    def observe(self, m: int, seconds: float, n_tokens: int, k: int) -> None:
        """A pass of m tokens (1 + the drafts) took `seconds` (its share of a batched pass) and yielded
        n_tokens; k: the draft length asked for. Teaches the adaptive policy (the fixed one ignores it)."""
        self.policy.observe_pass(m, seconds)
        if k > 0 and (m > 1 or self.proposer.kind == "draft"):
            self.policy.observe_round(n_tokens, m - 1)


def make_speculator(mode: str | None, draft_model=None, n_ctx: int = 0, cfg: SpecConfig | None = None,
                    costs: CostModel | None = None, params: SamplingParams | None = None,
                    draft_ratio: float = 0.0) -> Speculator | None:  # fmt: skip
    """A request's Speculator for a resolved mode ("draft", "ngram"; None: plain decoding). With the
    adaptive policy, a seeded sampled request tunes itself on nominal costs (no clock in its choices)."""
    if mode is None:
        return None
    if mode not in MODES:
        raise EdgeInferError(f"speculative must be one of {MODES} or None, got {mode!r}.")
    cfg = (cfg or SpecConfig()).validate()
    if cfg.adaptive and params is not None and params.seed is not None and not params.greedy:
        costs = CostModel.nominal(draft_ratio if mode == "draft" else 0.0)
    if mode == "draft":
        if draft_model is None:
            raise EdgeInferError("speculative 'draft' needs a draft model.")
        return Speculator.draft(draft_model, n_ctx, costs, cfg, seed=None if params is None else params.seed)
    return Speculator.ngram(costs, cfg)


__all__ = [
    "MODES", "AdaptivePolicy", "Calibration", "CostModel", "DraftProposer", "FixedPolicy", "NgramProposer",
    "SpecConfig", "Speculator", "Tuner", "accept_draft", "check_vocab_compatible", "expected_tokens",
    "make_speculator", "residual", "verify",
]  # fmt: skip
