"""Layers of a transformer on quantized weights. They hold QTensors and call only the backend.

    Linear, Embedding        (linear.py)     y = x @ W.T (+ b); row lookup
    RMSNorm, rms_norm        (norm.py)
    Rope, RopeParams         (rope.py)       NORM and NEOX layouts, linear and YaRN scaling
    Attention, attend,       (attention.py)  GQA, causal mask, sliding window, QK-norm
      causal_mask
    GatedMLP                 (mlp.py)        SwiGLU / GeGLU
    KVCacheLike              (kv.py)         what attention needs from a cache (the engine implements it)
"""

from .attention import Attention, attend, causal_mask
from .kv import KVCacheLike
from .linear import Embedding, Linear
from .mlp import GatedMLP, gelu_tanh, silu
from .norm import RMSNorm, rms_norm
from .rope import Rope, RopeParams

__all__ = [
    "Attention",
    "attend",
    "causal_mask",
    "KVCacheLike",
    "Embedding",
    "Linear",
    "GatedMLP",
    "gelu_tanh",
    "silu",
    "RMSNorm",
    "rms_norm",
    "Rope",
    "RopeParams",
]
