"""Rotary position embedding with precomputed cos/sin tables, as ggml_rope_ext computes them.

Two layouts (llama.cpp's `llama_model_rope_type`): NORM rotates pairs of consecutive values
(x[2i], x[2i+1]) -- llama; NEOX rotates pairs half a rotation apart (x[i], x[i + n_rot/2]) -- gemma,
qwen. Only the first n_rot values of a head rotate; the rest pass through.

Angle of pair i at position p (ggml's rope_yarn):
    theta_extrap = p * freq_base^(-2i/n_rot) / freq_factors[i]
    theta        = freq_scale * theta_extrap                         (linear scaling)
    YaRN (ext_factor != 0): theta mixes extrapolation and interpolation by a ramp over i, and the
    magnitude grows by 1 + 0.1 ln(1/freq_scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RopeParams:
    n_rot: int
    freq_base: float = 10000.0
    freq_scale: float = 1.0
    neox: bool = False
    ext_factor: float = 0.0  # YaRN on when != 0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0


def yarn_corr_dims(n_rot: int, n_ctx_orig: int, freq_base: float, beta_fast: float, beta_slow: float):
    """ggml_rope_yarn_corr_dims: the pair indices where the YaRN ramp starts and ends."""

    def corr_dim(n_rotations: float) -> float:
        return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(freq_base))

    start = math.floor(corr_dim(beta_fast))
    end = math.ceil(corr_dim(beta_slow))
    return max(0.0, start), min(n_rot - 1.0, end)


class Rope:
    def __init__(self, params: RopeParams, freq_factors: np.ndarray | None = None):
        p = params
        if p.n_rot % 2:
            raise ValueError(f"n_rot must be even, not {p.n_rot}")
        self.params = p
        half = p.n_rot // 2
        i = np.arange(half, dtype=np.float64)
        theta_extrap = p.freq_base ** (-2.0 * i / p.n_rot)  # (half,) per unit of position
        if freq_factors is not None:
            theta_extrap = theta_extrap / np.asarray(freq_factors, dtype=np.float64).reshape(half)
        theta = p.freq_scale * theta_extrap
        mscale = p.attn_factor
        if p.ext_factor != 0.0:
            low, high = yarn_corr_dims(p.n_rot, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow)
            ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
            mix = ramp * p.ext_factor
            theta = theta * (1.0 - mix) + theta_extrap * mix
            mscale *= 1.0 + 0.1 * math.log(1.0 / p.freq_scale)
        self._inv_freq = theta  # (half,) float64
        self._mscale = mscale
        self._cos = np.empty((0, half), np.float32)  # (n_pos, half)
        self._sin = np.empty((0, half), np.float32)

    def tables(self, max_pos: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin float32 (n_pos, n_rot / 2), n_pos > max_pos (grown by doubling)."""
        if max_pos >= len(self._cos):
            n = max(2 * len(self._cos), max_pos + 1, 256)
            angles = np.arange(n, dtype=np.float64)[:, None] * self._inv_freq  # (n, half)
            self._cos = (np.cos(angles) * self._mscale).astype(np.float32)
            self._sin = (np.sin(angles) * self._mscale).astype(np.float32)
        return self._cos, self._sin

    def __call__(self, x: np.ndarray, positions: np.ndarray, max_pos: int, backend) -> np.ndarray:
        """x (n_tokens, n_head, head_dim), positions int (n_tokens,) in 0..max_pos -> rotated copy."""
        cos, sin = self.tables(max_pos)
        return backend.rope(x, positions, cos, sin, self.params.n_rot, self.params.neox)


class NoRope(Rope):
    """A layer without rotary embedding (SmolLM3's every fourth layer, llama.cpp's n_no_rope_layer_step;
    Granite's rope.scaling.finetuned = false): tables of angle 0, cos = 1 and sin = 0, so the rotation
    x0 * 1 - x1 * 0 leaves every value exactly as it was, through any backend's rope kernel."""

    def tables(self, max_pos: int) -> tuple[np.ndarray, np.ndarray]:
        if max_pos >= len(self._cos):
            n, half = max(2 * len(self._cos), max_pos + 1, 256), self.params.n_rot // 2
            self._cos, self._sin = np.ones((n, half), np.float32), np.zeros((n, half), np.float32)
        return self._cos, self._sin
