"""qwen3: Qwen 3 dense models (llama.cpp's src/models/qwen3.cpp).

A llama block with QK-norm (RMSNorm per head on q and k, before rope), NEOX rope, no biases.
"""

from __future__ import annotations

from typing import ClassVar

from . import llama


class Config(llama.Config):
    rope_neox_default: ClassVar[bool] = True  # llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX


class Model(llama.Model):
    arch = "qwen3"
    config_class = Config
    qkv_bias = False
    qk_norm = True
