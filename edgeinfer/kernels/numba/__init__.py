"""The portable CPU backend: Numba kernels, vectorized through LLVM IR, threaded with OpenMP."""

from __future__ import annotations

import sys
import threading


def _import_numba_without_scipy_blas() -> None:
    """Numba's first compile or cache load imports numba.np.arraymath, which imports scipy.linalg (if
    scipy is installed) to find a BLAS for np.dot in compiled code: 0.3-0.4 s of every start-up. No
    kernel here uses np.dot or np.linalg, so let that probe fail fast; the module entry is removed right
    after, so a later `import scipy.linalg` anywhere else works as usual."""
    key = "scipy.linalg.cython_blas"
    if key in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    sys.modules[key] = None  # makes `import scipy.linalg.cython_blas` raise ImportError at once
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if key in sys.modules and sys.modules[key] is None:
            del sys.modules[key]


_import_numba_without_scipy_blas()

import os  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from . import cachestamp  # noqa: E402

# the kernels' cache stamped with the helpers they are made of (kernels/numba, quant's tables) and the
# portable-IR switch of simd.py, before any kernel is defined
_HERE = os.path.dirname(os.path.abspath(__file__))
_TOP = os.path.dirname(os.path.dirname(_HERE))
cachestamp.install(_HERE, _TOP, (_HERE, os.path.join(_TOP, "quant")),
                   variant="generic-simd" if os.environ.get("EDGEINFER_GENERIC_SIMD") else "")  # fmt: skip

from ...system import default_threads  # noqa: E402
from ..base import BackendDefaults, QTensor  # noqa: E402
from . import matmul as _matmul  # noqa: E402
from . import ops as _ops  # noqa: E402
from . import lowbit as _lowbit  # noqa: E402,F401  (registers the low-bit formats in the tables)

_THREADS_SET: dict[int, int] = {}  # Python thread id -> the Numba thread count a backend set there


class NumbaBackend(BackendDefaults):
    """Quantized matmuls as llama.cpp computes them (8-bit activations, integer block dots), on
    `n_threads` threads (default: every available core, or EDGEINFER_THREADS)."""

    name = "numba"

    def __init__(self, n_threads: int | None = None):
        n = default_threads() if n_threads is None else int(n_threads)
        if n < 1:
            raise ValueError(f"n_threads must be at least 1, not {n_threads}.")
        self.n_threads = min(n, numba.config.NUMBA_NUM_THREADS)  # Numba's pool: one thread per CPU

    def _use_threads(self) -> None:
        # Numba's thread count belongs to the calling thread; numba.get_num_threads takes 2 us, so
        # remember which threads were set to what
        key = threading.get_ident()
        if _THREADS_SET.get(key) != self.n_threads:
            numba.set_num_threads(self.n_threads)
            _THREADS_SET[key] = self.n_threads

    def prepare(self, w: QTensor) -> QTensor:
        """w repacked to the x8 layout (rows interleaved eight at a time: kernels/numba/x8.py) when its
        type has an x8 kernel (Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS), else w itself;
        EDGEINFER_REPACK=0: never."""
        return _matmul.prepare(w)

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows)."""
        self._use_threads()
        return _matmul.matmul(w, x, out)

    def get_rows(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        """Embedding lookup: float32 (len(ids), n_cols), rows of W dequantized."""
        return _matmul.get_rows(w, ids)

    def dequantize(self, w: QTensor) -> np.ndarray:
        """The whole tensor as float32 (numpy order shape)."""
        return _matmul.dequantize(w)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        self._use_threads()
        return _ops.rms_norm(x, weight, eps)

    def rope(self, x, positions, cos, sin, n_rot: int, neox: bool) -> np.ndarray:
        return _ops.rope(x, positions, cos, sin, n_rot, neox)

    def qkv_store(self, qkv, heads, positions, cos, sin, k, v, cells):
        h = heads
        return _ops.qkv_store(qkv, h.n_head, h.n_head_kv, h.head_dim, h.head_dim_v, positions, cos, sin, h.n_rot,
                              h.neox, h.q_norm, h.k_norm, h.eps, k, v, cells)  # fmt: skip

    def attention(self, q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None) -> np.ndarray:
        self._use_threads()
        return _ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells)

    def attention_sinks(self, items, n_swa: int, scale: float, sinks: np.ndarray) -> list[np.ndarray]:
        self._use_threads()
        return [_ops.attention(q, k, v, qp, kp, n_swa, scale, c, sinks) for q, k, v, qp, kp, c in items]

    def attention_softcap(self, items, n_swa: int, scale: float, softcap: float) -> list[np.ndarray]:
        self._use_threads()
        return [_ops.attention(q, k, v, qp, kp, n_swa, scale, c, softcap=softcap) for q, k, v, qp, kp, c in items]

    def glu(self, gu: np.ndarray, act: str) -> np.ndarray:
        self._use_threads()
        return _ops.glu(gu, act)

    def moe_route(self, logits, n_used, gating, norm_weights, scale, bias=None):
        return _ops.moe_route(logits, n_used, gating, norm_weights, scale, bias)

    def __repr__(self) -> str:
        return f"NumbaBackend(n_threads={self.n_threads})"


__all__ = ["NumbaBackend"]
