"""olmoe: AllenAI's OLMoE (llama.cpp's src/models/olmoe.cpp).

A llama-style block with NEOX rope and QK-norm over the *whole* q and k projections (attn_q_norm of
n_head * head_dim values, attn_k_norm of n_head_kv * head_dim, applied before the split into heads,
where Qwen 3 normalizes each head); no biases. The feed-forward is a Mixture of Experts: softmax routing
to the top `expert_used_count` experts without renormalizing their weights (norm_topk_prob = false);
the experts' size is `feed_forward_length`.
"""

from __future__ import annotations

from typing import ClassVar

from . import llama


class Config(llama.Config):
    rope_neox_default: ClassVar[bool] = True  # llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX
    moe_required: ClassVar[bool] = True
    moe_norm_default: ClassVar[bool] = False


class Model(llama.Model):
    arch = "olmoe"
    config_class = Config
    qkv_bias = False
    qk_norm_full = True
