"""Unquantized float types: F32, F16, BF16 (blocks of one value)."""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from .base import QuantFormat


class F32(QuantFormat, ggml_type=GGMLQuantizationType.F32):
    block_dtype = np.dtype("<f4")

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return b.astype(np.float32).reshape(-1, 1)

    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return x.astype(cls.block_dtype).reshape(-1)


class F16(QuantFormat, ggml_type=GGMLQuantizationType.F16):
    block_dtype = np.dtype("<f2")

    # GGML_FP16_TO_FP32
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return b.astype(np.float32).reshape(-1, 1)

    # GGML_FP32_TO_FP16: round to nearest even, as numpy does
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return x.astype(cls.block_dtype).reshape(-1)


class BF16(QuantFormat, ggml_type=GGMLQuantizationType.BF16):
    block_dtype = np.dtype("<u2")  # the top 16 bits of a float32

    # ggml_compute_bf16_to_fp32
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return (b.astype(np.uint32) << 16).view(np.float32).reshape(-1, 1)

    # ggml_compute_fp32_to_bf16: NaN made quiet, otherwise round to nearest even
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        u = x.reshape(-1).view(np.uint32).astype(np.uint64)
        is_nan = (u & 0x7FFFFFFF) > 0x7F800000
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        quiet_nan = (u >> 16) | 64
        return np.where(is_nan, quiet_nan, rounded).astype(cls.block_dtype)
