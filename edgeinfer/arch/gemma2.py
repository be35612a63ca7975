"""gemma2: Gemma 2 (llama.cpp's src/models/gemma2.cpp).

Gemma 3's block without QK-norm, plus soft-capping:
- embedding scaled by sqrt(n_embd); sandwich norms (attn_norm, post_attention_norm, ffn_norm,
  post_ffw_norm); GeGLU feed-forward; NEOX rope; the output head is always token_embd (tied);
- attention scores soft-capped before the softmax: cap * tanh(scale q.k / cap), cap =
  attn_logit_softcapping (default 50);
- logits soft-capped: cap * tanh(logits / cap), cap = final_logit_softcapping (default 30);
- sliding-window attention on alternate layers: layer il is local when il % 2 == 0 (or as the file's
  attention.sliding_window_pattern says), window attention.sliding_window (default 4096); local layers
  may have their own rope.freq_base_swa;
- attention scale 1/sqrt(head_dim), 1/sqrt(n_embd / n_head) for the 46-layer 27B model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import GGUFError
from ..gguf import GGUFFile, typed
from ..kernels.base import Backend
from ..kernels.numpy_ops import attention
from ..nn import Attention, GatedMLP, Rope
from .base import BaseConfig, DecoderModel, Weights, meta, meta_float, meta_int
from .gemma3 import Block


def read_swa_layers(f: GGUFFile, n_layer: int, n_pattern: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: `{arch}.attention.sliding_window_pattern` as one bool per
    layer, or a period n (layer il is local when il % n < n - 1; 0: all local); else the family's period
    (llama.cpp's load_swa_pattern)."""
    v = meta(f, "attention.sliding_window_pattern", None)
    key = f"{f.architecture}.attention.sliding_window_pattern"
    if isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
        if isinstance(v, np.ndarray) and v.dtype == np.bool_:  # Gemma 4's converter writes bools
            v = v.astype(np.int8)
        arr = typed.as_num_array(key, np.asarray(v), where=f.path) if isinstance(v, np.ndarray) else np.asarray(v)
        if arr.size < n_layer:
            raise GGUFError(f"{f.path}: {key} has {arr.size} entries for {n_layer} layers; the file is corrupt.")
        return tuple(bool(x) for x in arr[:n_layer])
    if v is not None:
        n_pattern = typed.as_int(key, v, 0, 1 << 16, where=f.path)
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


@dataclass(frozen=True)
class Config(BaseConfig):
    n_swa: int = 4096
    swa_layers: tuple[bool, ...] = field(default=())
    attn_softcap: float = 50.0
    rope_freq_base_swa: float = 10000.0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        common = cls.read_common(f, rope_neox=True)
        if common["n_layer"] == 46:  # 27B: query_pre_attn_scalar = n_embd / n_head
            common["attn_scale"] = 1.0 / math.sqrt(common["n_embd"] / common["n_head"])
        common["tied_output"] = True  # llama.cpp always uses token_embd as the output head
        common["final_logit_softcap"] = meta_float(f, "final_logit_softcapping", 30.0, lo=0.0)
        return cls(
            **common,
            n_swa=meta_int(f, "attention.sliding_window", 4096, hi=1 << 31),
            swa_layers=read_swa_layers(f, common["n_layer"], 2),
            attn_softcap=meta_float(f, "attn_logit_softcapping", 50.0, lo=0.0),
            rope_freq_base_swa=meta_float(f, "rope.freq_base_swa", common["rope_freq_base"]),
        )

    def is_swa(self, il: int) -> bool:
        return self.n_swa > 0 and self.swa_layers[il]


class SoftcapBackend:
    """The layer's backend with its attention soft-capped: the backend's own attention_softcap when it
    has one, else the numpy form; all else passes through."""

    def __init__(self, backend: Backend, softcap: float):
        self.backend, self.softcap = backend, softcap

    def __getattr__(self, name: str):
        if name in ("backend", "softcap"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    def attention_many(self, items, n_swa: int, scale: float) -> list[np.ndarray]:
        own = getattr(self.backend, "attention_softcap", None)
        if own is not None:
            return own(items, n_swa, scale, self.softcap)
        # the generic form: numpy's attention over the cache's rows (any K/V storage format)
        return [attention(q, k, v, qp, kp, n_swa, scale, c, softcap=self.softcap) for q, k, v, qp, kp, c in items]


class Model(DecoderModel):
    arch = "gemma2"
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        rope_global = Rope(c.rope_params())
        rope_local = Rope(c.rope_params(c.rope_freq_base_swa))
        blocks = [cls.load_block(w, c, il, rope_local if c.is_swa(il) else rope_global) for il in range(c.n_layer)]
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c),
                   embd_scale=math.sqrt(c.n_embd))  # fmt: skip

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        attn = Attention(
            wq=w.linear(p + "attn_q", c.n_embd, c.n_head * c.head_dim),
            wk=w.linear(p + "attn_k", c.n_embd, c.n_head_kv * c.head_dim),
            wv=w.linear(p + "attn_v", c.n_embd, c.n_head_kv * c.head_dim_v),
            wo=w.linear(p + "attn_output", c.n_head * c.head_dim_v, c.n_embd),
            n_head=c.n_head,
            n_head_kv=c.n_head_kv,
            head_dim=c.head_dim,
            head_dim_v=c.head_dim_v,
            rope=rope,
            scale=c.attn_scale,
            n_swa=c.n_swa if c.is_swa(il) else 0,
        )
        if c.attn_softcap > 0:
            attn.backend = SoftcapBackend(attn.backend, c.attn_softcap)
        ffn = GatedMLP(
            gate=w.linear(p + "ffn_gate", c.n_embd, c.n_ff),
            up=w.linear(p + "ffn_up", c.n_embd, c.n_ff),
            down=w.linear(p + "ffn_down", c.n_ff, c.n_embd),
            act="gelu_tanh",
        )
        return Block(
            w.norm(p + "attn_norm", c.n_embd, c.rms_eps),
            attn,
            w.norm(p + "post_attention_norm", c.n_embd, c.rms_eps),
            w.norm(p + "ffn_norm", c.n_embd, c.rms_eps),
            ffn,
            w.norm(p + "post_ffw_norm", c.n_embd, c.rms_eps),
        )
