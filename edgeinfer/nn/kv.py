"""What attention needs from a KV cache, as a Protocol: model code never imports the engine.

The engine's `KVCache` (edgeinfer.engine.kv_cache) implements it. One forward pass over n tokens:

    kv_pos = cache.begin(positions)       # claim n cells; ContextFullError if they do not fit
    k_all, v_all = cache.update(il, k, v) # per layer: store this batch's K/V, get every cell's
    cache.commit()                        # the n tokens become part of the sequence (n_past += n)

A pass that fails between begin() and commit() leaves n_past as it was.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class KVCacheLike(Protocol):
    n_past: int  # tokens already in the sequence
    n_ctx: int  # cells in all

    def begin(self, positions: np.ndarray) -> np.ndarray:
        """Claim cells n_past..n_past+n-1 for tokens at `positions` (n,); return the positions of all
        cells in use after this batch, int32 (n_kv,), n_kv = n_past + n."""

    def update(self, il: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store layer il's k (n, n_head_kv, head_dim) and v (n, n_head_kv, head_dim_v) in the claimed
        cells; return float32 views of all cells in use: K (n_kv, n_head_kv, head_dim), V (n_kv, n_head_kv,
        head_dim_v)."""

    def storage(self, il: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Layer il's float32 storage, K (capacity, n_head_kv, head_dim) and V (capacity, n_head_kv,
        head_dim_v), and the first claimed cell; None if the backend must go through update()."""

    def commit(self) -> None:
        """Make the claimed cells part of the sequence."""
