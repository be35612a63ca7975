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
from dataclasses import dataclass, field

from ..gguf import GGUFFile
from ..kernels.base import Backend
from ..nn import Attention, Rope
from .base import BaseConfig, DecoderModel, MoEConfig, Weights, meta_float, meta_int
from .gemma2 import read_swa_layers
from .llama import Block


@dataclass(frozen=True)
class Config(BaseConfig):
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = field(default=())
    rope_freq_base_swa: float = 10000.0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=True)
        common["attn_scale"] = 1.0 / math.sqrt(common["n_rot"])
        common["tied_output"] = False  # llama.cpp requires output.weight
        moe = MoEConfig.read(f, norm_default=False, required=True)
        # the family's routing, whatever keys the file carries (llama.cpp's graph fixes it too)
        moe = dataclasses.replace(moe, gating="softmax_weight", norm_weights=False)
        return cls(
            **common,
            moe=moe,
            n_swa=meta_int(f, "attention.sliding_window", hi=1 << 31),
            swa_layers=read_swa_layers(f, common["n_layer"], 2),
            rope_freq_base_swa=meta_float(f, "rope.freq_base_swa", common["rope_freq_base"]),
        )

    def is_swa(self, il: int) -> bool:
        return self.n_swa > 0 and self.swa_layers[il]


class Model(DecoderModel):
    arch = "gpt-oss"
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        rope_global = Rope(c.rope_params())
        rope_local = Rope(c.rope_params(c.rope_freq_base_swa))
        blocks = [cls.load_block(w, c, il, rope_local if c.is_swa(il) else rope_global) for il in range(c.n_layer)]
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c))

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        attn = Attention(
            wq=w.linear(p + "attn_q", c.n_embd, nq, bias=True),
            wk=w.linear(p + "attn_k", c.n_embd, nkv, bias=True),
            wv=w.linear(p + "attn_v", c.n_embd, c.n_head_kv * c.head_dim_v, bias=True),
            wo=w.linear(p + "attn_output", c.n_head * c.head_dim_v, c.n_embd, bias=True),
            n_head=c.n_head,
            n_head_kv=c.n_head_kv,
            head_dim=c.head_dim,
            head_dim_v=c.head_dim_v,
            rope=rope,
            scale=c.attn_scale,
            n_swa=c.n_swa if c.is_swa(il) else 0,
            sinks=w.vector(p + "attn_sinks.weight", c.n_head),
        )
        ffn = w.moe(p, c, act="swiglu_oai", expert_bias=True)
        return Block(w.norm(p + "attn_norm", c.n_embd, c.rms_eps), attn,
                     w.norm(p + "post_attention_norm", c.n_embd, c.rms_eps), ffn)  # fmt: skip
