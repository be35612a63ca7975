"""gemma3: Gemma 3 text models (llama.cpp's src/models/gemma3.cpp, the iswa variant).

Differences from llama:
- the embedding is scaled by sqrt(n_embd);
- sandwich norms: RMSNorm before *and after* attention and the feed-forward (post_attention_norm,
  post_ffw_norm) -- the weights are used as stored, the converter already folded Gemma's 1 + w in;
- QK-norm: RMSNorm per head on q and k (attn_q_norm, attn_k_norm) before rope;
- NEOX rope; local layers use base 10000 and no scaling, global layers the file's base and scaling;
- sliding-window attention on local layers: 5 local : 1 global (layer il is global when il % 6 == 5);
- attention scale 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim), 1/sqrt(n_embd/n_head) for 27B;
- GeGLU feed-forward: gelu_tanh(gate) * up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFFile
from ..nn import Attention, ForwardBatch, GatedMLP, RMSNorm, Rope, RopeParams
from .base import BaseConfig, SlidingWindowModel, Weights, meta_int


@dataclass(frozen=True)
class Config(BaseConfig):
    n_swa: int = 0  # sliding window of the local layers, in tokens (0: every layer is global)
    swa_pattern: int = 6  # llama.cpp's set_swa_pattern(6)
    rope_freq_base_swa: float = 10000.0
    rope_freq_scale_swa: float = 1.0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=True)
        # llama.cpp: 1/sqrt(n_embd_head_k), except the 62-layer 27B model (query_pre_attn_scalar = n_embd/n_head)
        if common["n_layer"] == 62:
            common["attn_scale"] = 1.0 / math.sqrt(common["n_embd"] / common["n_head"])
        else:
            common["attn_scale"] = 1.0 / math.sqrt(common["head_dim"])
        return cls(**common, n_swa=meta_int(f, "attention.sliding_window", 0, hi=1 << 31))

    def is_swa(self, il: int) -> bool:
        """Whether layer il is a local (sliding-window) layer."""
        return self.n_swa > 0 and il % self.swa_pattern < self.swa_pattern - 1

    def rope_params_swa(self) -> RopeParams:
        """The local layers' rope: base 10000, no scaling."""
        return self.rope_params(self.rope_freq_base_swa, self.rope_freq_scale_swa)


class Block:
    def __init__(
        self,
        attn_norm: RMSNorm,
        attn: Attention,
        post_attention_norm: RMSNorm,
        ffn_norm: RMSNorm,
        ffn: GatedMLP,
        post_ffw_norm: RMSNorm,
    ):
        self.attn_norm, self.attn, self.post_attention_norm = attn_norm, attn, post_attention_norm
        self.ffn_norm, self.ffn, self.post_ffw_norm = ffn_norm, ffn, post_ffw_norm

    @classmethod
    def load(cls, w: Weights, c: BaseConfig, p: str, attn: Attention, ffn: GatedMLP) -> "Block":
        """The block of prefix p around its attention and feed-forward: the four norms of its sandwich."""
        norm = lambda name: w.norm(p + name, c.n_embd, c.rms_eps)  # noqa: E731
        return cls(norm("attn_norm"), attn, norm("post_attention_norm"), norm("ffn_norm"), ffn, norm("post_ffw_norm"))

    def __call__(
        self,
        x: np.ndarray,
        batch: ForwardBatch,
        il: int,
        cb: Callable[[str, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd)"""
        h = self.attn_norm(x)
        h = self.attn(h, batch, il, cb)
        x = x + self.post_attention_norm(h)
        if cb is not None:
            cb("sa_out", x)
        h = self.ffn(self.ffn_norm(x))
        return x + self.post_ffw_norm(h)


class Model(SlidingWindowModel):
    arch = "gemma3"
    config_class = Config
    config: Config
    scale_embd = True

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        attn = w.attention(p, c, rope, qk_norm=True, n_swa=c.n_swa if c.is_swa(il) else 0)
        return Block.load(w, c, p, attn, w.gated_mlp(p, c.n_embd, c.n_ff, "gelu_tanh"))
