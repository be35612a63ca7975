"""Layers of a transformer on quantized weights. They hold QTensors and call only the backend.

    Linear, Embedding        (linear.py)     y = x @ W.T (+ b); row lookup
    RMSNorm                  (norm.py)
    Rope, RopeParams         (rope.py)       NORM and NEOX layouts, linear and YaRN scaling
    NoRope                   (rope.py)       a layer without rotary embedding (SmolLM3, Granite)
    Attention, causal_mask   (attention.py)  GQA, causal mask, sliding window, QK-norm
    ForwardBatch, SeqRows    (batch.py)      what one forward pass runs over: rows, positions, caches
    GatedMLP                 (mlp.py)        SwiGLU / GeGLU
    KVCacheLike              (kv.py)         what attention needs from a cache (the engine implements it)
    KV_TYPES, kv_type        (kv.py)         the formats a cache stores K and V in: f16, q8_0, f32
"""

from .attention import Attention, causal_mask
from .batch import ForwardBatch, SeqRows
from .kv import KV_TYPES, KVCacheLike, kv_type
from .linear import Embedding, Linear
from .mlp import GatedMLP
from .norm import RMSNorm
from .rope import NoRope, Rope, RopeParams

__all__ = [
    "Attention",
    "ForwardBatch",
    "SeqRows",
    "causal_mask",
    "KVCacheLike",
    "KV_TYPES",
    "kv_type",
    "Embedding",
    "Linear",
    "GatedMLP",
    "RMSNorm",
    "Rope",
    "NoRope",
    "RopeParams",
]
