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
from ..kernels.base import Backend
from ..nn import Attention, ForwardBatch, GatedMLP, RMSNorm, Rope
from .base import BaseConfig, DecoderModel, Weights, meta_int


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


class Model(DecoderModel):
    arch = "gemma3"
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        rope_global = Rope(c.rope_params())
        rope_local = Rope(c.rope_params(c.rope_freq_base_swa, c.rope_freq_scale_swa))
        blocks = [
            cls.load_block(w, c, il, rope_local if c.is_swa(il) else rope_global) for il in range(c.n_layer)
        ]
        return cls(
            c,
            backend,
            w.embedding(c),
            blocks,
            w.norm("output_norm", c.n_embd, c.rms_eps),
            w.output(c),
            embd_scale=math.sqrt(c.n_embd),
        )

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        attn = Attention(
            wq=w.linear(p + "attn_q", c.n_embd, c.n_head * c.head_dim),
            wk=w.linear(p + "attn_k", c.n_embd, c.n_head_kv * c.head_dim),
            wv=w.linear(p + "attn_v", c.n_embd, c.n_head_kv * c.head_dim_v),
            wo=w.linear(p + "attn_output", c.n_head * c.head_dim_v, c.n_embd),
            n_head=c.n_head,
            n_head_kv=c.n_head_kv,
            head_dim=c.head_dim,
            head_dim_v=c.head_dim_v,
            rope=rope,
            scale=c.attn_scale,
            q_norm=w.norm(p + "attn_q_norm", c.head_dim, c.rms_eps),
            k_norm=w.norm(p + "attn_k_norm", c.head_dim, c.rms_eps),
            n_swa=c.n_swa if c.is_swa(il) else 0,
        )
        ffn = GatedMLP(
            gate=w.linear(p + "ffn_gate", c.n_embd, c.n_ff),
            up=w.linear(p + "ffn_up", c.n_embd, c.n_ff),
            down=w.linear(p + "ffn_down", c.n_ff, c.n_embd),
            act="gelu_tanh",
        )
        return Block(
            w.norm(p + "attn_norm", c.n_embd, c.rms_eps),
            attn,
            w.norm(p + "post_attention_norm", c.n_embd, c.rms_eps),
            w.norm(p + "ffn_norm", c.n_embd, c.rms_eps),
            ffn,
            w.norm(p + "post_ffw_norm", c.n_embd, c.rms_eps),
        )
