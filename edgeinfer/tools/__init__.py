"""Tools that work on whole model files: re-quantization (requant.py)."""

from .requant import dequantize_gguf, requantize_gguf, tensor_types

__all__ = ["dequantize_gguf", "requantize_gguf", "tensor_types"]
