"""The small protocol every backend (numba, native, cuda) implements, and the weight type it consumes.

Model code (nn/, arch/) holds `QTensor`s and calls only these methods; it never knows the quant format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from gguf.constants import GGMLQuantizationType


@dataclass(frozen=True)
class QTensor:
    """A weight in its file format: raw blocks, zero-copy from the mmap.

    raw: uint8 (n_rows, row_bytes), read-only (for 3-D expert tensors: (n_expert, n_rows, row_bytes))
    ne:  ggml order dims, ne[0] = n_cols (the row length, the reduction axis of a matmul)
    """

    name: str
    ggml_type: GGMLQuantizationType
    ne: tuple[int, ...]
    raw: np.ndarray

    @property
    def n_cols(self) -> int:
        return self.ne[0]

    @property
    def n_rows(self) -> int:
        return self.ne[1] if len(self.ne) > 1 else 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @classmethod
    def from_tensor_info(cls, t) -> "QTensor":
        raw = t.data.reshape(-1, t.data.shape[-1]) if len(t.ne) <= 2 else t.data.reshape(t.ne[2], t.ne[1], -1)
        return cls(t.name, t.ggml_type, tuple(t.ne), raw)


class Backend(Protocol):
    name: str

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows)."""

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Embedding lookup: float32 (len(ids), n_cols), rows of W dequantized."""

    def dequantize(self, w: QTensor) -> np.ndarray:
        """The whole tensor as float32 (numpy order shape); for small tensors (norms, biases)."""
