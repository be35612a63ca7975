"""The original ggml formats: blocks of 32 values with one fp16 scale (and a minimum for the _1 kinds).

Each matches ggml-quants.c: `dequantize_row_<type>` for decoding, `quantize_row_<type>_ref` for
encoding, bit for bit.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from .base import (
    QuantFormat,
    bits,
    block_absmax,
    f16_field,
    inverse_or_zero,
    nibbles,
    round_half_away,
)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """4-bit values (n_blocks, 32) -> bytes (n_blocks, 16): value j low, value j + 16 high."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """5-bit values (n_blocks, 32) -> their bit 4 as one little-endian uint32 per block (`qh`)."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little").view("<u4").reshape(-1)


def _truncate(v: np.ndarray, q_max: int) -> np.ndarray:
    """`MIN(q_max, (int8_t)v)` for v >= 0 (v = x * id + offset, in float32)."""
    return np.minimum(np.trunc(v), q_max).astype(np.uint8)


class Q4_0(QuantFormat, ggml_type=GGMLQuantizationType.Q4_0):
    # block_q4_0: x = d * (q - 8)
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])

    # dequantize_row_q4_0
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        q = nibbles(b["qs"]).astype(np.int8) - np.int8(8)  # (n_blocks, 32)
        return q.astype(np.float32) * f16_field(b, "d")

    # quantize_row_q4_0_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        d = block_absmax(x) / np.float32(-8)
        q = _truncate(x * inverse_or_zero(d) + np.float32(8.5), 15)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d[:, 0]
        out["qs"] = _pack_nibbles(q)
        return out


class Q4_1(QuantFormat, ggml_type=GGMLQuantizationType.Q4_1):
    # block_q4_1: x = d * q + m
    block_dtype = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))])

    # dequantize_row_q4_1
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        q = nibbles(b["qs"]).astype(np.float32)  # (n_blocks, 32)
        return q * f16_field(b, "d") + f16_field(b, "m")

    # quantize_row_q4_1_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        x_min = x.min(axis=-1, keepdims=True)
        x_max = x.max(axis=-1, keepdims=True)
        d = (x_max - x_min) / np.float32(15)
        q = _truncate((x - x_min) * inverse_or_zero(d) + np.float32(0.5), 15)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d[:, 0]
        out["m"] = x_min[:, 0]
        out["qs"] = _pack_nibbles(q)
        return out


class Q5_0(QuantFormat, ggml_type=GGMLQuantizationType.Q5_0):
    # block_q5_0: x = d * (q - 16), q's bit 4 for value j in bit j of qh
    block_dtype = np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])

    # dequantize_row_q5_0
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        q = nibbles(b["qs"]) | (bits(b["qh"], 32) << 4)  # (n_blocks, 32)
        q = q.astype(np.int8) - np.int8(16)
        return q.astype(np.float32) * f16_field(b, "d")

    # quantize_row_q5_0_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        d = block_absmax(x) / np.float32(-16)
        q = _truncate(x * inverse_or_zero(d) + np.float32(16.5), 31)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d[:, 0]
        out["qh"] = _pack_high_bits(q)
        out["qs"] = _pack_nibbles(q)
        return out


class Q5_1(QuantFormat, ggml_type=GGMLQuantizationType.Q5_1):
    # block_q5_1: x = d * q + m, q's bit 4 for value j in bit j of qh
    block_dtype = np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])

    # dequantize_row_q5_1
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        q = nibbles(b["qs"]) | (bits(b["qh"], 32) << 4)  # (n_blocks, 32)
        return q.astype(np.float32) * f16_field(b, "d") + f16_field(b, "m")

    # quantize_row_q5_1_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        x_min = x.min(axis=-1, keepdims=True)
        x_max = x.max(axis=-1, keepdims=True)
        d = (x_max - x_min) / np.float32(31)
        q = _truncate((x - x_min) * inverse_or_zero(d) + np.float32(0.5), 31)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d[:, 0]
        out["m"] = x_min[:, 0]
        out["qh"] = _pack_high_bits(q)
        out["qs"] = _pack_nibbles(q)
        return out


class Q8_0(QuantFormat, ggml_type=GGMLQuantizationType.Q8_0):
    # block_q8_0: x = d * q
    block_dtype = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])

    # dequantize_row_q8_0
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return b["qs"].astype(np.float32) * f16_field(b, "d")

    # quantize_row_q8_0_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
        q = round_half_away(x * inverse_or_zero(d))
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d[:, 0]
        out["qs"] = q.astype(np.int8)
        return out
