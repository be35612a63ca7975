"""The small protocol every backend (numba, native, cuda) implements, and the weight type it consumes.

Model code (nn/, arch/) holds `QTensor`s and calls only these methods; it never knows the quant format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from gguf.constants import GGMLQuantizationType


@dataclass(frozen=True)
class QTensor:
    """A weight in its file format: raw blocks, zero-copy from the mmap.

    raw: uint8 (n_rows, row_bytes), read-only (for 3-D expert tensors: (n_expert, n_rows, row_bytes))
    ne:  ggml order dims, ne[0] = n_cols (the row length, the reduction axis of a matmul)
    layout: "plain" (the file's rows), or a backend's own arrangement of the same blocks made by its
         prepare() at load ("x8": rows interleaved eight at a time, native/x8.h; raw is then
         (ceil(n_rows / 8) * 8, row_bytes)); only the backend that made it can run it
    """

    name: str
    ggml_type: GGMLQuantizationType
    ne: tuple[int, ...]
    raw: np.ndarray
    layout: str = "plain"

    @property
    def n_cols(self) -> int:
        return self.ne[0]

    @property
    def n_rows(self) -> int:
        return self.ne[1] if len(self.ne) > 1 else 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @classmethod
    def concat_rows(cls, name: str, parts: "list[QTensor]") -> "QTensor":
        """One weight whose rows are the rows of `parts` in order (same type and row length): one
        matmul then computes all of them, with one pass over x. The bytes are copied once."""
        first = parts[0]
        if any(p.layout != "plain" for p in parts):
            raise ValueError(f"{name}: can only stack weights in the file's layout")
        for p in parts[1:]:
            if p.ggml_type != first.ggml_type or p.n_cols != first.n_cols or p.raw.ndim != 2 or len(p.ne) > 2:
                raise ValueError(f"{name}: can only stack 2-D weights of one type and row length")
        raw = np.concatenate([p.raw for p in parts], axis=0)
        return cls(name, first.ggml_type, (first.n_cols, raw.shape[0]), raw)

    @classmethod
    def from_tensor_info(cls, t) -> "QTensor":
        raw = t.data.reshape(-1, t.data.shape[-1]) if len(t.ne) <= 2 else t.data.reshape(t.ne[2], t.ne[1], -1)
        return cls(t.name, t.ggml_type, tuple(t.ne), raw)


@dataclass(frozen=True, eq=False)
class HeadSpec:
    """An attention layer's head geometry and rope settings, as qkv_store needs them: n_head query heads
    of head_dim, n_head_kv K/V heads (K of head_dim, V of head_dim_v), rope over the first n_rot values
    of each head (NEOX: pairs half apart, else consecutive), optional per-head QK-norm (RMSNorm weights
    (head_dim,) or None, and its eps)."""

    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    n_rot: int
    neox: bool
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    eps: float = 0.0


class Backend(Protocol):
    """Quantized products and the small ops of a layer (float32, C-contiguous arrays; each returns a
    new array). kernels.numpy_ops defines the small ops' meaning; every backend matches it. Backends
    inherit `BackendDefaults` for the methods that have a generic form (prepare, attention_many)."""

    name: str

    def prepare(self, w: QTensor) -> QTensor:
        """The weight in the layout this backend runs fastest (called once per matmul weight at load;
        the weight itself, or a repacked copy of its blocks that only this backend reads)."""
        ...

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows)."""

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Embedding lookup: float32 (len(ids), n_cols), rows of W dequantized."""

    def dequantize(self, w: QTensor) -> np.ndarray:
        """The whole tensor as float32 (numpy order shape); for small tensors (norms, biases)."""

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x (..., d) / sqrt(mean(x^2) + eps) * weight (d,)."""

    def rope(self, x, positions, cos, sin, n_rot: int, neox: bool) -> np.ndarray:
        """x (n, h, d) rotated: pairs (NORM: consecutive, NEOX: half apart) of the first n_rot values by
        the angles of the tables' rows cos/sin (n_pos, n_rot / 2) at `positions` (n,)."""

    def qkv_store(self, qkv, heads: HeadSpec, positions, cos, sin, k, v, cells) -> np.ndarray:
        """qkv (n, H D + Hkv D + Hkv Dv), the stacked Q/K/V matmul's output -> q (n, H, D) after the
        optional QK-norm and rope (heads: the geometry, rope and QK-norm settings; cos/sin: the rope
        tables, rows by position, positions (n,)); K (normed, rotated) and V are
        written into a cache's storage k (n_cells, Hkv, D), v (n_cells, Hkv, Dv) at rows cells (int32
        (n,), a paged cache's cells for these tokens), rounded to the storage's format (float32, float16,
        or uint8 rows of Q8_0 blocks: numpy_ops.kv_store). One call for what rms_norm, rope and a cache
        update do one by one."""

    def attention(self, q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None) -> np.ndarray:
        """q (n, H, D) against the cache k (n_cells, Hkv, D), v (n_cells, Hkv, Dv) in any K/V storage
        format (float32, float16, or uint8 rows of Q8_0 blocks; each row converted as it is read): the
        sequence's token j (position kv_pos[j], n_kv = len(kv_pos)) is row cells[j] (int32, a paged
        cache's block table), or row j when cells is None -> (n, H * Dv) float32; causal by position,
        with a sliding window of n_swa positions when n_swa > 0."""

    def attention_many(self, items, n_swa: int, scale: float) -> list[np.ndarray]:
        """attention() of several sequences, items = [(q, k, v, q_pos, kv_pos, cells), ...]: each result
        is what attention() gives for that sequence alone (a backend may run them as one job)."""

    def attention_softcap(self, items, n_swa: int, scale: float, softcap: float) -> list[np.ndarray]:
        """attention_many() with every score soft-capped before the mask and softmax: cap * tanh(s / cap),
        s = scale q.k (Gemma 2). Optional: where a backend lacks it, the model runs numpy_ops.attention
        with softcap (arch/gemma2.py)."""

    def attention_sinks(self, items, n_swa: int, scale: float, sinks: np.ndarray) -> list[np.ndarray]:
        """attention_many() with one more logit per query head in every softmax: sinks float32 (H,), not
        scaled, attended by no value (e^sinks[h] joins head h's denominator: gpt-oss's attention sinks)."""

    def glu(self, gu: np.ndarray, act: str) -> np.ndarray:
        """gu (n, 2 f) = [gate | up] -> act(gate) * up, act "silu" or "gelu_tanh"; or "swiglu_oai", OpenAI's
        clamped SwiGLU (numpy_ops.glu)."""

    def moe_route(self, logits, n_used, gating, norm_weights, scale, bias=None):
        """A Mixture-of-Experts router's choice: logits (n, n_expert) -> chosen int32 (n, n_used), the
        experts with the largest softmax (or sigmoid) probabilities (+ bias), largest first, ties in index
        order; weights float32 (n, n_used), renormalized to sum 1 when norm_weights, times scale. gating
        "softmax_weight" (gpt-oss): the experts of the largest logits, weighted by the softmax of those."""


class BackendDefaults:
    """The generic form of the protocol's methods that a backend may do better: keep the file's layout,
    run attention one sequence at a time."""

    def prepare(self, w: QTensor) -> QTensor:
        return w

    def attention_many(self, items, n_swa: int, scale: float) -> list[np.ndarray]:
        return [self.attention(q, k, v, qp, kp, n_swa, scale, cells=c) for q, k, v, qp, kp, c in items]
