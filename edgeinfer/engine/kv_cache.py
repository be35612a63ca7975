"""The key/value cache: every layer's K and V for the tokens of a sequence, in blocks of a shared pool.

Paged, as vLLM's PagedAttention and llama.cpp's unified cache do it: a `BlockPool` holds K and V for
`n_blocks * block_size` cells; a sequence's `KVCache` holds a table of the blocks it uses, and
`cells[i]` is the pool cell of its token i. Attention reads the cells through that table, so

- memory follows the tokens held: a sequence takes a block when its tokens reach it and gives its blocks
  back when it ends; the pool's storage is anonymous zeroed memory, so its pages only become resident
  when a block is first written (in 4 KiB pages: see `_zeroed`);
- a shared prompt prefix is not copied: two sequences point at the same full blocks (reference counted);
  only the last, partly filled block is copied, and a block is never written while shared (copy on
  write at `truncate`, the only way a sequence can write into a block it shares).

K and V are stored in a KVType (edgeinfer.nn.kv): f16 by default (half of float32's memory, as
llama.cpp), q8_0 (about a quarter), or f32; a row is rounded once, when it is written, and attention
reads the pool's rows in that format, converting a row at a time.

A model with short-convolution layers (LFM2) also keeps, per token and per such layer, the row its
convolution reads (`conv`, n_conv_layer rows of conv_dim values in the same KVType), in the same cells:
the convolution's state at any point of the sequence is the rows of the tokens before it, so rolling
back (truncate), sharing a prefix and copying on write treat those rows exactly as K and V.

A KVCache made without a pool gets a private pool of n_ctx cells (a single sequence: `generate`,
`LLM.logits`). One forward pass over n tokens (the protocol `edgeinfer.nn.KVCacheLike`): begin() claims
the next n cells (taking blocks as needed), storage() hands each layer's storage to the backend that
writes K/V into it (or update() stores float32 K/V), commit() makes them part of the sequence. Growing
past n_ctx raises ContextFullError; a pool with no free block left raises PoolFullError (a runner
reserves blocks so that this never happens to a running request); nothing is ever dropped silently.
truncate(n) rolls the sequence back to its first n tokens.
"""

from __future__ import annotations

import heapq
import mmap
from collections.abc import Callable

import numpy as np

from ..errors import ContextFullError
from ..kernels.numpy_ops import kv_rows_f32, kv_store
from ..nn.kv import DEFAULT_KV_TYPE, KVType, kv_type as _kv_type

BLOCK_SIZE = 32  # cells per block


def _zeroed(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array on its own anonymous mapping, kept out of transparent huge pages.

    numpy asks for huge pages on large arrays (madvise MADV_HUGEPAGE). For a KV pool that is the wrong
    trade: the first write of a block then faults in a whole 2 MiB page per layer and for K and V
    (milliseconds each in a VM: see README, Measured), and memory follows tokens in 2 MiB steps. In
    4 KiB pages a block's first write costs microseconds."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)  # anonymous: zero pages, resident only once written
    if hasattr(buf, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        except OSError:  # not supported here: the default pages serve as well
            pass
    return np.frombuffer(buf, dtype).reshape(shape)  # the array keeps the mapping alive


class PoolFullError(ContextFullError):
    """The shared pool has no free block left."""


Dims = int | tuple[int, ...]  # one value for every layer, or one per layer


def layer_geometry(n_layer: int, n_head_kv: Dims, head_dim: Dims, head_dim_v: Dims) -> list[tuple[int, int, int]]:
    """(n_head_kv, head_dim, head_dim_v) of each layer, from values given for all layers or per layer."""
    per = [tuple(d) if isinstance(d, (tuple, list)) else (d,) * n_layer for d in (n_head_kv, head_dim, head_dim_v)]
    if any(len(p) != n_layer for p in per):
        raise ValueError(f"per-layer KV dimensions must give {n_layer} values each")
    return [(int(h), int(d), int(dv)) for h, d, dv in zip(*per)]


def kv_bytes_per_token(dims: dict) -> int:
    """Bytes of K and V (and convolution rows, LFM2) one token takes in a cache shaped by a model's kv_dims()
    (all layers)."""
    t = _kv_type(dims.get("kv_type", DEFAULT_KV_TYPE))
    geometry = layer_geometry(dims["n_layer"], dims["n_head_kv"], dims["head_dim"], dims["head_dim_v"])
    kv = sum(h * (t.row_bytes(d) + t.row_bytes(dv)) for h, d, dv in geometry)
    return kv + dims.get("n_conv_layer", 0) * t.row_bytes(dims.get("conv_dim", 0))


class BlockPool:
    """K and V storage for n_blocks blocks of block_size cells, handed out to sequences.

    k (n_layer, n_blocks * block_size, n_head_kv, row), v (..., row_v), rows of head_dim (head_dim_v)
    values in the pool's KVType (`kv_type`: "f16", "q8_0" or "f32"; row = head_dim for the float
    types, head_dim / 32 * 34 bytes for q8_0): cell c of block b is row b * block_size + c, a token's K
    (and V) of a layer one contiguous row. Free blocks are handed out lowest first (the pages in use stay
    together). `reclaim`, when set, is called when no block is free, and may free some (a runner drops
    caches it kept for prefix reuse); it returns whether it did.

    n_head_kv, head_dim and head_dim_v may also be given per layer (tuples: Gemma 4's sliding and global
    layers differ): the layers of one geometry then share one such array (`groups`), `layers[il]` is
    still layer il's (k, v), and k, v are None unless there is one group.
    """

    def __init__(self, n_layer: int, n_cells: int, n_head_kv: Dims, head_dim: Dims, head_dim_v: Dims | None = None,
                 kv_type: str | KVType = DEFAULT_KV_TYPE, block_size: int = BLOCK_SIZE, n_conv_layer: int = 0,
                 conv_dim: int = 0):  # fmt: skip
        if n_cells <= 0 or block_size <= 0:
            raise ValueError(f"a pool needs cells and blocks: n_cells={n_cells}, block_size={block_size}")
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        self.n_layer, self.n_head_kv, self.head_dim, self.head_dim_v = n_layer, n_head_kv, head_dim, head_dim_v
        self.geometry = layer_geometry(n_layer, n_head_kv, head_dim, head_dim_v)  # (Hkv, D, Dv) per layer
        self.kv_type = _kv_type(kv_type)
        for _, d, dv in set(self.geometry):
            self.kv_type.check(d, dv)
        if n_conv_layer:
            self.kv_type.check(conv_dim, conv_dim)
        self.n_conv_layer, self.conv_dim = n_conv_layer, conv_dim
        self.dtype = self.kv_type.dtype  # of the storage's elements
        self.block_size = block_size
        self.n_blocks = -(-n_cells // block_size)
        cells = self.n_blocks * block_size
        by_shape: dict[tuple[int, int, int], list[int]] = {}
        for il, g in enumerate(self.geometry):
            by_shape.setdefault(g, []).append(il)
        self.groups = []  # (k (n_layers_of_group, cells, Hkv, row), v (..., row_v)), one per geometry
        self.layers: list = [None] * n_layer  # per layer (k, v): the same view objects every time
        for (h, d, dv), members in by_shape.items():
            n, t = len(members), self.kv_type  # untouched pages cost no memory
            k = _zeroed((n, cells, h, t.row_size(d)), self.dtype)
            v = _zeroed((n, cells, h, t.row_size(dv)), self.dtype)
            self.groups.append((k, v))
            for j, il in enumerate(members):
                self.layers[il] = (k[j], v[j])
        self.k, self.v = self.groups[0] if len(self.groups) == 1 else (None, None)
        # (n_conv_layer, cells, conv_row): the rows short-convolution layers read (none for most models)
        self.conv = _zeroed((n_conv_layer, cells, self.kv_type.row_size(conv_dim)), self.dtype)
        self.conv_layers = list(self.conv)
        self.refs = np.zeros(self.n_blocks, np.int32)
        self._free = list(range(self.n_blocks))  # a heap
        self.reclaim: Callable[[], bool] | None = None

    @classmethod
    def for_model(cls, model, n_cells: int, kv_type: str | KVType | None = None, block_size: int = BLOCK_SIZE) -> "BlockPool":
        """A pool shaped for `model` (anything with `kv_dims()`), in kv_type (default: the model's)."""
        d = model.kv_dims()
        kv_type = d.get("kv_type", DEFAULT_KV_TYPE) if kv_type is None else kv_type
        return cls(d["n_layer"], n_cells, d["n_head_kv"], d["head_dim"], d["head_dim_v"], kv_type, block_size,
                   d.get("n_conv_layer", 0), d.get("conv_dim", 0))  # fmt: skip

    @property
    def n_cells(self) -> int:
        return self.n_blocks * self.block_size

    @property
    def n_free(self) -> int:
        """Blocks free now."""
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self._free)

    @property
    def block_nbytes(self) -> int:
        """Bytes of K and V (and convolution rows) one block holds (all layers)."""
        t = self.kv_type
        per_cell = sum(h * (t.row_bytes(d) + t.row_bytes(dv)) for h, d, dv in self.geometry)
        per_cell += self.n_conv_layer * t.row_bytes(self.conv_dim) if self.n_conv_layer else 0
        return per_cell * self.block_size

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool's K and V (its pages become resident only as blocks are written)."""
        return self.block_nbytes * self.n_blocks

    def alloc(self) -> int:
        if not self._free and self.reclaim is not None:
            while not self._free and self.reclaim():
                pass
        if not self._free:
            raise PoolFullError(
                f"The KV cache pool is full: all {self.n_blocks} blocks of {self.block_size} tokens are in use. "
                "Give it more cells (the server's --kv-size), or run fewer sequences at once."
            )
        b = heapq.heappop(self._free)
        self.refs[b] = 1
        return b

    def incref(self, b: int) -> None:
        self.refs[b] += 1

    def decref(self, b: int) -> None:
        self.refs[b] -= 1
        if self.refs[b] == 0:
            heapq.heappush(self._free, b)

    def copy_cells(self, dst: np.ndarray, src: np.ndarray) -> None:
        """K and V (and convolution rows) of cells src into cells dst, every layer."""
        for k, v in self.groups:
            k[:, dst] = k[:, src]
            v[:, dst] = v[:, src]
        if self.n_conv_layer:
            self.conv[:, dst] = self.conv[:, src]

    def same_shape(self, other: "BlockPool") -> bool:
        return self._shape() == other._shape()

    def _shape(self) -> tuple:
        return (self.geometry, self.kv_type, self.n_conv_layer, self.conv_dim)

    def __repr__(self) -> str:
        return (f"BlockPool({self.n_used}/{self.n_blocks} blocks of {self.block_size} cells in use, "
                f"n_layer={self.n_layer}, n_head_kv={self.n_head_kv}, kv_type={self.kv_type.name})")  # fmt: skip


class KVCache:
    """One sequence's K/V: a block table into a pool (its own, or one shared with other sequences)."""

    def __init__(
        self,
        n_layer: int,
        n_ctx: int,
        n_head_kv: int,
        head_dim: int,
        kv_type: str | KVType | None = None,
        head_dim_v: int | None = None,
        pool: BlockPool | None = None,
        n_conv_layer: int = 0,
        conv_dim: int = 0,
    ):
        """kv_type: the storage format of a private pool (default f16); with a pool, None or the pool's.
        n_conv_layer, conv_dim: the short-convolution layers' rows kept per token (LFM2), if any."""
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, not {n_ctx}")
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        if pool is None:
            kv_type = DEFAULT_KV_TYPE if kv_type is None else kv_type
            pool = BlockPool(n_layer, n_ctx, n_head_kv, head_dim, head_dim_v, kv_type, n_conv_layer=n_conv_layer,
                             conv_dim=conv_dim)  # fmt: skip
        elif (pool.geometry, pool.n_conv_layer, pool.conv_dim) != (
                layer_geometry(n_layer, n_head_kv, head_dim, head_dim_v), n_conv_layer, conv_dim):  # fmt: skip
            raise ValueError("KVCache: the pool is shaped for another model")
        elif kv_type is not None and _kv_type(kv_type) != pool.kv_type:
            raise ValueError(f"KVCache: kv_type {kv_type!r} differs from its pool's, {pool.kv_type.name!r}")
        self.pool = pool
        self.n_layer, self.n_ctx, self.n_head_kv = n_layer, n_ctx, n_head_kv
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.n_conv_layer, self.conv_dim = n_conv_layer, conv_dim
        self.kv_type = pool.kv_type
        self.blocks: list[int] = []  # the block table
        self.cells = np.zeros(n_ctx, np.int32)  # (token,) the pool cell holding token i
        self.pos = np.zeros(n_ctx, np.int32)  # (token,) its position
        self.n_past = 0
        self._n_new = 0  # cells claimed by the pass in progress

    @classmethod
    def for_model(cls, model, n_ctx: int, kv_type: str | KVType | None = None, pool: BlockPool | None = None) -> "KVCache":
        """A cache shaped for `model` (anything with `kv_dims()`: n_layer, n_head_kv, head_dim, head_dim_v,
        and optionally kv_type), in `pool` when given (shared with other sequences), else in a private pool
        of n_ctx cells in kv_type (default: the model's, f16 unless load() was told otherwise)."""
        d = model.kv_dims()
        if kv_type is None and pool is None:
            kv_type = d.get("kv_type", DEFAULT_KV_TYPE)
        return cls(d["n_layer"], n_ctx, d["n_head_kv"], d["head_dim"], kv_type, d["head_dim_v"], pool,
                   d.get("n_conv_layer", 0), d.get("conv_dim", 0))  # fmt: skip

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks this sequence holds (shared blocks counted in full)."""
        return len(self.blocks) * self.pool.block_nbytes

    # -- blocks
    def _reserve(self, n_tokens: int) -> None:
        """Hold enough blocks for n_tokens tokens; all or none (PoolFullError)."""
        bs = self.pool.block_size
        need = -(-n_tokens // bs) - len(self.blocks)
        got = []
        try:
            for _ in range(need):
                got.append(self.pool.alloc())
        except PoolFullError:
            for b in got:
                self.pool.decref(b)
            raise
        for b in got:
            i = len(self.blocks)
            self.blocks.append(b)
            self.cells[i * bs : (i + 1) * bs] = np.arange(b * bs, (b + 1) * bs, dtype=np.int32)[: self.n_ctx - i * bs]

    def _release_from(self, n_blocks: int) -> None:
        """Give back the blocks past the first n_blocks."""
        for b in self.blocks[n_blocks:]:
            self.pool.decref(b)
        del self.blocks[n_blocks:]

    def _own_last(self, n: int) -> None:
        """The block holding token n (the next to be written) must not be shared: copy it if it is."""
        bs = self.pool.block_size
        i = n // bs
        if n % bs == 0 or i >= len(self.blocks) or self.pool.refs[self.blocks[i]] == 1:
            return
        old = self.blocks[i]
        new = self.pool.alloc()
        lo = i * bs
        self.pool.copy_cells(np.arange(new * bs, new * bs + n - lo), np.arange(old * bs, old * bs + n - lo))
        self.pool.decref(old)
        self.blocks[i] = new
        self.cells[lo : lo + bs] = np.arange(new * bs, (new + 1) * bs, dtype=np.int32)[: self.n_ctx - lo]

    # -- one forward pass
    def begin(self, positions: np.ndarray) -> np.ndarray:
        n = len(positions)
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"The context is full: it holds {self.n_ctx} tokens, {self.n_past} are in use and "
                f"{n} more were given. Load the model with a larger n_ctx, or start a new conversation "
                "(or shorten this one)."
            )
        self._reserve(self.n_past + n)
        self.pos[self.n_past : self.n_past + n] = positions
        self._n_new = n
        return self.pos[: self.n_past + n]

    def storage(self, il: int):
        """Layer il's pool storage (K (pool cells, n_head_kv, row), V (pool cells, n_head_kv, row_v), in
        the pool's kv_type), the cells of the pass in progress (n,) and the cells of all tokens in use
        (n_kv,), int32: a backend writes K and V into the first and reads attention through the second."""
        end = self.n_past + self._n_new
        k, v = self.pool.layers[il]
        return k, v, self.cells[self.n_past : end], self.cells[:end]

    def conv_storage(self, ic: int):
        """Short-convolution layer ic's rows in the pool ((pool cells, conv row), in the pool's kv_type),
        the cells of the pass in progress (n,) and the cells of all tokens in use (n_kv,), int32."""
        end = self.n_past + self._n_new
        return self.pool.conv_layers[ic], self.cells[self.n_past : end], self.cells[:end]

    def update(self, il: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store layer il's float32 k (n, n_head_kv, head_dim), v (n, n_head_kv, head_dim_v) in the cells
        of the pass in progress, rounded to the kv_type."""
        new = self.cells[self.n_past : self.n_past + self._n_new]
        k_store, v_store = self.pool.layers[il]
        kv_store(k_store, new, k)
        kv_store(v_store, new, v)

    def commit(self) -> None:
        self.n_past += self._n_new
        self._n_new = 0

    # -- the sequence
    def truncate(self, n: int) -> None:
        """Keep the first n tokens of the sequence, forget the rest (their blocks go back to the pool)."""
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}): the cache holds {self.n_past} tokens")
        self._release_from(-(-n // self.pool.block_size))
        self._own_last(n)
        self.n_past = n
        self._n_new = 0

    def clear(self) -> None:
        self.truncate(0)

    def release(self) -> None:
        """Forget everything and give every block back (the cache stays usable)."""
        self.truncate(0)

    def copy_prefix(self, src: "KVCache", n: int) -> None:
        """Make this cache hold src's first n tokens (a shared prompt prefix), replacing what it held.
        In the same pool, the full blocks are shared (nothing copied) and the rest copied; from another
        pool, everything is copied (converted, from a pool of another kv_type). Either way far cheaper
        than computing them again."""
        if not 0 <= n <= src.n_past or n > self.n_ctx:
            raise ValueError(f"copy_prefix({n}): the source holds {src.n_past} tokens, this cache {self.n_ctx}")
        if (src.pool.geometry, src.n_conv_layer, src.conv_dim) != (self.pool.geometry, self.n_conv_layer, self.conv_dim):
            raise ValueError("copy_prefix: the caches belong to different models")
        if src is self:
            return self.truncate(n)
        self.release()
        bs = self.pool.block_size
        shared = n // bs if src.pool is self.pool else 0
        for b in src.blocks[:shared]:
            self.pool.incref(b)
            self.blocks.append(b)
        self.cells[: shared * bs] = src.cells[: shared * bs]
        self._reserve(n)
        lo = shared * bs
        if n > lo:
            if src.pool is self.pool:
                self.pool.copy_cells(self.cells[lo:n], src.cells[lo:n])
            elif src.pool.kv_type == self.pool.kv_type:
                for dst_store, src_store in self._stores(src):
                    dst_store[:, self.cells[lo:n]] = src_store[:, src.cells[lo:n]]
            else:  # another format: through float32, a layer at a time
                for dst_store, src_store in self._stores(src):
                    for il in range(dst_store.shape[0]):
                        kv_store(dst_store[il], self.cells[lo:n], kv_rows_f32(src_store[il, src.cells[lo:n]]))
        self.pos[:n] = src.pos[:n]
        self.n_past = n
        self._n_new = 0

    def _stores(self, src: "KVCache") -> list[tuple[np.ndarray, np.ndarray]]:
        """(this pool's, src's pool's) K and V of each geometry group, and the convolution rows: arrays of
        (layers, cells, ...)."""
        pairs = []
        for (k, v), (src_k, src_v) in zip(self.pool.groups, src.pool.groups):
            pairs += [(k, src_k), (v, src_v)]
        return pairs + [(self.pool.conv, src.pool.conv)]

    def __del__(self):
        try:
            if self.blocks:
                self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"KVCache(n_past={self.n_past}, n_ctx={self.n_ctx}, blocks={len(self.blocks)}, n_layer={self.n_layer}, "
            f"n_head_kv={self.n_head_kv}, head_dim={self.head_dim}, kv_type={self.kv_type.name})"
        )


__all__ = ["BLOCK_SIZE", "BlockPool", "KVCache", "PoolFullError", "kv_bytes_per_token", "layer_geometry"]
