"""Multi-head self-attention with grouped KV heads (GQA), a causal mask, optional sliding window,
optional QK-norm (per head, or over the whole projection), optional attention sinks (one learned logit
per query head in its softmax, gpt-oss), K/V kept in a cache.

Query head h reads KV head h // (n_head / n_head_kv), as ggml's broadcast in mul_mat does. Q, K and V
come from one matmul when their weights share a format (the rows stacked at load).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..kernels.base import HeadSpec
from ..kernels.numpy_ops import causal_mask
from .batch import ForwardBatch
from .linear import Linear
from .norm import RMSNorm
from .rope import Rope


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
        sinks: np.ndarray | None = None,
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
        self.sinks = None if sinks is None else np.ascontiguousarray(sinks, dtype=np.float32).reshape(n_head)
        qn, kn = (None, None) if self.qk_norm_full else (q_norm, k_norm)  # per head, in qkv_store
        self.heads = HeadSpec(n_head, n_head_kv, head_dim, head_dim_v, rope.params.n_rot, rope.params.neox,
                              None if qn is None else qn.weight, None if kn is None else kn.weight,
                              0.0 if qn is None else qn.eps)  # fmt: skip

    def stacked_sources(self) -> list[str]:
        """The weights whose rows were copied into wqkv / wqk."""
        parts = [self.wq, self.wk, self.wv] if self.wqkv is not None else [self.wq, self.wk] if self.wqk is not None else []
        return [p.weight.name for p in parts]

    def __call__(self, x: np.ndarray, batch: ForwardBatch, il: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        """x (n_rows, n_embd) -> (n_rows, n_embd) for the pass's sequences: one projection matmul for all
        rows, QK-norm, rope and the K/V writes in one backend call per KV pool, attention per sequence
        (one backend call for all of them), one output matmul. Each sequence gets what it gets alone."""
        qkv = self._project(x)
        if cb is not None:  # the projections, before QK-norm and rope (llama.cpp names them so too)
            nq, nk = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
            n = x.shape[0]
            cb("Kcur", qkv[:, nq : nq + nk].reshape(n, self.n_head_kv, self.head_dim))
            cb("Vcur", qkv[:, nq + nk :].reshape(n, self.n_head_kv, self.head_dim_v))
        items = self._store(qkv, batch, il)
        if cb is not None:
            cb("Qcur", np.concatenate([it[0] for it in items]) if len(items) > 1 else items[0][0])
        if self.sinks is None:
            outs = self.backend.attention_many(items, self.n_swa, self.scale)
        else:
            outs = self.backend.attention_sinks(items, self.n_swa, self.scale, self.sinks)
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

    def _store(self, qkv: np.ndarray, batch: ForwardBatch, il: int) -> list[tuple]:
        """QK-norm (per head) and rope of every row's q and k; K and V written into each sequence's cache
        (rounded to its kv_type): one backend call for the sequences whose caches share a pool (one
        storage), one per storage otherwise. Returns attention()'s arguments per sequence (q, k, v,
        q_pos, kv_pos, cells): K and V the cache's storage, read through cells (its block table)."""
        cos, sin = self.rope.tables(batch.max_pos)
        if len(batch.seqs) == 1:  # one sequence: one call on all rows
            s = batch.seqs[0]
            k, v, new, cells = s.cache.storage(il)
            q = self.backend.qkv_store(np.ascontiguousarray(qkv), self.heads, s.positions, cos, sin, k, v, new)
            return [(q, k, v, s.positions, s.kv_pos, cells)]
        stores = [s.cache.storage(il) for s in batch.seqs]  # (k, v, new cells, all cells) per sequence
        groups: dict[int, list[int]] = {}
        for i, st in enumerate(stores):
            groups.setdefault(id(st[0]), []).append(i)
        qs: list = [None] * len(batch.seqs)
        for members in groups.values():
            seqs = [batch.seqs[i] for i in members]
            k_store, v_store = stores[members[0]][0], stores[members[0]][1]
            if len(members) == 1:  # a cache of its own: its rows as they are (a view)
                s = seqs[0]
                rows = qkv[s.r0 : s.r1]
                positions, new_cells = s.positions, stores[members[0]][2]
            else:  # caches of one pool: their rows in one call
                contiguous = all(a.r1 == b.r0 for a, b in zip(seqs, seqs[1:]))
                rows = qkv[seqs[0].r0 : seqs[-1].r1] if contiguous else np.concatenate([qkv[s.r0 : s.r1] for s in seqs])
                positions = np.concatenate([s.positions for s in seqs])
                new_cells = np.concatenate([stores[i][2] for i in members])
            qg = self.backend.qkv_store(np.ascontiguousarray(rows), self.heads, positions, cos, sin, k_store, v_store,
                                        new_cells)  # fmt: skip
            off = 0
            for i, s in zip(members, seqs):
                qs[i] = qg[off : off + s.r1 - s.r0]
                off += s.r1 - s.r0
        return [(q, st[0], st[1], s.positions, s.kv_pos, st[3]) for q, s, st in zip(qs, batch.seqs, stores)]


__all__ = ["Attention", "causal_mask"]
