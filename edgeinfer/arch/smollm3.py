"""smollm3: SmolLM3 (llama.cpp's src/models/smollm3.cpp).

A llama block (NORM rope, GQA, SwiGLU, tied output) whose every fourth layer has no rotary embedding:
layer il rotates q and k only when (il + 1) % 4 != 0 (llama.cpp's n_no_rope_layer_step, fixed at 4).
"""

from __future__ import annotations

from ..gguf import GGUFFile
from ..kernels.base import Backend
from ..nn import NoRope, Rope
from . import llama
from .base import Weights

N_NO_ROPE_LAYER_STEP = 4


class Config(llama.Config):
    pass


class Model(llama.Model):
    arch = "smollm3"
    config_class = Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = cls.config_class.from_gguf(f)
        w = Weights(f, backend)
        freq_factors = w.vector("rope_freqs.weight", c.n_rot // 2) if w.has("rope_freqs.weight") else None
        rope, no_rope = Rope(c.rope_params(), freq_factors), NoRope(c.rope_params())
        blocks = [
            cls.load_block(w, c, il, rope if (il + 1) % N_NO_ROPE_LAYER_STEP else no_rope) for il in range(c.n_layer)
        ]
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c))
