"""Gated feed-forward: down(act(gate(x)) * up(x)), llama.cpp's LLM_FFN_PAR. SwiGLU and GeGLU."""

from __future__ import annotations

import numpy as np

from .linear import Linear

_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), with sigmoid(x) = (1 + tanh(x / 2)) / 2 (no overflow for large |x|)."""
    return x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (ggml_gelu)."""
    inner = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


class GatedMLP:
    def __init__(self, gate: Linear, up: Linear, down: Linear, act: str):
        self.gate, self.up, self.down = gate, up, down
        self.act = ACTIVATIONS[act]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd)."""
        h = self.act(self.gate(x))  # (n_tokens, n_ff)
        h *= self.up(x)
        return self.down(h)
