"""Backends behind one small protocol (kernels.base.Backend): "native" (C kernels, the fastest, when the
extension edgeinfer._native is built), "numba" (portable, fast), "reference" (slow float32 twin for
tests), and "auto" (native when built, else numba). "cuda" (kernels/cuda: an NVIDIA GPU, built on first
use) is optional and never chosen by "auto"; models use it through edgeinfer.load(n_gpu_layers=...)."""

from __future__ import annotations

from ..errors import EdgeInferError
from .base import Backend, QTensor

BACKENDS = ("auto", "native", "numba", "reference")


def native_available() -> bool:
    """Whether the C backend is built (it is whenever `pip install` found a C compiler)."""
    from . import native

    return native.available()


def get_backend(name: str = "numba", n_threads: int | None = None) -> Backend:
    """A backend by name; n_threads for those that use threads (default: every available core)."""
    if name == "auto":
        name = "native" if native_available() else "numba"
    if name == "native":
        from . import native

        if not native.available():
            raise EdgeInferError(
                f"The native backend is not available: the C extension edgeinfer._native is not built; "
                f"{native.BUILD_HINT}. Or choose backend 'numba' (or 'auto', which falls back to it)."
            )
        return native.NativeBackend(n_threads)
    if name == "numba":
        from .numba import NumbaBackend

        return NumbaBackend(n_threads)
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    if name == "cuda":  # every op on the GPU (offloading some layers: edgeinfer.load(n_gpu_layers=...))
        from . import cuda

        if not cuda.available():
            raise EdgeInferError(f"CUDA is unavailable here: {cuda.unavailable_reason()}.")
        return cuda.CudaBackend(n_threads)
    raise ValueError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "Backend", "QTensor", "get_backend", "native_available"]
