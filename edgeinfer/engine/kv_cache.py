"""The key/value cache of one sequence: every layer's K and V for the tokens seen so far.

Cell c holds the token at position pos[c]; cells 0..n_past-1 are in use. A forward pass claims the next
cells with begin(), stores each layer's K/V with update() and makes them part of the sequence with
commit() (the protocol `edgeinfer.nn.KVCacheLike`). Growing past n_ctx raises ContextFullError; nothing
is ever dropped silently. truncate(n) rolls the sequence back to its first n tokens (speculative
decoding rejects drafted tokens this way).
"""

from __future__ import annotations

import numpy as np

from ..errors import ContextFullError


INITIAL_CELLS = 256  # cells allocated at first; doubled as the sequence grows


class KVCache:
    def __init__(
        self,
        n_layer: int,
        n_ctx: int,
        n_head_kv: int,
        head_dim: int,
        dtype=np.float32,
        head_dim_v: int | None = None,
    ):
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, not {n_ctx}")
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        self.n_layer, self.n_ctx, self.n_head_kv = n_layer, n_ctx, n_head_kv
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.dtype = np.dtype(dtype)
        # (layer, cell, kv head, head_dim): a token's K (and V) of a layer is one contiguous row, and a
        # layer's cells in use one contiguous block that attention streams through (a transposed K,
        # rows of cells per head dimension, measured 2x slower here when it comes from memory)
        # Storage grows with the sequence (doubling, up to n_ctx): memory follows the tokens held, and
        # a short chat does not pay for zeroing a long context's pages.
        self.capacity = min(n_ctx, INITIAL_CELLS)
        self.k = np.zeros((n_layer, self.capacity, n_head_kv, head_dim), self.dtype)
        self.v = np.zeros((n_layer, self.capacity, n_head_kv, head_dim_v), self.dtype)
        self.pos = np.zeros(n_ctx, np.int32)  # (cell,) position of the token in each cell
        self.n_past = 0
        self._n_new = 0  # cells claimed by the pass in progress

    @classmethod
    def for_model(cls, model, n_ctx: int, dtype=np.float32) -> "KVCache":
        """A cache shaped for `model` (anything with `kv_dims()`: n_layer, n_head_kv, head_dim, head_dim_v)."""
        d = model.kv_dims()
        return cls(d["n_layer"], n_ctx, d["n_head_kv"], d["head_dim"], dtype, d["head_dim_v"])

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def begin(self, positions: np.ndarray) -> np.ndarray:
        n = len(positions)
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"The context is full: it holds {self.n_ctx} tokens, {self.n_past} are in use and "
                f"{n} more were given. Load the model with a larger n_ctx, or start a new conversation "
                "(or shorten this one)."
            )
        if self.n_past + n > self.capacity:
            self._grow(self.n_past + n)
        self.pos[self.n_past : self.n_past + n] = positions
        self._n_new = n
        return self.pos[: self.n_past + n]

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        cap = min(cap, self.n_ctx)
        k = np.zeros((self.n_layer, cap) + self.k.shape[2:], self.dtype)
        v = np.zeros((self.n_layer, cap) + self.v.shape[2:], self.dtype)
        k[:, : self.n_past] = self.k[:, : self.n_past]
        v[:, : self.n_past] = self.v[:, : self.n_past]
        self.k, self.v, self.capacity = k, v, cap

    def storage(self, il: int):
        """Layer il's storage (K (capacity, n_head_kv, head_dim), V (capacity, n_head_kv, head_dim_v)) and the first cell of the pass in progress, for a backend to write K and V into
        directly; None when the cache is not float32 (then update() converts)."""
        if self.dtype != np.float32:
            return None
        return self.k[il], self.v[il], self.n_past

    def update(self, il: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.n_past, self.n_past + self._n_new
        self.k[il, start:end] = k  # (n, n_head_kv, head_dim)
        self.v[il, start:end] = v
        k_all, v_all = self.k[il, :end], self.v[il, :end]  # (n_kv, n_head_kv, head_dim), (n_kv, n_head_kv, head_dim_v)
        if self.dtype != np.float32:
            k_all, v_all = k_all.astype(np.float32), v_all.astype(np.float32)
        return k_all, v_all

    def commit(self) -> None:
        self.n_past += self._n_new
        self._n_new = 0

    def truncate(self, n: int) -> None:
        """Keep the first n tokens of the sequence, forget the rest."""
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}): the cache holds {self.n_past} tokens")
        self.n_past = n
        self._n_new = 0

    def clear(self) -> None:
        self.truncate(0)

    def copy_prefix(self, src: "KVCache", n: int) -> None:
        """Make this cache hold src's first n tokens (a shared prompt prefix), replacing what it held:
        a copy of their K/V, far cheaper than computing them again."""
        if not 0 <= n <= src.n_past or n > self.n_ctx:
            raise ValueError(f"copy_prefix({n}): the source holds {src.n_past} tokens, this cache {self.n_ctx}")
        if (src.n_layer, src.n_head_kv, src.head_dim, src.head_dim_v) != (self.n_layer, self.n_head_kv, self.head_dim, self.head_dim_v):
            raise ValueError("copy_prefix: the caches belong to different models")
        if n > self.capacity:
            self.n_past = 0
            self._grow(n)
        self.k[:, :n] = src.k[:, :n]
        self.v[:, :n] = src.v[:, :n]
        self.pos[:n] = src.pos[:n]
        self.n_past = n
        self._n_new = 0

    def __repr__(self) -> str:
        return (
            f"KVCache(n_past={self.n_past}, n_ctx={self.n_ctx}, n_layer={self.n_layer}, "
            f"n_head_kv={self.n_head_kv}, head_dim={self.head_dim}, dtype={self.dtype.name})"
        )
