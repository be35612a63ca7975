"""The thin ctypes binding of libedgeinfer_cuda.so (native/cuda/edgeinfer_cuda.h): one method per C
function, taking numpy arrays. The arrays' dtype, layout and sizes are checked here, before any pointer
crosses into C (a wrong size would read or write past an array); the C side checks the rest and says
what failed in a sentence, raised as CudaError.

Tests replace this class by a numpy stand-in with the same methods (tests/test_cuda.py), so that the
backend's logic runs on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from ...errors import EdgeInferError

ABI_VERSION = 1  # EI_CUDA_ABI_VERSION in edgeinfer_cuda.h
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}

_c_int, _c_i64, _c_f32, _c_size, _vp = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t, ctypes.c_void_p
_SIGNATURES = {
    "ei_cuda_abi_version": ([], _c_int),
    "ei_cuda_last_error": ([], ctypes.c_char_p),
    "ei_cuda_versions": ([ctypes.POINTER(_c_int), ctypes.POINTER(_c_int)], _c_int),
    "ei_cuda_device_count": ([ctypes.POINTER(_c_int)], _c_int),
    "ei_cuda_device_info": (
        [_c_int, ctypes.c_char_p, _c_int, ctypes.POINTER(_c_int), ctypes.POINTER(_c_int), ctypes.POINTER(_c_int),
         ctypes.POINTER(_c_size)], _c_int),  # fmt: skip
    "ei_cuda_init": ([_c_int], _c_int),
    "ei_cuda_mem_info": ([ctypes.POINTER(_c_size), ctypes.POINTER(_c_size)], _c_int),
    "ei_cuda_upload": ([_vp, _c_size, ctypes.POINTER(_vp)], _c_int),
    "ei_cuda_free": ([_vp], _c_int),
    "ei_cuda_type_supported": ([_c_int], _c_int),
    "ei_cuda_matmul": ([_c_int, _vp, _c_i64, _c_i64, _c_i64, _vp, _c_i64, _vp], _c_int),
    "ei_cuda_rms_norm": ([_vp, _vp, _c_i64, _c_i64, _c_f32, _vp], _c_int),
    "ei_cuda_rope": ([_vp, _vp, _vp, _c_i64, _c_int, _c_int, _c_int, _c_int, _vp], _c_int),
    "ei_cuda_qkv": (
        [_vp, _c_i64, _c_int, _c_int, _c_int, _c_int, _vp, _vp, _c_int, _c_int, _vp, _vp, _c_f32, _vp, _vp, _vp],
        _c_int),  # fmt: skip
    "ei_cuda_attention": (
        [_vp, _vp, _vp, _vp, _vp, _vp, _c_i64, _c_int, _c_int, _c_i64, _c_int, _c_int, _c_i64, _c_int, _c_f32, _vp],
        _c_int),  # fmt: skip
    "ei_cuda_glu": ([_vp, _c_i64, _c_i64, _c_int, _vp], _c_int),
}
EXPORTED = tuple(_SIGNATURES)  # the symbols the library must export


class CudaError(EdgeInferError):
    """A CUDA call failed (out of memory, a kernel error, a bad argument); the message says which."""


def _f32(name: str, a: np.ndarray, shape: tuple | None = None, writeable: bool = False) -> int:
    if type(a) is not np.ndarray or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array, not {getattr(a, 'dtype', type(a))}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a.ctypes.data


def _i32(name: str, a: np.ndarray, n: int) -> int:
    if type(a) is not np.ndarray or a.dtype != np.int32 or not a.flags.c_contiguous or a.shape != (n,):
        raise ValueError(f"{name} must be a C-contiguous int32 array of shape ({n},)")
    return a.ctypes.data


class CudaLib:
    """libedgeinfer_cuda.so loaded and initialized on `device`."""

    def __init__(self, path: str | Path, device: int = 0):
        self.path = Path(path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise CudaError(f"The CUDA library {path} cannot be loaded ({e}).") from None
        missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
        if missing:
            raise CudaError(f"The CUDA library {path} lacks {', '.join(missing)}: it is stale; delete it to rebuild.")
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        self._lib = lib
        if lib.ei_cuda_abi_version() != ABI_VERSION:
            raise CudaError(f"The CUDA library {path} has ABI {lib.ei_cuda_abi_version()}, this edgeinfer needs {ABI_VERSION}.")
        self.device = device
        self._check(lib.ei_cuda_init(device))
        self.info = self.device_info(device)

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise CudaError((self._lib.ei_cuda_last_error() or b"a CUDA call failed").decode(errors="replace"))

    # -- the device
    def versions(self) -> tuple[int, int]:
        rt, drv = _c_int(), _c_int()
        self._check(self._lib.ei_cuda_versions(ctypes.byref(rt), ctypes.byref(drv)))
        return rt.value, drv.value

    def device_info(self, device: int | None = None) -> dict:
        name = ctypes.create_string_buffer(256)
        major, minor, n_sm, total = _c_int(), _c_int(), _c_int(), _c_size()
        self._check(self._lib.ei_cuda_device_info(
            self.device if device is None else device, name, 256, ctypes.byref(major), ctypes.byref(minor),
            ctypes.byref(n_sm), ctypes.byref(total)))  # fmt: skip
        return {
            "name": name.value.decode(errors="replace"),
            "compute_capability": (major.value, minor.value),
            "n_sm": n_sm.value,
            "total_memory": total.value,
        }

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        free, total = _c_size(), _c_size()
        self._check(self._lib.ei_cuda_mem_info(ctypes.byref(free), ctypes.byref(total)))
        return free.value, total.value

    def supports(self, ggml_type: int) -> bool:
        return bool(self._lib.ei_cuda_type_supported(int(ggml_type)))

    # -- weights
    def upload(self, raw: np.ndarray) -> int:
        """A weight's raw bytes to the device; the handle for matmul()."""
        raw = np.ascontiguousarray(raw)
        handle = _vp()
        self._check(self._lib.ei_cuda_upload(raw.ctypes.data, raw.nbytes, ctypes.byref(handle)))
        return int(handle.value)

    def free(self, handle: int) -> None:
        self._check(self._lib.ei_cuda_free(handle))

    # -- the operations
    def matmul(self, ggml_type: int, handle: int, n_rows: int, n_cols: int, row_bytes: int, x: np.ndarray,
               y: np.ndarray) -> None:  # fmt: skip
        """y (n_tokens, n_rows) = x (n_tokens, n_cols) @ W.T."""
        n = x.shape[0] if x.ndim == 2 else -1
        px = _f32("x", x, (n, n_cols))
        py = _f32("y", y, (n, n_rows), writeable=True)
        self._check(self._lib.ei_cuda_matmul(int(ggml_type), handle, n_rows, n_cols, row_bytes, px, n, py))

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
        """x, out (n_rows, d); w (d,)."""
        if x.ndim != 2:
            raise ValueError("rms_norm: x must be 2-D (n_rows, d)")
        n, d = x.shape
        self._check(self._lib.ei_cuda_rms_norm(
            _f32("x", x), _f32("weight", w, (d,)), n, d, eps, _f32("out", out, (n, d), True)))  # fmt: skip

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int, neox: bool, out: np.ndarray) -> None:
        """x, out (n, n_head, head_dim); cos, sin (n, n_rot / 2): each token's rows of the tables."""
        if x.ndim != 3:
            raise ValueError("rope: x must be 3-D (n, n_head, head_dim)")
        n, h, d = x.shape
        if n_rot % 2 or not 0 <= n_rot <= d:
            raise ValueError(f"rope: n_rot {n_rot} must be even and at most head_dim {d}")
        half = n_rot // 2
        self._check(self._lib.ei_cuda_rope(
            _f32("x", x), _f32("cos", cos, (n, half)), _f32("sin", sin, (n, half)), n, h, d, n_rot, int(neox),
            _f32("out", out, x.shape, True)))  # fmt: skip

    def qkv(self, qkv: np.ndarray, n_head: int, n_head_kv: int, head_dim: int, head_dim_v: int, cos: np.ndarray,
            sin: np.ndarray, n_rot: int, neox: bool, q_norm, k_norm, eps: float, q: np.ndarray, k: np.ndarray,
            v: np.ndarray) -> None:  # fmt: skip
        """qkv (n, H D + Hkv D + Hkv Dv) -> q (n, H, D), k (n, Hkv, D), v (n, Hkv, Dv): QK-norm (weights
        (D,) or None) and rope; cos, sin (n, n_rot / 2)."""
        if qkv.ndim != 2:
            raise ValueError("qkv must be 2-D")
        n = qkv.shape[0]
        width = (n_head + n_head_kv) * head_dim + n_head_kv * head_dim_v
        if n_rot % 2 or not 0 <= n_rot <= head_dim:
            raise ValueError(f"qkv: n_rot {n_rot} must be even and at most head_dim {head_dim}")
        if (q_norm is None) != (k_norm is None):
            raise ValueError("qkv: give both QK-norm weights or neither")
        half = n_rot // 2
        pqn = _f32("q_norm", q_norm, (head_dim,)) if q_norm is not None else None
        pkn = _f32("k_norm", k_norm, (head_dim,)) if k_norm is not None else None
        self._check(self._lib.ei_cuda_qkv(
            _f32("qkv", qkv, (n, width)), n, n_head, n_head_kv, head_dim, head_dim_v, _f32("cos", cos, (n, half)),
            _f32("sin", sin, (n, half)), n_rot, int(neox), pqn, pkn, eps,
            _f32("q", q, (n, n_head, head_dim), True), _f32("k", k, (n, n_head_kv, head_dim), True),
            _f32("v", v, (n, n_head_kv, head_dim_v), True)))  # fmt: skip

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, kv_pos: np.ndarray,
                  cells: np.ndarray | None, n_swa: int, scale: float, out: np.ndarray) -> None:  # fmt: skip
        """out (n, H Dv): q (n, H, D) against k (n_cells, Hkv, D), v (n_cells, Hkv, Dv) read through cells
        (n_kv,) int32, or rows 0..n_kv-1 when cells is None."""
        if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
            raise ValueError("attention: q, k and v must be 3-D")
        n, h, d = q.shape
        n_cells, hkv, dv = v.shape
        n_kv = kv_pos.shape[0] if kv_pos.ndim == 1 else -1
        pc = _i32("cells", cells, n_kv) if cells is not None else None
        self._check(self._lib.ei_cuda_attention(
            _f32("q", q), _f32("k", k, (n_cells, hkv, d)), _f32("v", v), _i32("q_pos", q_pos, n),
            _i32("kv_pos", kv_pos, n_kv), pc, n, h, d, n_cells, hkv, dv, n_kv, int(n_swa), scale,
            _f32("out", out, (n, h * dv), True)))  # fmt: skip

    def glu(self, gu: np.ndarray, act: str, out: np.ndarray) -> None:
        """out (n, f) = act(gu[:, :f]) * gu[:, f:]."""
        if gu.ndim != 2 or gu.shape[1] % 2:
            raise ValueError("glu: gu must be (n, 2 f)")
        n, f = gu.shape[0], gu.shape[1] // 2
        self._check(self._lib.ei_cuda_glu(_f32("gu", gu), n, f, ACTIVATIONS[act], _f32("out", out, (n, f), True)))

    def __repr__(self) -> str:
        i = self.info
        return f"CudaLib({i['name']!r}, sm_{i['compute_capability'][0]}{i['compute_capability'][1]}, {self.path})"


_LIBS: dict[int, CudaLib] = {}
_LOCK = threading.Lock()


def open_library(device: int = 0, log=None) -> CudaLib:
    """The library for `device`, built on first use and loaded once per process."""
    with _LOCK:
        lib = _LIBS.get(device)
        if lib is None:
            from .build import library_path

            lib = _LIBS[device] = CudaLib(library_path(log=log), device)
        return lib
