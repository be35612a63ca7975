"""qwen3moe: Qwen 3 MoE models, e.g. Qwen3-30B-A3B (llama.cpp's src/models/qwen3moe.cpp).

A qwen3 block (per-head QK-norm, NEOX rope, no biases) whose feed-forward is a Mixture of Experts:
softmax routing to the top `expert_used_count` experts, their weights renormalized to sum to one
(norm_topk_prob = true); no shared expert. The experts' size is `expert_feed_forward_length`.
"""

from __future__ import annotations

from typing import ClassVar

from . import qwen3


class Config(qwen3.Config):
    moe_required: ClassVar[bool] = True
    moe_norm_default: ClassVar[bool] = True


class Model(qwen3.Model):
    arch = "qwen3moe"
    config_class = Config
