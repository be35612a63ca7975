"""CudaBackend: the backend protocol (kernels.base.Backend) on an NVIDIA GPU.

Arrays come in and go out as numpy, as for every backend (model code never knows where it runs); each
call copies its inputs to the GPU, runs its kernels and copies the result back (one synchronization
per call). Weights are the exception: a QTensor's raw quantized blocks are uploaded once, at its first
matmul, and stay on the GPU for as long as the QTensor lives.

What runs where:
- on the GPU: matmul (the block types of native/cuda/quant.cuh), attention, and, unless small_ops is
  "host" (or EDGEINFER_CUDA_SMALL_OPS=host), rms_norm, rope, qkv_store and glu;
- on the host backend (native or numba): get_rows (the token embedding), dequantize (norm weights at
  load), moe_route (a few values per token), attention with sinks (gpt-oss), and matmuls of weight types without a CUDA kernel (Q2_K,
  Q3_K, IQ4_XS) or that do not fit in the GPU's memory (a warning says so once).

The KV cache stays in host memory (the engine's paged pool): qkv_store computes K and V on the GPU and
writes them into the pool's cells (rounded to its f16 / q8_0 format on the host); attention gathers the
sequence's cells, converts them to float32 on the host and copies them in (the GPU kernel reads float32).
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref

import numpy as np

from ..base import BackendDefaults, QTensor
from ..numpy_ops import kv_rows_f32, kv_store
from .binding import ACTIVATIONS, CudaError, open_library

_F32 = np.dtype(np.float32)
SMALL_OPS = ("gpu", "host")


def _default_host(n_threads: int | None):
    """The best CPU backend, as get_backend("auto") picks it: native where built, else numba. (Not through
    kernels.get_backend itself: that imports this package, and imports go round in no circle.)"""
    from ..native import NativeBackend, available

    if available():
        return NativeBackend(n_threads)
    from ..numba import NumbaBackend

    return NumbaBackend(n_threads)


def _stderr_log(msg: str) -> None:
    print(f"edgeinfer: {msg}", file=sys.stderr, flush=True)


class CudaBackend(BackendDefaults):
    """Quantized matmuls and a layer's ops on CUDA device `device`; `host` (default: the best CPU
    backend, with n_threads) does what the GPU does not. `lib` is the loaded library (default: built and
    loaded on first use); tests pass a stand-in."""

    name = "cuda"

    def __init__(self, n_threads: int | None = None, device: int = 0, host=None, lib=None,
                 small_ops: str | None = None):  # fmt: skip
        self.lib = lib if lib is not None else open_library(device, log=_stderr_log)
        self.device = device
        self.host = host if host is not None else _default_host(n_threads)
        self.n_threads = getattr(self.host, "n_threads", n_threads)
        small_ops = small_ops or os.environ.get("EDGEINFER_CUDA_SMALL_OPS", "gpu")
        if small_ops not in SMALL_OPS:
            raise ValueError(f"small_ops must be one of {', '.join(SMALL_OPS)}, not {small_ops!r}")
        self.small_ops_on_gpu = small_ops == "gpu"
        # id(QTensor) -> (weakref to it, device handle or None (host matmul), ggml type, rows, cols, row bytes)
        self._weights: dict[int, tuple] = {}
        self.bytes_on_device = 0
        self._warned: set[str] = set()

    # -- weights
    def _plan(self, w: QTensor) -> tuple:
        entry = self._weights.get(id(w))
        if entry is not None and entry[0]() is w:
            return entry
        raw = w.raw
        handle = None
        if raw.ndim == 2 and self.lib.supports(int(w.ggml_type)) and w.n_cols % 32 == 0:
            try:
                handle = self.lib.upload(raw)
            except CudaError as e:
                self._warn_once("upload", f"a weight does not fit on the GPU ({e}); {w.name} and others like it run on the CPU")
        entry = (weakref.ref(w), handle, int(w.ggml_type), w.n_rows, w.n_cols, raw.shape[-1])
        self._weights[id(w)] = entry
        if handle is not None:
            self.bytes_on_device += raw.nbytes
            weakref.finalize(w, self._release, id(w), handle, raw.nbytes)
        return entry

    def _release(self, key: int, handle: int, n_bytes: int) -> None:
        self._weights.pop(key, None)
        self.bytes_on_device -= n_bytes
        try:
            self.lib.free(handle)
        except Exception:  # the process may be shutting down
            pass

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def upload(self, w: QTensor) -> bool:
        """Put a weight on the GPU now (matmul does it on first use); whether it is there."""
        return self._plan(w)[1] is not None

    # -- the protocol
    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows)."""
        _, handle, type_id, n_rows, n_cols, row_bytes = self._plan(w)
        if handle is None:
            return self.host.matmul(w, x, out)
        x = np.ascontiguousarray(x, dtype=_F32)
        if x.ndim != 2 or x.shape[1] != n_cols:
            raise ValueError(f"{w.name}: x has shape {x.shape}, expected (n_tokens, {n_cols})")
        shape = (x.shape[0], n_rows)
        direct = (out is not None and type(out) is np.ndarray and out.dtype == _F32 and out.shape == shape
                  and out.flags.c_contiguous and out.flags.writeable)  # fmt: skip
        if out is not None and not direct and getattr(out, "shape", None) != shape:
            raise ValueError(f"{w.name}: out must be a float32 array of shape {shape}, not {getattr(out, 'shape', out)}")
        y = out if direct else np.empty(shape, _F32)
        self.lib.matmul(type_id, handle, n_rows, n_cols, row_bytes, x, y)  # x is copied in first: out may be x
        if out is not None and not direct:
            out[...] = y
            return out
        return y

    def prepare(self, w: QTensor) -> QTensor:
        """Weights are uploaded in the file's layout: w itself."""
        return w

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        return self.host.get_rows(w, ids)

    def dequantize(self, w: QTensor) -> np.ndarray:
        return self.host.dequantize(w)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        if not self.small_ops_on_gpu or x.size == 0:
            return self.host.rms_norm(x, weight, eps)
        d = x.shape[-1]
        x2 = np.ascontiguousarray(x, dtype=_F32).reshape(-1, d)
        out = np.empty_like(x2)
        self.lib.rms_norm(x2, np.ascontiguousarray(weight, dtype=_F32), float(eps), out)
        return out.reshape(x.shape)

    def rope(self, x, positions, cos, sin, n_rot: int, neox: bool) -> np.ndarray:
        if not self.small_ops_on_gpu or x.size == 0:
            return self.host.rope(x, positions, cos, sin, n_rot, neox)
        x = np.ascontiguousarray(x, dtype=_F32)
        c, s = _rows(cos, positions), _rows(sin, positions)
        out = np.empty_like(x)
        self.lib.rope(x, c, s, int(n_rot), bool(neox), out)
        return out

    def qkv_store(self, qkv, heads, positions, cos, sin, k, v, cells) -> np.ndarray:
        """Q/K/V split, QK-norm and rope on the GPU; K and V written into the (host) cache at cells."""
        if not self.small_ops_on_gpu:
            return self.host.qkv_store(qkv, heads, positions, cos, sin, k, v, cells)
        h = heads
        n_head, n_head_kv, head_dim, head_dim_v, n_rot, neox = h.n_head, h.n_head_kv, h.head_dim, h.head_dim_v, h.n_rot, h.neox
        q_norm, k_norm, eps = h.q_norm, h.k_norm, h.eps
        qkv = np.ascontiguousarray(qkv, dtype=_F32)
        n = qkv.shape[0]
        q = np.empty((n, n_head, head_dim), _F32)
        k_new = np.empty((n, n_head_kv, head_dim), _F32)
        v_new = np.empty((n, n_head_kv, head_dim_v), _F32)
        qn = None if q_norm is None else np.ascontiguousarray(q_norm, dtype=_F32)
        kn = None if k_norm is None else np.ascontiguousarray(k_norm, dtype=_F32)
        self.lib.qkv(qkv, n_head, n_head_kv, head_dim, head_dim_v, _rows(cos, positions), _rows(sin, positions),
                     int(n_rot), bool(neox), qn, kn, float(eps), q, k_new, v_new)  # fmt: skip
        cells = np.asarray(cells, dtype=np.int64)
        kv_store(k, cells, k_new)  # rounded to the cache's format (f16, q8_0) on the host
        kv_store(v, cells, v_new)
        return q

    def attention(self, q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None) -> np.ndarray:
        """The sequence's cells are gathered here (the cache lives in host memory), converted to float32
        from the cache's format (f16, q8_0) and copied in."""
        kv_pos = np.ascontiguousarray(kv_pos, dtype=np.int32)
        if cells is not None:
            idx = np.asarray(cells, dtype=np.int64)[: len(kv_pos)]
            k, v = k[idx], v[idx]  # gathered copies, in token order
        k = np.ascontiguousarray(kv_rows_f32(k), dtype=_F32)
        v = np.ascontiguousarray(kv_rows_f32(v), dtype=_F32)
        q = np.ascontiguousarray(q, dtype=_F32)
        out = np.empty((q.shape[0], q.shape[1] * v.shape[2]), _F32)
        if q.shape[0] == 0:
            return out
        self.lib.attention(q, k[: len(kv_pos)], v[: len(kv_pos)], np.ascontiguousarray(q_pos, dtype=np.int32), kv_pos,
                           None, int(n_swa), float(scale), out)  # fmt: skip
        return out

    def attention_sinks(self, items, n_swa: int, scale: float, sinks: np.ndarray) -> list[np.ndarray]:
        """On the host backend (the cache is in host memory; the GPU kernel has no sinks yet)."""
        return self.host.attention_sinks(items, n_swa, scale, sinks)

    def attention_softcap(self, items, n_swa: int, scale: float, softcap: float) -> list[np.ndarray]:
        """On the host backend, as attention_sinks (the GPU kernel has no soft cap yet)."""
        return self.host.attention_softcap(items, n_swa, scale, softcap)

    def glu(self, gu: np.ndarray, act: str) -> np.ndarray:
        if not self.small_ops_on_gpu or act not in ACTIVATIONS or gu.size == 0:
            return self.host.glu(gu, act)
        gu = np.ascontiguousarray(gu, dtype=_F32)
        out = np.empty((gu.shape[0], gu.shape[1] // 2), _F32)
        self.lib.glu(gu, act, out)
        return out

    def moe_route(self, logits, n_used, gating, norm_weights, scale, bias=None):
        return self.host.moe_route(logits, n_used, gating, norm_weights, scale, bias)

    # -- the device
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of GPU memory."""
        return self.lib.mem_info()

    @property
    def device_name(self) -> str:
        return self.lib.info.get("name", "?")

    def __repr__(self) -> str:
        info = self.lib.info
        cc = info.get("compute_capability", (0, 0))
        return (f"CudaBackend({info.get('name', '?')!r}, sm_{cc[0]}{cc[1]}, {self.bytes_on_device / 2**20:.0f} MiB of "
                f"weights, host={self.host!r})")  # fmt: skip


def _rows(table: np.ndarray, positions) -> np.ndarray:
    """The rows of a rope table (n_pos, n_rot / 2) at each token's position: (n, n_rot / 2)."""
    return np.ascontiguousarray(table[np.asarray(positions, dtype=np.int64)], dtype=_F32)
