"""What one forward pass runs over: `ForwardBatch`, made by the engine (or by DecoderModel.forward for a
lone call), received by the model. A single sequence is a batch of one.

The rows of the pass are the sequences' tokens one after another. Matmuls run over all rows at once
(each weight read once per pass); attention runs per sequence, on its own cache. `plan()` claims each
cache's cells for the new tokens (all checked first: a cache that cannot take its tokens raises
ContextFullError before any is touched); `commit()` makes them part of the sequences after the pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeInferError
from .kv import KVCacheLike


@dataclass(frozen=True)
class SeqRows:
    """One sequence's part of a pass: rows r0..r1 of x, their positions (n,), the positions of all its
    cells in use after the pass (n_kv,), and its cache."""

    r0: int
    r1: int
    positions: np.ndarray
    kv_pos: np.ndarray
    cache: KVCacheLike
    max_pos: int  # the largest of positions (rope tables are sized by it)


@dataclass(frozen=True)
class ForwardBatch:
    tokens: np.ndarray  # int32 (n_rows,): every sequence's tokens, one after another
    seqs: tuple[SeqRows, ...]
    max_pos: int  # the largest position of the pass

    @property
    def n_rows(self) -> int:
        return int(self.tokens.size)

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate([s.positions for s in self.seqs]) if len(self.seqs) > 1 else self.seqs[0].positions

    @classmethod
    def plan(cls, tokens: Sequence[np.ndarray], caches: Sequence[KVCacheLike],
             positions: Sequence[np.ndarray | None] | None = None) -> "ForwardBatch":  # fmt: skip
        """tokens[i] (int32 (n_i,), checked by the caller) follow caches[i]'s n_past tokens, at positions[i]
        (default n_past, n_past + 1, ...). Claims the cells; ContextFullError before any cache is touched
        when one cannot take its tokens."""
        if len(tokens) != len(caches) or not tokens:
            raise EdgeInferError("A forward pass takes as many token arrays as caches, at least one.")
        if len(set(map(id, caches))) != len(caches):
            raise EdgeInferError("A forward pass needs each sequence's own cache (one cache appears twice).")
        positions = list(positions) if positions is not None else [None] * len(tokens)
        pos = []
        for t, c, p in zip(tokens, caches, positions):
            if p is None:
                p = np.arange(c.n_past, c.n_past + t.size, dtype=np.int32)
            else:
                p = np.asarray(p, dtype=np.int32).reshape(t.size)
                if p.size and p.min() < 0:
                    raise EdgeInferError(f"positions must be non-negative, got {int(p.min())}.")
            pos.append(p)
        for t, c, p in zip(tokens, caches, pos):  # all checks first: a full cache fails before any is touched
            if c.n_past + t.size > c.n_ctx:
                c.begin(p)  # raises ContextFullError
        seqs, start = [], 0
        for t, c, p in zip(tokens, caches, pos):
            seqs.append(SeqRows(start, start + t.size, p, c.begin(p), c, int(p.max())))
            start += t.size
        flat = np.concatenate(tokens) if len(tokens) > 1 else tokens[0]
        return cls(flat.astype(np.int32, copy=False), tuple(seqs), max(s.max_pos for s in seqs))

    def commit(self) -> None:
        """The pass ran: its tokens become part of their sequences."""
        for s in self.seqs:
            s.cache.commit()


__all__ = ["ForwardBatch", "SeqRows"]
