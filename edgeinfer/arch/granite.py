"""granite: IBM Granite 3.x dense models (llama.cpp's src/models/granite.cpp).

A llama block (NORM rope, GQA, SwiGLU, optional biases on attn_output and the feed-forward) with four
multipliers from the file:
- embedding_scale: the token embedding times it (0 or absent: 1);
- attention.scale: the q.k scale (0 or absent: 1/sqrt(head_dim));
- residual_scale: each block's attention and feed-forward output times it before the residual add;
- logit_scale (required): the logits divided by it.
rope.scaling.finetuned = false turns rope off in every layer (llama.cpp's rope_pattern). With
expert_count > 0 the feed-forward is a Mixture of Experts (softmax routing, weights renormalized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFFile
from ..kernels.base import Backend
from ..nn import Attention, ForwardBatch, GatedMLP, NoRope, RMSNorm, Rope
from . import llama
from .base import DecoderModel, MoEConfig, Weights, meta_bool, meta_float


@dataclass(frozen=True)
class Config(llama.Config):
    embedding_scale: float = 1.0
    residual_scale: float = 1.0
    logit_scale: float = 1.0
    use_rope: bool = True

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=False)
        attn_scale = meta_float(f, "attention.scale", 0.0)
        if attn_scale:
            common["attn_scale"] = attn_scale
        return cls(
            **common,
            moe=MoEConfig.read(f, norm_default=True),
            embedding_scale=meta_float(f, "embedding_scale", 0.0) or 1.0,
            residual_scale=meta_float(f, "residual_scale", 0.0) or 1.0,
            logit_scale=meta_float(f, "logit_scale"),
            use_rope=meta_bool(f, "rope.scaling.finetuned", True),
        )


class Block(llama.Block):
    def __init__(self, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, ffn: GatedMLP, residual_scale: float):
        super().__init__(attn_norm, attn, ffn_norm, ffn)
        self.residual_scale = np.float32(residual_scale)

    def __call__(self, x: np.ndarray, batch: ForwardBatch, il: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        h = self.attn(self.attn_norm(x), batch, il, cb)
        if self.residual_scale != 1.0:
            h *= self.residual_scale
        x = x + h
        if cb is not None:
            cb("ffn_inp", x)
        h = self.ffn(self.ffn_norm(x))
        if self.residual_scale != 1.0:
            h *= self.residual_scale
        return x + h


class Model(llama.Model):
    arch = "granite"
    config_class = Config
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        freq_factors = w.vector("rope_freqs.weight", c.n_rot // 2) if w.has("rope_freqs.weight") else None
        rope = Rope(c.rope_params(), freq_factors) if c.use_rope else NoRope(c.rope_params())
        blocks = []
        for il in range(c.n_layer):
            b = cls.load_block(w, c, il, rope)
            blocks.append(Block(b.attn_norm, b.attn, b.ffn_norm, b.ffn, c.residual_scale))
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c),
                   embd_scale=c.embedding_scale)  # fmt: skip

    def _logits(self, x: np.ndarray) -> np.ndarray:
        logits = DecoderModel._logits(self, x)
        if self.config.logit_scale != 1.0:
            logits /= np.float32(self.config.logit_scale)
        return logits
