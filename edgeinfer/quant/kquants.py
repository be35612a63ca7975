"""K-quants: super-blocks of QK_K = 256 values in 16 or 8 sub-blocks, with scales quantized too.

Each matches ggml-quants.c's `dequantize_row_<type>` bit for bit. Q8_K is the activation format of the
K-quant dot products (a float32 scale, 8-bit quants, and their sums in groups of 16); it is also
encoded here, like `quantize_row_q8_K_ref`.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import QK_K, GGMLQuantizationType

from .base import QuantFormat, bits, block_absmax, f16_field, inverse_or_zero, nibbles

K_SCALE_SIZE = 12  # bytes of packed 6-bit scales and mins in Q4_K / Q5_K


def unpack_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: 12 bytes (n_blocks, 12) -> 6-bit scales and mins, (n_blocks, 8) each.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 keep their low
    4 bits in bytes 8-11 (scale low, min high) and their top 2 bits in the top bits of bytes 0-3 / 4-7.
    """
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, mn


def _scales_and_mins(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: per sub-block scale d * sc and min dmin * m, float32, shape (n_blocks, 8, 1)."""
    sc, mn = unpack_scale_min_k4(b["scales"])
    d = f16_field(b, "d") * sc.astype(np.float32)
    m = f16_field(b, "dmin") * mn.astype(np.float32)
    return d[:, :, None], m[:, :, None]


class Q2_K(QuantFormat, ggml_type=GGMLQuantizationType.Q2_K):
    # block_q2_K: 16 sub-blocks of 16; x = d * (scales & 0xF) * q - dmin * (scales >> 4), q 2-bit
    block_dtype = np.dtype(
        [("scales", "u1", (QK_K // 16,)), ("qs", "u1", (QK_K // 4,)), ("d", "<f2"), ("dmin", "<f2")]
    )

    # dequantize_row_q2_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        # Each half of 128 values reads 32 bytes four times, at shifts 0, 2, 4, 6.
        qs = b["qs"].reshape(n, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        q = ((qs >> shifts) & 3).reshape(n, 16, 16).astype(np.float32)  # (n_blocks, sub-block, 16)
        dl = (f16_field(b, "d") * (b["scales"] & 0x0F).astype(np.float32))[:, :, None]
        ml = (f16_field(b, "dmin") * (b["scales"] >> 4).astype(np.float32))[:, :, None]
        return (dl * q - ml).reshape(n, QK_K)


class Q3_K(QuantFormat, ggml_type=GGMLQuantizationType.Q3_K):
    # block_q3_K: 16 sub-blocks of 16; x = d * (scale - 32) * (q - 4 * !hbit), q 2-bit, scale 6-bit
    block_dtype = np.dtype(
        [("hmask", "u1", (QK_K // 8,)), ("qs", "u1", (QK_K // 4,)), ("scales", "u1", (12,)), ("d", "<f2")]
    )

    @staticmethod
    def unpack_scales(scales: np.ndarray) -> np.ndarray:
        """12 bytes (n_blocks, 12) -> 16 6-bit scales (n_blocks, 16), as the kmask1/kmask2 code does.

        Scale k: low 4 bits in byte k % 8 (low nibble for k < 8, high for k >= 8), top 2 bits in byte
        8 + k % 4 at bit 2 * (k // 4).
        """
        low = nibbles(scales[:, :8])  # (n_blocks, 16)
        high = scales[:, 8:12].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)
        high = (high & 3).reshape(-1, 16)
        return low | (high << 4)

    # dequantize_row_q3_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        scale = cls.unpack_scales(b["scales"]).astype(np.int8) - np.int8(32)
        dl = (f16_field(b, "d") * scale.astype(np.float32))[:, :, None]  # (n_blocks, 16, 1)
        # Each half of 128 values reads 32 bytes of qs four times, at shifts 0, 2, 4, 6; value j of
        # group g (0..7) takes its high bit from bit g of hmask[j].
        qs = b["qs"].reshape(n, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        ql = ((qs >> shifts) & 3).reshape(n, 8, 32)
        hbit = bits(b["hmask"], 8).transpose(0, 2, 1)  # (n_blocks, group, 32)
        q = ql.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)  # hbit 0 subtracts 4
        return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


class Q4_K(QuantFormat, ggml_type=GGMLQuantizationType.Q4_K):
    # block_q4_K: 8 sub-blocks of 32; x = d * sc * q - dmin * m, q 4-bit, sc and m 6-bit
    block_dtype = np.dtype(
        [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (K_SCALE_SIZE,)), ("qs", "u1", (QK_K // 2,))]
    )

    # dequantize_row_q4_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        d, m = _scales_and_mins(b)
        # 32 bytes per 64 values: low nibbles are sub-block 2i, high nibbles sub-block 2i + 1.
        q = nibbles(b["qs"].reshape(n, 4, 32)).reshape(n, 8, 32).astype(np.float32)
        return (d * q - m).reshape(n, QK_K)


class Q5_K(QuantFormat, ggml_type=GGMLQuantizationType.Q5_K):
    # block_q5_K: as Q4_K with a fifth bit: value j of sub-block s has it in bit s of qh[j]
    block_dtype = np.dtype(
        [
            ("d", "<f2"),
            ("dmin", "<f2"),
            ("scales", "u1", (K_SCALE_SIZE,)),
            ("qh", "u1", (QK_K // 8,)),
            ("qs", "u1", (QK_K // 2,)),
        ]
    )

    # dequantize_row_q5_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        d, m = _scales_and_mins(b)
        ql = nibbles(b["qs"].reshape(n, 4, 32)).reshape(n, 8, 32)
        qh = bits(b["qh"], 8).transpose(0, 2, 1)  # (n_blocks, sub-block, 32)
        q = (ql | (qh << 4)).astype(np.float32)
        return (d * q - m).reshape(n, QK_K)


class Q6_K(QuantFormat, ggml_type=GGMLQuantizationType.Q6_K):
    # block_q6_K: 16 sub-blocks of 16; x = d * scale * (q - 32), q 6-bit (4 in ql, 2 in qh), scale int8
    block_dtype = np.dtype(
        [
            ("ql", "u1", (QK_K // 2,)),
            ("qh", "u1", (QK_K // 4,)),
            ("scales", "i1", (QK_K // 16,)),
            ("d", "<f2"),
        ]
    )

    # dequantize_row_q6_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        # Each half of 128 values: 64 bytes of ql give 4 runs of 32 low parts (low nibbles of bytes
        # 0-31, 32-63, then high nibbles of the same), 32 bytes of qh their top 2 bits at shifts 0, 2, 4, 6.
        ql = b["ql"].reshape(n, 2, 1, 2, 32)
        ql = (ql >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)) & 0x0F
        ql = ql.reshape(n, 2, 4, 32)
        qh = b["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        qh = qh & 3
        q = (ql | (qh << 4)).astype(np.int8) - np.int8(32)
        d = (f16_field(b, "d") * b["scales"].astype(np.float32))[:, :, None]  # (n_blocks, 16, 1)
        return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


class Q8_K(QuantFormat, ggml_type=GGMLQuantizationType.Q8_K):
    # block_q8_K: x = d * q; bsums[i] = sum of q[16 i : 16 i + 16] (for the K-quant dot products)
    block_dtype = np.dtype([("d", "<f4"), ("qs", "i1", (QK_K,)), ("bsums", "<i2", (QK_K // 16,))])

    # dequantize_row_q8_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return b["d"].reshape(-1, 1) * b["qs"].astype(np.float32)

    # quantize_row_q8_K_ref. Unlike ggml, an all-zero block also gets zero bsums (ggml leaves them).
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        x_max = block_absmax(x)  # (n_blocks, 1)
        with np.errstate(divide="ignore"):
            iscale = np.float32(-127) / x_max
        iscale = np.where(x_max != 0, iscale, np.float32(0))
        # nearest_int rounds halves to even, as np.rint does
        q = np.minimum(np.rint(iscale * x), 127).astype(np.int8)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = inverse_or_zero(iscale)[:, 0]
        out["qs"] = q
        out["bsums"] = q.reshape(len(x), QK_K // 16, 16).sum(axis=-1, dtype=np.int16)
        return out
