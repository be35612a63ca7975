"""phi3: Phi-3 / Phi-3.5-mini and Phi-4-mini (llama.cpp's src/models/phi3.cpp).

A llama-shaped pre-norm block with:
- one fused projection `attn_qkv` (rows [q | k | v]; some files carry separate attn_q/k/v instead);
- one fused feed-forward input `ffn_up` of 2 * n_ff rows, [gate | up]: SwiGLU, silu(gate) * up;
- NEOX rope, possibly partial (Phi-4-mini rotates 96 of 128 values), with LongRoPE ("su") frequency
  factors: `rope_factors_short` while the context per sequence is at most
  rope.scaling.original_context_length, `rope_factors_long` beyond it (llama.cpp's get_rope_factors,
  decided by the cache's size), and rope.scaling.attn_factor scaling cos and sin;
- no sliding window (llama.cpp disables Phi's SWA: the file's attention.sliding_window is ignored);
- an optional output bias.
The fused weights are split into row views at load (zero-copy) and stacked back by nn, so the matmuls
are the same single products llama.cpp runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..gguf import GGUFFile
from ..kernels.base import Backend, QTensor
from ..nn import Attention, ForwardBatch, GatedMLP, Linear, RMSNorm, Rope
from . import llama
from .base import BaseConfig, DecoderModel, Weights


@dataclass(frozen=True)
class Config(BaseConfig):
    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        return cls(**cls.read_common(f, rope_neox=True))


def split_rows(w: Weights, name: str, n_in: int, sizes: list[int]) -> list[Linear]:
    """A fused weight `{name}.weight` (n_in -> sum(sizes)) as one Linear per part (row views of the same
    bytes), with `{name}.bias` split the same way when the file has it."""
    t = w.qtensor(f"{name}.weight", (n_in, sum(sizes)))
    bias = w.vector(f"{name}.bias", sum(sizes)) if w.has(f"{name}.bias") else None
    parts, r0 = [], 0
    for n in sizes:
        part = QTensor(t.name, t.ggml_type, (n_in, n), t.raw[r0 : r0 + n])
        parts.append(Linear(part, w.backend_for(name), None if bias is None else bias[r0 : r0 + n].copy()))
        r0 += n
    return parts


class Block(llama.Block):
    """llama's block (pre-norm attention and SwiGLU); the rope factors (short or long) chosen per pass by the
    context."""

    def __init__(self, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, ffn: GatedMLP, ropes: tuple,
                 n_ctx_orig: int):  # fmt: skip
        super().__init__(attn_norm, attn, ffn_norm, ffn)
        self.rope_short, self.rope_long = ropes
        self.n_ctx_orig = n_ctx_orig

    def __call__(self, x: np.ndarray, batch: ForwardBatch, il: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        # llama.cpp: n_ctx_seq > n_ctx_orig_yarn -> rope_factors_long (one context, one choice)
        long = max(s.cache.n_ctx for s in batch.seqs) > self.n_ctx_orig
        self.attn.rope = self.rope_long if long else self.rope_short
        return super().__call__(x, batch, il, cb)


class Model(DecoderModel):
    arch = "phi3"
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        half = c.n_rot // 2
        if w.has("rope_freqs.weight"):  # get_rope_factors: rope_freqs wins over long/short
            short = long = w.vector("rope_freqs.weight", half)
        else:
            short = w.vector("rope_factors_short.weight", half) if w.has("rope_factors_short.weight") else None
            long = w.vector("rope_factors_long.weight", half) if w.has("rope_factors_long.weight") else None
        ropes = (Rope(c.rope_params(), short), Rope(c.rope_params(), long))
        blocks = [cls.load_block(w, c, il, ropes) for il in range(c.n_layer)]
        name = "token_embd.weight" if c.tied_output else "output.weight"
        bias = w.vector("output.bias", c.n_vocab) if w.has("output.bias") else None
        output = Linear(w.qtensor(name, (c.n_embd, c.n_vocab)), w.backend_for("output.weight"), bias)
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), output)

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, ropes: tuple) -> Block:
        p = f"blk.{il}."
        qkv = None  # separate attn_q, attn_k, attn_v
        if w.has(p + "attn_qkv.weight"):
            nq, nk, nv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v
            qkv = tuple(split_rows(w, p + "attn_qkv", c.n_embd, [nq, nk, nv]))
        attn = w.attention(p, c, ropes[0], qkv=qkv)
        gate, up = split_rows(w, p + "ffn_up", c.n_embd, [c.n_ff, c.n_ff])  # LLM_FFN_SWIGLU: [gate | up]
        ffn = GatedMLP(gate=gate, up=up, down=w.linear(p + "ffn_down", c.n_ff, c.n_embd), act="silu")
        return Block(w.norm(p + "attn_norm", c.n_embd, c.rms_eps), attn, w.norm(p + "ffn_norm", c.n_embd, c.rms_eps),
                     ffn, ropes, c.rope_n_ctx_orig)  # fmt: skip
