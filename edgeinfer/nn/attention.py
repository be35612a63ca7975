"""Multi-head self-attention with grouped KV heads (GQA), a causal mask, optional sliding window,
optional QK-norm, K/V kept in a cache.

Query head h reads KV head h // (n_head / n_head_kv), as ggml's broadcast in mul_mat does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .kv import KVCacheLike
from .linear import Linear
from .norm import RMSNorm
from .rope import Rope

QUERY_CHUNK = 256  # queries scored at once: bounds the (n_head, chunk, n_kv) score buffer


def causal_mask(q_pos: np.ndarray, kv_pos: np.ndarray, n_swa: int = 0) -> np.ndarray:
    """bool (n_tokens, n_kv): True where query i may attend to cell j (kv_pos[j] <= q_pos[i]; with a
    sliding window, also q_pos[i] - kv_pos[j] < n_swa, llama.cpp's LLAMA_SWA_TYPE_STANDARD)."""
    delta = q_pos[:, None].astype(np.int64) - kv_pos[None, :]  # (n_tokens, n_kv)
    mask = delta >= 0
    if n_swa > 0:
        mask &= delta < n_swa
    return mask


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * q k^T + mask) v per head.

    q (n_tokens, n_head, head_dim), k (n_head_kv, n_kv, head_dim), v (n_head_kv, n_kv, head_dim_v),
    mask bool (n_tokens, n_kv) -> (n_tokens, n_head * head_dim_v)
    """
    n_tokens, n_head, head_dim = q.shape
    n_head_kv, n_kv, head_dim_v = v.shape
    group = n_head // n_head_kv
    # only the cells some query sees: a sliding window leaves a prefix no one reads
    lo = int(np.argmax(mask.any(axis=0)))
    k, v, mask = k[:, lo:], v[:, lo:], mask[:, lo:]
    qg = q.reshape(n_tokens, n_head_kv, group, head_dim).transpose(1, 2, 0, 3)  # (n_head_kv, group, n_tokens, head_dim)
    out = np.empty((n_head_kv, group, n_tokens, head_dim_v), np.float32)
    k_t = k.transpose(0, 2, 1)[:, None]  # (n_head_kv, 1, head_dim, n_kv)
    for c0 in range(0, n_tokens, QUERY_CHUNK):
        c1 = min(c0 + QUERY_CHUNK, n_tokens)
        scores = qg[:, :, c0:c1] @ k_t  # (n_head_kv, group, chunk, n_kv)
        scores *= np.float32(scale)
        scores[:, :, ~mask[c0:c1]] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[:, :, c0:c1] = scores @ v[:, None]  # (n_head_kv, group, chunk, head_dim_v)
    return out.transpose(2, 0, 1, 3).reshape(n_tokens, n_head * head_dim_v)


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
    ):
        if n_head % n_head_kv:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_head_kv ({n_head_kv})")
        self.wq, self.wk, self.wv, self.wo = wq, wk, wv, wo
        self.n_head, self.n_head_kv = n_head, n_head_kv
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.rope = rope
        self.scale = scale
        self.q_norm, self.k_norm = q_norm, k_norm

    def __call__(
        self,
        x: np.ndarray,
        positions: np.ndarray,
        mask: np.ndarray,
        cache: KVCacheLike,
        il: int,
        cb: Callable[[str, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """x (n_tokens, n_embd), positions (n_tokens,), mask bool (n_tokens, n_kv) -> (n_tokens, n_embd)."""
        n = x.shape[0]
        q = self.wq(x).reshape(n, self.n_head, self.head_dim)  # (n_tokens, n_head, head_dim)
        k = self.wk(x).reshape(n, self.n_head_kv, self.head_dim)  # (n_tokens, n_head_kv, head_dim)
        v = self.wv(x).reshape(n, self.n_head_kv, self.head_dim_v)  # (n_tokens, n_head_kv, head_dim_v)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = self.rope(q, positions)
        k = self.rope(k, positions)
        if cb is not None:
            cb("Qcur", q), cb("Kcur", k), cb("Vcur", v)
        k_all, v_all = cache.update(il, k, v)  # (n_head_kv, n_kv, head_dim), (n_head_kv, n_kv, head_dim_v)
        out = attend(q, k_all, v_all, mask, self.scale)  # (n_tokens, n_head * head_dim_v)
        if cb is not None:
            cb("kqv_out", out)
        return self.wo(out)
