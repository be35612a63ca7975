"""lfm2: LiquidAI's LFM2 and LFM2.5 (llama.cpp's src/models/lfm2.cpp).

A hybrid: every block is pre-norm (`attn_norm`, llama.cpp's operator_norm), then either a gated short
convolution (nn.shortconv: in_proj -> B, C, x; B x through a causal depthwise convolution of
`shortconv.l_cache` taps; times C; out_proj) or GQA attention with QK-norm (RMSNorm per head) and NEOX
rope, added to the residual; then a SwiGLU feed-forward (`ffn_norm`). Which layers attend is given by
`attention.head_count_kv`, one value per layer: 0 for a convolution layer. Optional
`attention.sliding_window`: every attention layer then looks back that far. The output norm is the
tensor llama.cpp calls `token_embd_norm`; the output head is `output` or the tied embedding.

The cache holds K and V of the attention layers and, per token, the row each convolution layer reads
(engine.kv_cache: n_conv_layer rows of n_embd), so rollback and prefix sharing need nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import EdgeInferError, GGUFError, UnsupportedArchitectureError
from ..gguf import GGUFFile, typed
from ..kernels.base import Backend
from ..nn import Attention, ForwardBatch, GatedMLP, RMSNorm, Rope
from ..nn.kv import kv_type
from ..nn.moe import MoE
from ..nn.shortconv import ShortConv
from .base import MAX_COUNT, BaseConfig, DecoderModel, Weights, meta, meta_bool, meta_int


def read_kv_heads(f: GGUFFile, n_layer: int) -> tuple[int, ...]:
    """attention.head_count_kv per layer (one value for all, or an array: 0 marks a convolution layer)."""
    key = f"{f.architecture}.attention.head_count_kv"
    v = meta(f, "attention.head_count_kv")
    if not isinstance(v, np.ndarray):
        return (typed.as_int(key, v, 0, MAX_COUNT, where=f.path),) * n_layer
    arr = typed.as_num_array(key, v, where=f.path, integer=True)
    if arr.size < n_layer:
        raise GGUFError(f"{f.path}: {key} has {arr.size} entries for {n_layer} layers; the file is corrupt.")
    return tuple(typed.as_int(key, x, 0, MAX_COUNT, where=f.path) for x in arr[:n_layer])


@dataclass(frozen=True)
class Config(BaseConfig):
    n_conv_taps: int = 3  # shortconv.l_cache: L
    attn_layers: tuple[bool, ...] = field(default=())  # per layer: attention (True) or short convolution
    n_swa: int = 0  # attention.sliding_window of every attention layer; 0: none

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        return cls(**cls.read(f))

    @classmethod
    def read(cls, f: GGUFFile) -> dict:
        """The fields, from the file's metadata."""
        n_layer = meta_int(f, "block_count", lo=1, hi=MAX_COUNT)
        heads_kv = read_kv_heads(f, n_layer)
        used = {h for h in heads_kv if h}
        if len(used) > 1:
            raise UnsupportedArchitectureError(
                f"{f.path}: the attention layers of this LFM2 file have different KV head counts ({sorted(used)}); "
                "edgeinfer supports one count for all of them.")  # fmt: skip
        if not meta_bool(f, "attention.causal", True):
            raise UnsupportedArchitectureError(
                f"{f.path} is a bidirectional LFM2 (attention.causal = false: an embedding model whose "
                "convolutions look both ways), which edgeinfer does not run; it runs the causal LFM2 models.")
        common = cls.read_common(f, rope_neox=True, n_head_kv=used.pop() if used else 1)
        return dict(
            **common,
            n_conv_taps=meta_int(f, "shortconv.l_cache", lo=2, hi=1 << 10),
            attn_layers=tuple(h > 0 for h in heads_kv),
            n_swa=meta_int(f, "attention.sliding_window", 0, hi=1 << 31),
        )

    @property
    def n_attn_layer(self) -> int:
        return sum(self.attn_layers)

    def cache_layers(self) -> tuple[int, int, int]:
        return self.n_attn_layer, self.n_layer - self.n_attn_layer, self.n_embd

    def kv_dims(self) -> dict:
        """K and V for the attention layers only, and one row of n_embd per token for each convolution layer."""
        n_attn, n_conv, conv_dim = self.cache_layers()
        return dict(n_layer=n_attn, n_head_kv=self.n_head_kv, head_dim=self.head_dim, head_dim_v=self.head_dim_v,
                    n_conv_layer=n_conv, conv_dim=conv_dim)  # fmt: skip


class Block:
    """x + op(attn_norm(x)), op a short convolution or attention; then + ffn(ffn_norm(x)).
    `index`: the layer's number among the layers of its kind (its rows in the cache)."""

    def __init__(self, attn_norm: RMSNorm, op: ShortConv | Attention, index: int, ffn_norm: RMSNorm, ffn: GatedMLP):
        self.attn_norm, self.op, self.index = attn_norm, op, index
        self.ffn_norm, self.ffn = ffn_norm, ffn

    def __call__(self, x: np.ndarray, batch: ForwardBatch, il: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        """x (n_tokens, n_embd) -> (n_tokens, n_embd)"""
        h = self.attn_norm(x)
        if cb is not None:
            cb("operator_norm", h)
        x = x + self.op(h, batch, self.index, cb)
        if cb is not None:
            cb("ffn_inp", x)
        return x + self.ffn(self.ffn_norm(x))


class Model(DecoderModel):
    arch = "lfm2"
    config_class: ClassVar[type[Config]] = Config
    config: Config

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = cls.config_class.from_gguf(f)
        w = Weights(f, backend)
        rope = Rope(c.rope_params())
        blocks, n_seen = [], [0, 0]  # convolution layers, attention layers so far
        for il, attends in enumerate(c.attn_layers):
            p = f"blk.{il}."
            op = w.attention(p, c, rope, qk_norm=True, n_swa=c.n_swa) if attends else cls.load_shortconv(w, c, p)
            blocks.append(Block(w.norm(p + "attn_norm", c.n_embd, c.rms_eps), op, n_seen[attends],
                                w.norm(p + "ffn_norm", c.n_embd, c.rms_eps), cls.load_ffn(w, c, il)))  # fmt: skip
            n_seen[attends] += 1
        output_norm = w.norm("token_embd_norm", c.n_embd, c.rms_eps)  # llama.cpp's LLM_TENSOR_OUTPUT_NORM_LFM2
        return cls(c, backend, w.embedding(c), blocks, output_norm, w.output(c))

    @classmethod
    def load_ffn(cls, w: Weights, c: Config, il: int) -> GatedMLP | MoE:
        return w.gated_mlp(f"blk.{il}.", c.n_embd, c.n_ff, "silu")

    @staticmethod
    def load_shortconv(w: Weights, c: Config, p: str) -> ShortConv:
        name = p + "shortconv.conv.weight"
        kernel = w.backend_for(name).dequantize(w.qtensor(name, (c.n_conv_taps, c.n_embd)))
        return ShortConv(
            w.linear(p + "shortconv.in_proj", c.n_embd, 3 * c.n_embd),
            kernel.reshape(c.n_embd, c.n_conv_taps),
            w.linear(p + "shortconv.out_proj", c.n_embd, c.n_embd),
        )

    def set_kv_type(self, name: str) -> None:
        """As DecoderModel's, and the convolution rows (n_embd values each) must fit the format too."""
        t = kv_type(name)
        if self.config.n_attn_layer < self.config.n_layer and self.config.n_embd % t.block:
            raise EdgeInferError(f"kv_type {t.name!r} stores rows in blocks of {t.block} values, but this model's "
                                 f"convolution rows hold {self.config.n_embd}: load it with kv_type='f16' or 'f32'.")
        super().set_kv_type(name)
