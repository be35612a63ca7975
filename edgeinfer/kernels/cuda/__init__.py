"""The optional CUDA backend: edgeinfer's quantized kernels on an NVIDIA GPU.

Never required: nothing here is built at install, and on a machine without a GPU, a driver or a CUDA
compiler, `available()` is False and `unavailable_reason()` says which is missing, in a sentence.

    from edgeinfer.kernels import cuda
    cuda.available(), cuda.unavailable_reason()
    backend = cuda.CudaBackend()                # builds native/cuda/*.cu on first use (build.py)
    edgeinfer.load(model, n_gpu_layers=-1)      # layers on the GPU (offload.py)

Pieces: driver.py asks libcuda.so (ctypes) for GPUs and their compute capability; build.py finds nvcc
and builds libedgeinfer_cuda.so into the cache; binding.py is the ctypes binding of its C ABI
(native/cuda/edgeinfer_cuda.h); backend.py the backend protocol on top of it; offload.py the split of a
model's layers between the GPU and the CPU.
"""

from __future__ import annotations

from .build import CudaBuildError, cached_library, find_nvcc, source_dir
from .driver import probe


def unavailable_reason() -> str:
    """Why CUDA cannot be used here, in a sentence; "" when it can (a GPU, its driver, and nvcc or a
    library built before)."""
    info = probe()
    if not info.ok:
        return info.reason
    if source_dir() is None:
        return "the CUDA sources (native/cuda) are not part of this installation; use a checkout (pip install -e .)"
    if find_nvcc() is None and cached_library() is None:
        from .build import NVCC_HINT, NVCC_SEARCHED

        return f"no CUDA compiler (nvcc) was found to build the kernels (searched {NVCC_SEARCHED}); {NVCC_HINT}"
    return ""


def available() -> bool:
    """Whether the CUDA backend can be used here (it may still need building: the first use builds it)."""
    return unavailable_reason() == ""


def __getattr__(name: str):
    # the backend and the binding import numpy and ctypes machinery only when asked for
    if name == "CudaBackend":
        from .backend import CudaBackend

        return CudaBackend
    if name in ("CudaError", "CudaLib", "open_library"):
        from . import binding

        return getattr(binding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CudaBackend", "CudaBuildError", "CudaError", "available", "probe", "unavailable_reason"]
