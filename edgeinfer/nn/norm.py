"""RMSNorm, as ggml_rms_norm followed by a multiply by the weight."""

from __future__ import annotations

import numpy as np

from ..kernels.base import Backend


class RMSNorm:
    """weight: float32 (n,), used as the file stores it (Gemma's 1 + w is already folded in by the
    GGUF converter)."""

    def __init__(self, weight: np.ndarray, eps: float, backend: Backend):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.eps = float(eps)
        self.backend = backend

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (..., n) -> (..., n); the norm runs over the last axis (per head for QK-norm)."""
        return self.backend.rms_norm(x, self.weight, self.eps)
