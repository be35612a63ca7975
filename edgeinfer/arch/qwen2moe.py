"""qwen2moe: Qwen 1.5-MoE and Qwen2-57B-A14B (llama.cpp's src/models/qwen2moe.cpp).

A qwen2 block (q/k/v biases, NEOX rope) whose feed-forward is a Mixture of Experts: softmax routing to
the top `expert_used_count` experts *without* renormalizing their weights, plus a shared expert run for
every token (ffn_*_shexp, `expert_shared_feed_forward_length`) scaled by sigmoid(ffn_gate_inp_shexp . x).
The routed experts' size is `expert_feed_forward_length`.
"""

from __future__ import annotations

from typing import ClassVar

from . import qwen2


class Config(qwen2.Config):
    moe_required: ClassVar[bool] = True
    moe_norm_default: ClassVar[bool] = False  # Qwen2-MoE: norm_topk_prob = false


class Model(qwen2.Model):
    arch = "qwen2moe"
    config_class = Config
