"""llama: Llama 2/3, Mistral, TinyLlama, SmolLM2, and Mixtral (llama.cpp's src/models/llama.cpp).

Pre-norm blocks with RMSNorm, GQA attention with NORM rope (consecutive pairs; the GGUF converter
permutes Q/K rows for it), SwiGLU feed-forward. Optional: biases on any projection, Llama 3's
rope_freqs.weight (per-pair frequency factors), attention.scale, a tied output head.

Mixtral is a llama file with `llama.expert_count`: every feed-forward is a Mixture of Experts (nn.moe),
softmax routing to the top `expert_used_count` experts, their weights renormalized to sum to one.
The subclasses (qwen2, qwen3, qwen2moe, qwen3moe, olmoe) change the class attributes below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..gguf import GGUFFile
from ..kernels.base import Backend
from ..nn import Attention, ForwardBatch, GatedMLP, RMSNorm, Rope
from .base import BaseConfig, DecoderModel, MoEConfig, Weights


@dataclass(frozen=True)
class Config(BaseConfig):
    rope_neox_default: ClassVar[bool] = False  # llama_model_rope_type: LLAMA_ROPE_TYPE_NORM
    moe_required: ClassVar[bool] = False  # the family is MoE only (qwen2moe, qwen3moe, olmoe)
    moe_norm_default: ClassVar[bool] = True  # renormalize the chosen experts' weights (Mixtral)

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        moe = MoEConfig.read(f, norm_default=cls.moe_norm_default, required=cls.moe_required)
        return cls(**cls.read_common(f, rope_neox=cls.rope_neox_default), moe=moe)


class Block:
    def __init__(self, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, ffn: GatedMLP):
        self.attn_norm, self.attn = attn_norm, attn
        self.ffn_norm, self.ffn = ffn_norm, ffn

    def __call__(
        self,
        x: np.ndarray,
        batch: ForwardBatch,
        il: int,
        cb: Callable[[str, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd)"""
        h = self.attn_norm(x)
        if cb is not None:
            cb("attn_norm", h)
        x = x + self.attn(h, batch, il, cb)
        if cb is not None:
            cb("ffn_inp", x)
        return x + self.ffn(self.ffn_norm(x))


class Model(DecoderModel):
    arch = "llama"
    config_class: ClassVar[type[Config]] = Config
    qkv_bias: ClassVar[bool | None] = None  # q/k/v biases: None = used when the file has them
    qk_norm: ClassVar[bool] = False  # attn_q_norm / attn_k_norm per head
    qk_norm_full: ClassVar[bool] = False  # ... over all of q and all of k instead (OLMoE)

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = cls.config_class.from_gguf(f)
        w = Weights(f, backend)
        freq_factors = w.vector("rope_freqs.weight", c.n_rot // 2) if w.has("rope_freqs.weight") else None
        rope = Rope(c.rope_params(), freq_factors)
        blocks = [cls.load_block(w, c, il, rope) for il in range(c.n_layer)]
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c))

    @classmethod
    def load_block(cls, w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        if cls.qk_norm_full:
            attn = w.attention(p, c, rope, qkv_bias=cls.qkv_bias, qk_norm_full=True,
                               q_norm=w.norm(p + "attn_q_norm", c.n_head * c.head_dim, c.rms_eps),
                               k_norm=w.norm(p + "attn_k_norm", c.n_head_kv * c.head_dim, c.rms_eps))  # fmt: skip
        else:
            attn = w.attention(p, c, rope, qkv_bias=cls.qkv_bias, qk_norm=cls.qk_norm)
        ffn = w.moe(p, c, act="silu") if c.moe is not None else w.gated_mlp(p, c.n_embd, c.n_ff, "silu")
        attn_norm = w.norm(p + "attn_norm", c.n_embd, c.rms_eps)
        return Block(attn_norm, attn, w.norm(p + "ffn_norm", c.n_embd, c.rms_eps), ffn)
