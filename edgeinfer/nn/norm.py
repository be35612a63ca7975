"""RMSNorm, as ggml_rms_norm followed by a multiply by the weight."""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) over the last axis, float32."""
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(ms + np.float32(eps)))


class RMSNorm:
    """weight: float32 (n,), used as the file stores it (Gemma's 1 + w is already folded in by the
    GGUF converter)."""

    def __init__(self, weight: np.ndarray, eps: float):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.eps = float(eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (..., n) -> (..., n); the norm runs over the last axis (per head for QK-norm)."""
        return rms_norm(x, self.eps) * self.weight
