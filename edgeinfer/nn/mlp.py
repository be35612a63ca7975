"""Gated feed-forward: down(act(gate(x)) * up(x)), llama.cpp's LLM_FFN_PAR. SwiGLU and GeGLU (and
gpt-oss's clamped SwiGLU, "swiglu_oai": act(gate, up) is then not a product, see numpy_ops.glu).
Gate and up come from one matmul when their weights share a format (the rows stacked at load)."""

from __future__ import annotations

import numpy as np

from .linear import Linear

ACTIVATIONS = ("silu", "gelu_tanh", "swiglu_oai")


class GatedMLP:
    def __init__(self, gate: Linear, up: Linear, down: Linear, act: str):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        self.gate, self.up, self.down = gate, up, down
        self.gate_up = Linear.stack([gate, up])
        self.backend = down.backend
        self.act = act

    def stacked_sources(self) -> list[str]:
        """The weights whose rows were copied into gate_up."""
        return [self.gate.weight.name, self.up.weight.name] if self.gate_up is not None else []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd)."""
        if self.gate_up is not None:
            gu = self.gate_up(x)  # (n, 2 n_ff)
        else:
            gu = np.concatenate([self.gate(x), self.up(x)], axis=1)
        return self.down(self.backend.glu(gu, self.act))
