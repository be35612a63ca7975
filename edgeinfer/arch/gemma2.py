"""gemma2: Gemma 2 (llama.cpp's src/models/gemma2.cpp).

Gemma 3's block without QK-norm, plus soft-capping:
- embedding scaled by sqrt(n_embd); sandwich norms (attn_norm, post_attention_norm, ffn_norm,
  post_ffw_norm); GeGLU feed-forward; NEOX rope; the output head is always token_embd (tied);
- attention scores soft-capped before the softmax: cap * tanh(scale q.k / cap), cap =
  attn_logit_softcapping (default 50);
- logits soft-capped: cap * tanh(logits / cap), cap = final_logit_softcapping (default 30);
- sliding-window attention on alternate layers: layer il is local when il % 2 == 0 (or as the file's
  attention.sliding_window_pattern says), window attention.sliding_window (default 4096); local layers
  may have their own rope.freq_base_swa;
- attention scale 1/sqrt(head_dim), 1/sqrt(n_embd / n_head) for the 46-layer 27B model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFFile
from ..kernels.base import Backend
from ..kernels.numpy_ops import attention
from ..nn import Rope
from .base import SlidingWindowConfig, SlidingWindowModel, Weights, meta_float
from .gemma3 import Block


@dataclass(frozen=True)
class Config(SlidingWindowConfig):
    n_swa: int = 4096
    attn_softcap: float = 50.0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=True)
        if common["n_layer"] == 46:  # 27B: query_pre_attn_scalar = n_embd / n_head
            common["attn_scale"] = 1.0 / math.sqrt(common["n_embd"] / common["n_head"])
        common["tied_output"] = True  # llama.cpp always uses token_embd as the output head
        common["final_logit_softcap"] = meta_float(f, "final_logit_softcapping", 30.0, lo=0.0)
        return cls(**common, **cls.read_swa(f, common, 2, n_swa=4096),
                   attn_softcap=meta_float(f, "attn_logit_softcapping", 50.0, lo=0.0))  # fmt: skip


class SoftcapBackend:
    """The layer's backend with its attention soft-capped: the backend's own attention_softcap when it
    has one, else the numpy form; all else passes through."""

    def __init__(self, backend: Backend, softcap: float):
        self.backend, self.softcap = backend, softcap

    def __getattr__(self, name: str):
        if name in ("backend", "softcap"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    def attention_many(self, items, n_swa: int, scale: float) -> list[np.ndarray]:
        own = getattr(self.backend, "attention_softcap", None)
        if own is not None:
            return own(items, n_swa, scale, self.softcap)
        # the generic form: numpy's attention over the cache's rows (any K/V storage format)
        return [attention(q, k, v, qp, kp, n_swa, scale, c, softcap=self.softcap) for q, k, v, qp, kp, c in items]


class Model(SlidingWindowModel):
    arch = "gemma2"
    config_class = Config
    config: Config
    scale_embd = True

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        attn = w.attention(p, c, rope, n_swa=c.n_swa if c.is_swa(il) else 0)
        if c.attn_softcap > 0:
            attn.backend = SoftcapBackend(attn.backend, c.attn_softcap)
        return Block.load(w, c, p, attn, w.gated_mlp(p, c.n_embd, c.n_ff, "gelu_tanh"))
