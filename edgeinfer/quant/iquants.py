"""Non-linear 4-bit formats: each 4-bit code indexes the kvalues_iq4nl table (ggml-common.h)."""

from __future__ import annotations

import numpy as np
from gguf.constants import QK_K, GGMLQuantizationType

from .base import QuantFormat, f16_field, nibbles

# kvalues_iq4nl
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


class IQ4_NL(QuantFormat, ggml_type=GGMLQuantizationType.IQ4_NL):
    # block_iq4_nl: x = d * kvalues_iq4nl[q]
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])

    # dequantize_row_iq4_nl
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        values = KVALUES_IQ4NL[nibbles(b["qs"])].astype(np.float32)  # (n_blocks, 32)
        return f16_field(b, "d") * values


class IQ4_XS(QuantFormat, ggml_type=GGMLQuantizationType.IQ4_XS):
    # block_iq4_xs: 8 sub-blocks of 32; x = d * (ls - 32) * kvalues_iq4nl[q], ls 6-bit: low 4 bits in
    # scales_l (nibble ib % 2 of byte ib / 2), top 2 bits at bit 2 * ib of scales_h
    block_dtype = np.dtype(
        [("d", "<f2"), ("scales_h", "<u2"), ("scales_l", "u1", (QK_K // 64,)), ("qs", "u1", (QK_K // 2,))]
    )

    # dequantize_row_iq4_xs
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        low = np.stack([b["scales_l"] & 0x0F, b["scales_l"] >> 4], axis=-1).reshape(n, 8)
        high = (b["scales_h"][:, None] >> np.arange(0, 16, 2, dtype=np.uint16)) & 3
        ls = low.astype(np.int32) | (high.astype(np.int32) << 4)
        dl = (f16_field(b, "d") * (ls - 32).astype(np.float32))[:, :, None]  # (n_blocks, 8, 1)
        values = KVALUES_IQ4NL[nibbles(b["qs"].reshape(n, 8, 16))].astype(np.float32)  # (n_blocks, 8, 32)
        return (dl * values).reshape(n, QK_K)
