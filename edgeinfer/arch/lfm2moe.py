"""lfm2moe: LiquidAI's LFM2-8B-A1B and LFM2-24B-A2B (llama.cpp's src/models/lfm2moe.cpp, on LFM2's graph).

LFM2's blocks (arch.lfm2: short convolutions and attention, the convolution rows in the cache); the
feed-forward of every layer from `leading_dense_block_count` on is a Mixture of Experts: routing by
`expert_gating_func` (sigmoid in these files) with a selection bias (`exp_probs_b`, DeepSeek V3's: it
picks the experts, the unbiased scores weigh them), the chosen experts' weights renormalized to sum to
one and never scaled (llama.cpp reads neither expert_weights_norm nor expert_weights_scale here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..gguf import GGUFFile
from ..nn import GatedMLP
from ..nn.moe import MoE
from . import lfm2
from .base import MAX_COUNT, MoEConfig, Weights, meta_int


@dataclass(frozen=True)
class Config(lfm2.Config):
    n_layer_dense_lead: int = 0  # leading_dense_block_count: the first layers keep a dense feed-forward

    @classmethod
    def read(cls, f: GGUFFile) -> dict:
        moe = MoEConfig.read(f, norm_default=True, required=True)
        return dict(
            super().read(f),
            moe=dataclasses.replace(moe, norm_weights=True, weights_scale=1.0),
            n_layer_dense_lead=meta_int(f, "leading_dense_block_count", 0, hi=MAX_COUNT),
        )


class Model(lfm2.Model):
    arch = "lfm2moe"
    config_class = Config
    config: Config

    @classmethod
    def load_ffn(cls, w: Weights, c: Config, il: int) -> GatedMLP | MoE:
        if il < c.n_layer_dense_lead:
            return super().load_ffn(w, c, il)
        return w.moe(f"blk.{il}.", c, act="silu")
