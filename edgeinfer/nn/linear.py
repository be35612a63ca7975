"""Layers that hold a quantized weight and hand the arithmetic to the backend."""

from __future__ import annotations

import numpy as np

from ..kernels.base import Backend, QTensor


class Linear:
    """y = x @ W.T (+ b). W: QTensor (n_out, n_in) in any format, b: float32 (n_out,) or None."""

    def __init__(self, weight: QTensor, backend: Backend, bias: np.ndarray | None = None):
        self.weight = weight
        self.backend = backend
        self.bias = bias

    @property
    def n_in(self) -> int:
        return self.weight.n_cols

    @property
    def n_out(self) -> int:
        return self.weight.n_rows

    @classmethod
    def stack(cls, parts: "list[Linear]") -> "Linear | None":
        """One Linear computing all of `parts` (outputs side by side), or None when their weights
        differ in format or input size (then they run one by one)."""
        first = parts[0].weight
        if any(p.weight.ggml_type != first.ggml_type or p.weight.raw.ndim != 2 for p in parts):
            return None
        if any(p.n_in != parts[0].n_in or p.backend is not parts[0].backend for p in parts):
            return None
        name = "+".join(p.weight.name for p in parts)
        weight = QTensor.concat_rows(name, [p.weight for p in parts])
        bias = None
        if any(p.bias is not None for p in parts):
            bias = np.concatenate([p.bias if p.bias is not None else np.zeros(p.n_out, np.float32) for p in parts])
        return cls(weight, parts[0].backend, bias)

    def prepare(self) -> None:
        """Put the weight in the backend's own layout (once, at load: a repacked copy replaces it)."""
        self.weight = self.backend.prepare(self.weight)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.backend.matmul(self.weight, x)  # (n_tokens, n_out)
        if self.bias is not None:
            y += self.bias
        return y


class Embedding:
    """Token embedding lookup: ids (n,) -> float32 (n, n_embd), rows of a QTensor (n_vocab, n_embd)."""

    def __init__(self, weight: QTensor, backend: Backend):
        self.weight = weight
        self.backend = backend

    @property
    def n_vocab(self) -> int:
        return self.weight.n_rows

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.backend.get_rows(self.weight, ids)
