"""Non-linear 4-bit formats: each 4-bit code indexes the kvalues_iq4nl table (ggml-common.h).

The quantizers give the bytes of ggml's `quantize_iq4_nl` / `quantize_iq4_xs` without an importance
matrix (what llama.cpp runs then): `quantize_row_iq4_nl_impl` with ntry = 7, ported as the K-quants
are (see kquants.py): float32 in the C's order, sub-blocks along the last axis.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import QK_K, GGMLQuantizationType

from .base import QuantFormat, f16_field, nibbles
from .kquants import F32, GROUP_MAX_EPS, abs_max_first, abs_max_signed, in_chunks, nearest_int, sum_seq

# kvalues_iq4nl
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
IQ4_NTRY = 7  # quantize_iq4_nl / quantize_iq4_xs search 2 * 7 + 1 scales around the first guess

# best_index_int8 picks level i once 2x reaches val[i-1] + val[i], an integer: so the index depends only
# on floor(2x), looked up in a table over the range where it changes. (ggml's older binary search, in
# the llama.cpp this was checked against, picks the same level for every finite x; NaN gets level 15.)
_MIDPOINTS_X2 = KVALUES_IQ4NL[:-1].astype(np.int32) + KVALUES_IQ4NL[1:]  # val[i-1] + val[i], i = 1..15
_LO, _HI = int(_MIDPOINTS_X2[0]) - 1, int(_MIDPOINTS_X2[-1])
_INDEX_OF_FLOOR = np.searchsorted(_MIDPOINTS_X2, np.arange(_LO, _HI + 1), side="right").astype(np.uint8)
_VALUE_OF_FLOOR = KVALUES_IQ4NL.astype(F32)[_INDEX_OF_FLOOR]


def _floor_slot(al: np.ndarray) -> np.ndarray:
    """Table slot of floor(2 * al), clamped to the table; NaN takes the last slot (level 15)."""
    f = np.floor(al + al)
    f = np.fmax(np.fmin(f, F32(_HI)), F32(_LO))  # fmin maps NaN to the top
    return (f - F32(_LO)).astype(np.intp)


def best_index_iq4nl(al: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, al) elementwise (uint8)."""
    return _INDEX_OF_FLOOR[_floor_slot(al)]


def iq4_block_scales(xt: np.ndarray) -> np.ndarray:
    """The per-block scale search of quantize_row_iq4_nl_impl (no importance matrix, ntry = 7).

    xt: (32, m) float32, one block of 32 per column. Returns the scale d of each block (m,): 0 for a
    block whose largest magnitude is below GROUP_MAX_EPS.
    """
    w = xt * xt  # weight[j] = xb[j] * xb[j]
    amax, x_max = abs_max_signed(xt)

    def trial(inv_d):
        q = _VALUE_OF_FLOOR[_floor_slot(inv_d * xt)]  # values[best_index_int8(...)]
        wq = w * q
        return sum_seq(wq * xt), sum_seq(wq * q)

    first_d = -x_max / F32(KVALUES_IQ4NL[0])
    sumqx, sumq2 = trial(F32(1) / first_d)
    d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
    best = d * sumqx
    for itry in range(-IQ4_NTRY, IQ4_NTRY + 1):
        sumqx, sumq2 = trial(F32(itry + int(KVALUES_IQ4NL[0])) / x_max)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    return np.where(amax < GROUP_MAX_EPS, F32(0), d)


def pack_iq4(L: np.ndarray) -> np.ndarray:
    """4-bit codes (..., 32) -> (..., 16) bytes: code j in the low nibble, code j + 16 in the high one."""
    L = L.astype(np.uint8)
    return L[..., :16] | (L[..., 16:] << 4)


class IQ4_NL(QuantFormat, ggml_type=GGMLQuantizationType.IQ4_NL):
    # block_iq4_nl: x = d * kvalues_iq4nl[q]
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])

    # dequantize_row_iq4_nl
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        values = KVALUES_IQ4NL[nibbles(b["qs"])].astype(np.float32)  # (n_blocks, 32)
        return f16_field(b, "d") * values

    # quantize_iq4_nl (quant_weights == NULL)
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype, chunk_blocks=16384)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        d = iq4_block_scales(np.ascontiguousarray(x.T))
        inv_d = np.where(d != 0, F32(1) / d, F32(0))[:, None]
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = d
        out["qs"] = pack_iq4(best_index_iq4nl(inv_d * x))
        return out


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

    # quantize_iq4_xs (quant_weights == NULL)
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        nb = len(x)
        xb = x.reshape(nb, 8, 32)
        scales = iq4_block_scales(np.ascontiguousarray(xb.reshape(-1, 32).T)).reshape(nb, 8)
        _, max_scale = abs_max_first(scales)
        d = -max_scale / F32(32)
        inv_d = np.where(d != 0, F32(1) / d, F32(0))
        l = np.clip(nearest_int(inv_d[:, None] * scales), -32, 31)  # (n_blocks, 8)
        dl = d[:, None] * l.astype(F32)
        inv_dl = np.where(dl != 0, F32(1) / dl, F32(0))
        L = best_index_iq4nl(inv_dl[:, :, None] * xb)  # (n_blocks, 8, 32)
        ls = (l + 32).astype(np.uint16)
        out = np.zeros(nb, cls.block_dtype)
        out["d"] = d
        out["scales_l"] = ((ls[:, 0::2] & 0x0F) | ((ls[:, 1::2] & 0x0F) << 4)).astype(np.uint8)
        out["scales_h"] = np.bitwise_or.reduce((ls >> 4) << np.arange(0, 16, 2, dtype=np.uint16), axis=1)
        out["qs"] = pack_iq4(L).reshape(nb, QK_K // 2)
        return out
