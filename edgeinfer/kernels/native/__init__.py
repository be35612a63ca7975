"""The native CPU backend: quantized matmuls in C (native/*.c, the extension edgeinfer._native) with
AVX2/FMA/F16C (x86-64), NEON (ARM, Q4_0/Q8_0) or portable scalar code, on a persistent thread pool.

It computes exactly what the Numba backend computes (activations quantized once per matmul to the
8-bit format ggml pairs with the weight type, int32 block dots, float scales), only faster; weight
types without a C kernel (Q2_K, Q3_K, IQ4_XS, BF16) and every other operation (get_rows, dequantize,
the small ops) come from NumbaBackend. The extension is built by `pip install` when a C compiler is
there; `available()` says whether it was.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ...errors import EdgeInferError
from ..base import QTensor
from ..numba import NumbaBackend
from ..numba import matmul as _nm

try:
    from ... import _native
except ImportError as e:  # not built (no C compiler at install time)
    _native = None
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

BUILD_HINT = (
    "reinstall edgeinfer with a C compiler present (`pip install -e .` in a checkout, or "
    "`pip install --force-reinstall --no-binary edgeinfer edgeinfer`); it builds the extension "
    "edgeinfer._native from native/*.c"
)


class NativeUnavailableError(EdgeInferError, ImportError):
    """The C extension edgeinfer._native was not built."""


def available() -> bool:
    """Whether the C extension is built and importable."""
    return _native is not None


def native_isa() -> str:
    """The instruction set the C kernels use here: "avx2", "neon" or "scalar" (EDGEINFER_NATIVE_ISA=scalar
    forces the portable code)."""
    return _require().isa()


def _require():
    if _native is None:
        raise NativeUnavailableError(f"The native backend is not built ({_IMPORT_ERROR}); {BUILD_HINT}.")
    return _native


T = GGMLQuantizationType
NATIVE_TYPES = (
    T.F32, T.F16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL,
)  # fmt: skip
# weight type -> (ggml id, values per block, bytes per block)
_NATIVE = {t: (int(t), *GGML_QUANT_SIZES[t]) for t in NATIVE_TYPES}
del T
_F32 = np.dtype(np.float32)


class NativeBackend(NumbaBackend):
    """Quantized matmuls in C, llama.cpp's way, on `n_threads` threads (default: every available core, or
    EDGEINFER_THREADS); everything else as NumbaBackend."""

    name = "native"

    def __init__(self, n_threads: int | None = None):
        _require()
        super().__init__(n_threads)
        # the C pool is not bound by Numba's thread count (NumbaBackend caps n_threads at it)
        if n_threads is not None:
            self.native_threads = int(n_threads)
        else:
            self.native_threads = self.n_threads

    def matmul(self, w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows).

        x of another float dtype or layout is converted; `out`, if given, must be a writeable C-contiguous
        float32 (n_tokens, n_rows) and may be x itself. Types without a C kernel go to the Numba one."""
        entry = _NATIVE.get(w.ggml_type)
        if entry is None:
            return super().matmul(w, x, out)
        type_id, block_size, type_size = entry
        flat = _nm._weight_bytes(w, block_size, type_size)
        if type(x) is not np.ndarray or x.dtype is not _F32 or x.ndim != 2 or not x.flags.c_contiguous:
            x = _nm._activations(w, x)
        elif x.shape[1] != w.ne[0]:
            raise ValueError(f"{w.name}: x has shape {x.shape}, expected (n_tokens, {w.n_cols}).")
        n_rows = w.n_rows
        shape = (x.shape[0], n_rows)
        if out is None:
            out = np.empty(shape, _F32)
        elif type(out) is not np.ndarray or out.dtype is not _F32 or out.shape != shape or not _nm._writeable_c(out):
            raise ValueError(
                f"{w.name}: out must be a writeable C-contiguous float32 array of shape {shape}, "
                f"not {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}."
            )
        _native.matmul(type_id, flat, x, out, n_rows, x.shape[1], self.native_threads)
        return out

    def __repr__(self) -> str:
        return f"NativeBackend(n_threads={self.native_threads}, isa={native_isa()!r})"


__all__ = ["NATIVE_TYPES", "NativeBackend", "NativeUnavailableError", "available", "native_isa"]
