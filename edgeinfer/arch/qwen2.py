"""qwen2: Qwen 2 / 2.5 (llama.cpp's src/models/qwen2.cpp).

A llama block with biases on q, k and v (required) and NEOX rope.
"""

from __future__ import annotations

from typing import ClassVar

from . import llama


class Config(llama.Config):
    rope_neox_default: ClassVar[bool] = True  # llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX


class Model(llama.Model):
    arch = "qwen2"
    config_class = Config
    qkv_bias = True
