"""The slow, obvious backend: dequantize a block of weight rows to float32, multiply, move on.

It is the twin every fast backend is tested against. Activations stay float32 (no 8-bit quantization
of x as llama.cpp and the Numba backend do), so its results sit closest to the float64 reference.
Weights are dequantized `block_bytes` at a time: no full-precision copy of a big matrix is ever kept.
"""

from __future__ import annotations

import numpy as np

from .base import QTensor
from .numpy_ops import NumpyOps
from .numba.dequant import dequantize, dequantize_rows


class ReferenceBackend(NumpyOps):
    name = "reference"

    def __init__(self, block_bytes: int = 16 << 20):
        self.block_bytes = block_bytes  # float32 bytes of weights dequantized at once

    def _rows_per_block(self, w: QTensor) -> int:
        return max(1, self.block_bytes // (4 * w.n_cols))

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != w.n_cols:
            raise ValueError(f"{w.name}: x has shape {x.shape}, expected (n_tokens, {w.n_cols})")
        if out is None:
            out = np.empty((x.shape[0], w.n_rows), np.float32)
        step = self._rows_per_block(w)
        buf = np.empty(min(step, w.n_rows) * w.n_cols, np.float32)
        for r0 in range(0, w.n_rows, step):
            r1 = min(r0 + step, w.n_rows)
            w_block = dequantize_rows(w.raw, w.ggml_type, r0, r1, out=buf[: (r1 - r0) * w.n_cols])
            out[:, r0:r1] = x @ w_block.T  # (n_tokens, r1 - r0)
        return out

    def prepare(self, w: QTensor) -> QTensor:
        """The reference reads the file's layout: w itself."""
        return w

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Embedding lookup: float32 (len(ids), n_cols)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= w.n_rows):
            raise IndexError(f"{w.name}: row ids must lie in 0..{w.n_rows - 1}")
        return dequantize_rows(np.ascontiguousarray(w.raw[ids]), w.ggml_type)

    def dequantize(self, w: QTensor) -> np.ndarray:
        """The whole tensor as float32, numpy-order shape."""
        return dequantize(w.raw, w.ggml_type, w.shape, w.name)
