"""What attention needs from a KV cache, as a Protocol (model code never imports the engine), and the
formats a cache may store K and V in.

The engine's `KVCache` (edgeinfer.engine.kv_cache) implements it. One forward pass over n tokens
(nn.ForwardBatch.plan claims the cells, DecoderModel.run commits them):

    kv_pos = cache.begin(positions)                  # claim n cells; ContextFullError if they do not fit
    k, v, new, cells = cache.storage(il)             # per layer: the storage, the claimed cells, all cells
    q = backend.qkv_store(qkv, heads, ..., k, v, new)   # QK-norm, rope; K/V of the batch written at `new`
    out = backend.attention(q, k, v, ..., cells=cells)
    rows, new, cells = cache.conv_storage(ic)        # short-convolution layers (LFM2): rows like K/V
    cache.commit()                                   # the n tokens become part of the sequence

A pass that fails between begin() and commit() leaves n_past as it was.

K and V are stored in one of KV_TYPES, chosen per cache (`load(kv_type=...)`). A K or V row (one token,
one KV head) is rounded once, when it is written, and read back a row at a time by attention:

    f16   float16 (head_dim,), IEEE round to nearest even: what llama.cpp stores by default
    q8_0  uint8 (head_dim / 32 * 34,): ggml's block_q8_0 (fp16 scale d, 32 int8 q; x = d * q), quantized
          with quantize_row_q8_0_ref's rounding; head sizes must be multiples of 32
    f32   float32 (head_dim,): no rounding
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import EdgeInferError

QK8_0 = 32  # values per q8_0 block
Q8_0_BLOCK_BYTES = 34  # fp16 scale + 32 int8


@dataclass(frozen=True)
class KVType:
    """A storage format of K/V rows: `dtype` elements, `block` values in `block_size` elements."""

    name: str
    dtype: np.dtype
    block: int = 1
    block_size: int = 1

    def row_size(self, head_dim: int) -> int:
        """Elements of `dtype` one row of head_dim values takes."""
        return head_dim // self.block * self.block_size

    def row_bytes(self, head_dim: int) -> int:
        return self.row_size(head_dim) * self.dtype.itemsize

    def check(self, head_dim: int, head_dim_v: int) -> None:
        """EdgeInferError when this format cannot hold rows of these head sizes."""
        if head_dim % self.block or head_dim_v % self.block:
            raise EdgeInferError(
                f"kv_type {self.name!r} stores K and V in blocks of {self.block} values, but this model's "
                f"heads hold {head_dim} (K) and {head_dim_v} (V): load it with kv_type='f16' or 'f32'."
            )


KV_TYPES = {
    "f16": KVType("f16", np.dtype(np.float16)),
    "q8_0": KVType("q8_0", np.dtype(np.uint8), QK8_0, Q8_0_BLOCK_BYTES),
    "f32": KVType("f32", np.dtype(np.float32)),
}
DEFAULT_KV_TYPE = "f16"  # as llama.cpp: half the memory of float32, the same answers within its bar


def kv_type(name: "str | KVType") -> KVType:
    """The KVType called `name` ("f16", "q8_0", "f32"); EdgeInferError naming those for anything else."""
    if isinstance(name, KVType):
        return name
    t = KV_TYPES.get(name) if isinstance(name, str) else None
    if t is None:
        allowed = ", ".join(repr(n) for n in KV_TYPES)
        raise EdgeInferError(f"kv_type must be one of {allowed} (default {DEFAULT_KV_TYPE!r}), not {name!r}.")
    return t


class KVCacheLike(Protocol):
    n_past: int  # tokens already in the sequence
    n_ctx: int  # cells in all

    def begin(self, positions: np.ndarray) -> np.ndarray:
        """Claim cells n_past..n_past+n-1 for tokens at `positions` (n,); return the positions of all
        cells in use after this batch, int32 (n_kv,), n_kv = n_past + n."""

    def storage(self, il: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Layer il's storage, K (capacity, n_head_kv, row) and V (capacity, n_head_kv, row_v) in the
        cache's KVType, the cells claimed by this pass (n,) and the cells of all tokens in use (n_kv,),
        int32: a backend writes K and V into the first and reads attention through the second."""

    def update(self, il: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store layer il's k (n, n_head_kv, head_dim) and v (n, n_head_kv, head_dim_v), float32, in the
        claimed cells (rounded to the cache's KVType)."""

    def conv_storage(self, ic: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Short-convolution layer ic's rows (capacity, row) in the cache's KVType (one row of conv_dim
        values per token: what the convolution reads), the cells claimed by this pass (n,) and the cells
        of all tokens in use (n_kv,), int32. Only caches made for a model with such layers have them."""

    def commit(self) -> None:
        """Make the claimed cells part of the sequence."""
