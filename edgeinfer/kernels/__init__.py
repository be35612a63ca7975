"""Backends behind one small protocol (kernels.base.Backend): "numba" (portable, fast), "reference"
(slow float32 twin for tests)."""

from __future__ import annotations

from .base import Backend, QTensor

BACKENDS = ("numba", "reference")


def get_backend(name: str = "numba", n_threads: int | None = None) -> Backend:
    """A backend by name; n_threads for those that use threads (default: every available core)."""
    if name == "numba":
        from .numba import NumbaBackend

        return NumbaBackend(n_threads)
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    raise ValueError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "Backend", "QTensor", "get_backend"]
