"""LFM2's gated short convolution (llama.cpp's build_shortconv_block in src/models/lfm2.cpp).

    [b | c | x] = in_proj(h)                          (n, 3 n_embd)
    bx = b * x                                        (n, n_embd): one row per token, kept in the cache
    y[t] = sum_k bx[t - (L - 1) + k] * conv[:, k]     a causal depthwise convolution of L taps
    out = out_proj(c * y)

The convolution's state is the L - 1 rows of bx before the pass's first token. They are kept per token
in the sequence's cache (KVCacheLike.conv_storage, in the cache's KVType, as K and V are), so rolling a
sequence back or sharing a prefix gives the state of that point with nothing to recompute. Rows are
written first and read back from the cache, so a token gets the same rows in a batch as alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..kernels.numpy_ops import kv_rows_f32, kv_store
from .batch import ForwardBatch
from .linear import Linear


def causal_conv(rows: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """rows (L - 1 + n, d), kernel (d, L) -> (n, d): out[t] = sum over k of rows[t + k] * kernel[:, k],
    summed from k = 0 up in float32 (ggml_compute_forward_ssm_conv_f32's order)."""
    n_taps = kernel.shape[1]
    n = rows.shape[0] - (n_taps - 1)
    out = rows[0:n] * kernel[:, 0]
    for k in range(1, n_taps):
        out += rows[k : k + n] * kernel[:, k]
    return out


class ShortConv:
    """in_proj -> (B, C, x) -> B x through a causal depthwise convolution of L taps -> times C -> out_proj.

    kernel: float32 (n_embd, L), the file's `shortconv.conv` (ne (L, n_embd))."""

    def __init__(self, in_proj: Linear, kernel: np.ndarray, out_proj: Linear):
        self.in_proj, self.out_proj = in_proj, out_proj
        self.kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        self.n_embd, self.n_taps = self.kernel.shape

    def __call__(self, x: np.ndarray, batch: ForwardBatch, ic: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        """x (n_rows, n_embd) -> (n_rows, n_embd); ic: which short-convolution layer (its cache rows)."""
        d = self.n_embd
        bcx = self.in_proj(x)  # (n_rows, 3 d)
        if cb is not None:
            cb("conv.in_proj", bcx)
        bx = bcx[:, :d] * bcx[:, 2 * d :]
        y = np.empty_like(bx)
        for s in batch.seqs:
            y[s.r0 : s.r1] = self._conv(bx[s.r0 : s.r1], s.cache, ic)
        if cb is not None:
            cb("conv.conv", y)
        y *= bcx[:, d : 2 * d]
        return self.out_proj(y)

    def _conv(self, bx: np.ndarray, cache, ic: int) -> np.ndarray:
        """One sequence's rows bx (n, d), stored in its cache, convolved with the L - 1 rows before them
        (zeros before the sequence's start)."""
        store, new, cells = cache.conv_storage(ic)
        kv_store(store, new, bx)
        n_before = len(cells) - len(new)
        lo = max(0, n_before - (self.n_taps - 1))
        rows = kv_rows_f32(store[cells[lo:]])  # (L - 1 + n, d), fewer at the start of the sequence
        missing = self.n_taps - 1 - (n_before - lo)
        if missing:
            rows = np.concatenate([np.zeros((missing, self.n_embd), np.float32), rows])
        return causal_conv(rows, self.kernel)


__all__ = ["ShortConv", "causal_conv"]
