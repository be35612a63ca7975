"""Proposers for speculative decoding: what guesses the next tokens. Pure mechanism: no clock, no
policy. How many drafts to make, and where a draft model stops, is the caller's choice (`k`, and the
`decide` callback a policy passes in: engine/spec_policy.py).

- `NgramProposer` (prompt lookup, no second model): the longest recent n-gram (n_max down to n_min)
  ending the text so far is looked up earlier in the prompt and the reply, and what followed it is
  proposed. It pays on replies that quote their input (edits, code, summaries, "repeat after me").
- `DraftProposer`: a smaller model with the same vocabulary (its own KV cache per sequence). Greedy
  requests: it drafts its argmax; sampled requests: it samples from its own distribution after the
  request's full sampling chain, and returns those distributions (the rejection rule needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .kv_cache import KVCache
from .sampling import Sampler

Decide = Callable[[int, float], "tuple[bool, bool]"]  # (draft i (1-based), its confidence) -> (keep, go on)


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

    Each draft step runs the draft model over the tokens it has not seen (one, or two after a pass that
    kept every draft; more after plain steps: a catch-up) and computes its confidence (top probability
    at temperature 1, after the request's penalties). `decide(i, confidence)` then says whether draft i
    is kept and whether to draft another; without it every step is kept, up to k."""

    kind = "draft"

    def __init__(self, model, n_ctx: int, seed: int | None = None):
        self.model = model
        self.cache = KVCache.for_model(model, n_ctx)
        self.tokens: list[int] = []  # the tokens whose K/V the draft cache holds
        self.rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EED])
        self.confidences: list[float] = []  # of the latest proposal's drafts
        self.fed: list[int] = []  # tokens fed by each draft step of the latest proposal

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

    def propose(self, context: Sequence[int], k: int, sampler: Sampler, decide: Decide | None = None):
        """Up to k drafts after context and, for a sampled request, the distribution each was drawn from."""
        self.confidences, self.fed = [], []
        if k <= 0:
            return [], None
        feed = self._sync(context)
        greedy = sampler.params.greedy
        chain = sampler.fork(self.rng)  # the draft's view of the sampling chain and its penalty history
        drafts: list[int] = []
        probs: list[np.ndarray] | None = None if greedy else []
        for i in range(1, k + 1):
            self.fed.append(len(feed))
            logits = self.model.forward(np.asarray(feed, np.int32), self.cache, all_logits=False)[-1]
            self.tokens.extend(feed)
            scores = chain.apply_penalties(logits) if chain.adjusts else logits
            top = scores.max()
            confidence = 1.0 / float(np.exp(scores - top).sum(dtype=np.float64))  # top probability at T=1
            keep, go_on = decide(i, confidence) if decide is not None else (True, True)
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
            # the last draft is not fed to the draft model: if every draft stands, the next round feeds
            # it with the bonus token (two tokens in one step, cheaper than a step that may be wasted)
            if not keep or not go_on or i == k:
                break
        return drafts, probs


__all__ = ["Decide", "DraftProposer", "NgramProposer"]
