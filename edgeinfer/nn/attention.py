"""Multi-head self-attention with grouped KV heads (GQA), a causal mask, optional sliding window,
optional QK-norm (per head, or over the whole projection), K/V kept in a cache.

Query head h reads KV head h // (n_head / n_head_kv), as ggml's broadcast in mul_mat does. Q, K and V
come from one matmul when their weights share a format (the rows stacked at load).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels.numpy_ops import causal_mask
from .kv import KVCacheLike
from .linear import Linear
from .norm import RMSNorm
from .rope import Rope


@dataclass(frozen=True)
class Batch:
    """What every layer of one forward pass shares: the tokens' positions (n,), the positions of all
    cells in use (n_kv,), and the largest position (rope tables are sized by it)."""

    positions: np.ndarray
    kv_pos: np.ndarray
    max_pos: int


@dataclass(frozen=True)
class Segments:
    """Several sequences in one forward pass (continuous batching): the rows of x are the sequences'
    tokens one after another; bounds[i] = (first row, end row) of sequence i, batches[i] its positions,
    caches[i] its KV cache. Matmuls run over all rows at once (each weight read once per step);
    attention runs per sequence, on its own cache. Passed to a block as both its batch and its cache."""

    bounds: tuple[tuple[int, int], ...]
    batches: tuple[Batch, ...]
    caches: tuple


class Attention:
    """attn_q/k/v -> (QK-norm) -> rope -> attend over the cache -> attn_output."""

    def __init__(
        self,
        wq: Linear,
        wk: Linear,
        wv: Linear,
        wo: Linear,
        n_head: int,
        n_head_kv: int,
        head_dim: int,
        head_dim_v: int,
        rope: Rope,
        scale: float,
        q_norm: RMSNorm | None = None,
        k_norm: RMSNorm | None = None,
        n_swa: int = 0,
        qk_norm_full: bool = False,
    ):
        if n_head % n_head_kv:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_head_kv ({n_head_kv})")
        self.wqkv = Linear.stack([wq, wk, wv])  # one matmul where the formats allow, else None
        # Q and K alone when V's format differs (Gemma 3's Q8_0 V beside Q5_0 Q/K)
        self.wqk = Linear.stack([wq, wk]) if self.wqkv is None else None
        self.wq, self.wk, self.wv, self.wo = wq, wk, wv, wo
        self.backend = wo.backend
        self.n_head, self.n_head_kv = n_head, n_head_kv
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.rope = rope
        self.scale = scale
        self.q_norm, self.k_norm = q_norm, k_norm
        # QK-norm over all of q (n_head * head_dim) and all of k, before the split into heads (OLMoE),
        # rather than per head (Qwen 3, Gemma 3)
        self.qk_norm_full = qk_norm_full and q_norm is not None
        self.n_swa = n_swa

    def stacked_sources(self) -> list[str]:
        """The weights whose rows were copied into wqkv / wqk."""
        parts = [self.wq, self.wk, self.wv] if self.wqkv is not None else [self.wq, self.wk] if self.wqk is not None else []
        return [p.weight.name for p in parts]

    def __call__(
        self,
        x: np.ndarray,
        batch: Batch | Segments,
        cache: KVCacheLike | Segments,
        il: int,
        cb: Callable[[str, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd). One sequence (batch: Batch, cache: its cache), or
        several (both Segments): one projection matmul for all rows, attention per sequence, one output
        matmul; each sequence gets what it gets alone."""
        if isinstance(batch, Segments):
            parts = list(zip(batch.bounds, batch.batches, batch.caches))
            fused = True
        else:
            parts = [((0, x.shape[0]), batch, cache)]
            # the fused op where the projections come from one matmul and nobody traces the steps
            fused = (self.wqkv is not None or self.wqk is not None) and cb is None
        qkv = self._project(x)
        qn, kn = (None, None) if self.qk_norm_full else (self.q_norm, self.k_norm)
        items = self._store_many(qkv, parts, il, qn, kn) if len(parts) > 1 else None
        if items is None:
            items = [self._store(qkv[r0:r1], b, c, il, qn, kn, fused, cb) for (r0, r1), b, c in parts]
        many = getattr(self.backend, "attention_many", None)
        if many is not None and len(items) > 1:  # one call (one job on a thread pool) for all of them
            outs = many(items, self.n_swa, self.scale)
        else:
            outs = [self.backend.attention(*item[:5], self.n_swa, self.scale, cells=item[5]) for item in items]
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
        if cb is not None:
            cb("kqv_out", out)
        return self.wo(out)

    def _project(self, x: np.ndarray) -> np.ndarray:
        """[q | k | v] (n, H D + Hkv D + Hkv Dv), with OLMoE's whole-projection QK-norm applied."""
        if self.wqkv is not None:
            qkv = self.wqkv(x)
        elif self.wqk is not None:
            qkv = np.concatenate([self.wqk(x), self.wv(x)], axis=1)
        else:
            qkv = np.concatenate([self.wq(x), self.wk(x), self.wv(x)], axis=1)
        if self.qk_norm_full:
            nq, nk = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
            qkv[:, :nq] = self.q_norm(np.ascontiguousarray(qkv[:, :nq]))
            qkv[:, nq : nq + nk] = self.k_norm(np.ascontiguousarray(qkv[:, nq : nq + nk]))
        return qkv

    def _store_many(self, qkv, parts, il: int, qn, kn):
        """Several sequences whose caches share one pool: QK-norm, rope and the K/V writes of all their
        rows in one qkv_store call (each row as it would be alone). None when they do not."""
        stores = []
        for _, _, c in parts:
            store = c.storage(il)
            if stores and store[0] is not stores[0][0]:  # one pool: the same layer view
                return None
            stores.append(store)
        k_store, v_store = stores[0][0], stores[0][1]
        positions = np.concatenate([b.positions for _, b, _ in parts])
        cos, sin = self.rope.tables(max(b.max_pos for _, b, _ in parts))
        q = self.backend.qkv_store(
            np.ascontiguousarray(qkv), self.n_head, self.n_head_kv, self.head_dim, self.head_dim_v, positions,
            cos, sin, self.rope.params.n_rot, self.rope.params.neox, None if qn is None else qn.weight,
            None if kn is None else kn.weight, 0.0 if qn is None else qn.eps, k_store, v_store,
            np.concatenate([st[2] for st in stores]),
        )  # fmt: skip
        return [(q[r0:r1], k_store, v_store, b.positions, b.kv_pos, st[3]) for ((r0, r1), b, _), st in zip(parts, stores)]

    def _store(self, rows, b: Batch, cache, il: int, qn, kn, fused: bool, cb):
        """One sequence's rows of [q | k | v]: per-head QK-norm (qn, kn or None) and rope; K and V into
        its cache. Returns attention()'s arguments (q, k, v, q_pos, kv_pos, cells): K and V the cache's
        storage (in its kv_type), read through cells (its block table)."""
        n = rows.shape[0]
        k_store, v_store, new_cells, cells = cache.storage(il)
        if fused:  # one call: QK-norm, rope, K and V into the cache
            cos, sin = self.rope.tables(b.max_pos)
            q = self.backend.qkv_store(
                np.ascontiguousarray(rows), self.n_head, self.n_head_kv, self.head_dim, self.head_dim_v,
                b.positions, cos, sin, self.rope.params.n_rot, self.rope.params.neox,
                None if qn is None else qn.weight, None if kn is None else kn.weight,
                0.0 if qn is None else qn.eps, k_store, v_store, new_cells,
            )  # fmt: skip
            return q, k_store, v_store, b.positions, b.kv_pos, cells
        nq, nk = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        q = rows[:, :nq].reshape(n, self.n_head, self.head_dim)
        k = rows[:, nq : nq + nk].reshape(n, self.n_head_kv, self.head_dim)
        v = rows[:, nq + nk :].reshape(n, self.n_head_kv, self.head_dim_v)
        if qn is not None:
            q, k = qn(q), kn(k)
        q = self.rope(q, b.positions, b.max_pos, self.backend)
        k = self.rope(k, b.positions, b.max_pos, self.backend)
        if cb is not None:
            cb("Qcur", q), cb("Kcur", k), cb("Vcur", v)
        cache.update(il, k, v)  # (n, n_head_kv, head_dim), (n, n_head_kv, head_dim_v), rounded as stored
        return q, k_store, v_store, b.positions, b.kv_pos, cells


__all__ = ["Attention", "Batch", "Segments", "causal_mask"]
