"""gpt-oss: OpenAI's gpt-oss-20b and -120b (llama.cpp's LLM_ARCH_OPENAI_MOE, src/models/openai-moe.cpp).

A pre-norm block, norm -> attend -> add, norm -> MoE -> add (the second norm is `post_attention_norm`),
with:
- attention with biases on Q, K, V and the output, and attention sinks: one learned logit per query
  head (`attn_sinks`, unscaled) in every softmax's denominator, attended by no value;
- sliding-window attention on alternate layers (layer il is local when il % 2 == 0, or as the file's
  attention.sliding_window_pattern says), window attention.sliding_window (128 in the real files);
- NEOX rope with YaRN scaling (rope.scaling.*: factor 32 over 4096 positions), the same in every layer
  unless the file has rope.freq_base_swa; q.k scaled by 1/sqrt(n_rot);
- a Mixture-of-Experts feed-forward in every block: router with a bias (ffn_gate_inp.bias); the
  `expert_used_count` experts of the largest logits, weighted by the softmax of those logits only
  (llama.cpp's SOFTMAX_WEIGHT gating); experts with biases (ffn_{gate,up,down}_exps.bias) and OpenAI's
  clamped SwiGLU, min(g, 7) sigmoid(1.702 min(g, 7)) (clip(u, -7, 7) + 1); MXFP4 experts in the real files;
- an untied output head (output.weight).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..gguf import GGUFFile
from ..nn import Rope
from .base import MoEConfig, SlidingWindowConfig, SlidingWindowModel, Weights
from .llama import Block


@dataclass(frozen=True)
class Config(SlidingWindowConfig):
    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=True)
        common["attn_scale"] = 1.0 / math.sqrt(common["n_rot"])
        common["tied_output"] = False  # llama.cpp requires output.weight
        moe = MoEConfig.read(f, norm_default=False, required=True)
        # the family's routing, whatever keys the file carries (llama.cpp's graph fixes it too)
        moe = dataclasses.replace(moe, gating="softmax_weight", norm_weights=False)
        return cls(**common, moe=moe, **cls.read_swa(f, common, 2))


class Model(SlidingWindowModel):
    arch = "gpt-oss"
    config_class = Config
    config: Config

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        attn = w.attention(p, c, rope, qkv_bias=True, out_bias=True, n_swa=c.n_swa if c.is_swa(il) else 0,
                           sinks=w.vector(p + "attn_sinks.weight", c.n_head))  # fmt: skip
        ffn = w.moe(p, c, act="swiglu_oai", expert_bias=True)
        return Block(w.norm(p + "attn_norm", c.n_embd, c.rms_eps), attn,
                     w.norm(p + "post_attention_norm", c.n_embd, c.rms_eps), ffn)  # fmt: skip
