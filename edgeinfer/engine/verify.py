"""Verification of drafts: which proposed tokens stand, given the model's logits of one pass over
[last token, d1..dk]; position i's logits decide whether d(i+1) stands.

- temperature 0: each position's token is exactly what plain decoding picks (argmax after bias and
  penalties, the penalty history advanced token by token), so the text is identical token for token,
  given that a pass of k+1 tokens computes every row as a pass of one token would (the kernels are
  batch-invariant: tests/test_matmul.py and tests/test_speculative.py check it).
- temperature > 0: the rejection rule that keeps the model's distribution exactly (Leviathan et al.
  2023, Chen et al. 2023): accept draft x with probability min(1, p(x)/q(x)), else sample from
  normalize(max(0, p - q)); p and q are the full sampling chain's distributions on each side
  (`Sampler.distribution`). For deterministic drafts (n-gram lookup) q is one-hot: accept with p(x),
  else sample p without x. The sampler's penalty history advances by exactly the tokens kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import EdgeInferError
from .sampling import Sampler


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


def verify(sampler: Sampler, logits: np.ndarray, drafts: Sequence[int], probs: Sequence[np.ndarray] | None,
           constraint=None) -> list[int]:  # fmt: skip
    """The tokens a pass yields: the drafts that stand, then the model's own next token (the
    replacement of the first rejected draft, or the bonus token after all of them). logits: the pass's
    rows (len(drafts) + 1, n_vocab); probs: the distribution each draft was drawn from (None: one-hot
    drafts). Calls sampler.accept() for exactly these tokens. constraint (engine/constrain.py): each
    row masked by the grammar as it stands after the tokens before it (a draft it forbids is rejected),
    and each kept token consumed."""
    drafts = [int(d) for d in drafts]
    if len(logits) < len(drafts) + 1:
        raise EdgeInferError(f"verify() needs {len(drafts) + 1} rows of logits, got {len(logits)}.")
    out: list[int] = []

    def keep(tok: int) -> int:
        sampler.accept(tok)
        if constraint is not None:
            constraint.consume(tok)
        out.append(tok)
        return tok

    for i, d in enumerate(drafts):
        row = constraint.mask(logits[i]) if constraint is not None else logits[i]
        if sampler.params.greedy:
            if keep(sampler.sample(row)) != d:
                return out
            continue
        p = sampler.distribution(row)
        q = probs[i] if probs is not None else None
        if accept_draft(sampler.rng, p, q, d):
            keep(d)
            continue
        keep(sampler.draw(residual(p, q, d)))
        return out
    row = logits[len(drafts)]
    keep(sampler.sample(constraint.mask(row) if constraint is not None else row))
    return out


__all__ = ["accept_draft", "residual", "verify"]
