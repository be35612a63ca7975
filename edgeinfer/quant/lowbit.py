"""The low-bit formats: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M (lattice codebooks),
TQ1_0, TQ2_0 (ternary) and MXFP4 (OCP microscaling FP4), as ggml-common.h lays their blocks out.

The IQ formats pick each group of 8 (IQ3: 4) values from a fixed grid (iq_grids.py, ggml-common.h's
tables), with a sign byte from `ksigns_iq2xs` (7 stored sign bits, the 8th making the parity even) or
explicit sign bits, and a small scale per 32 values. Each `dequantize_blocks` is ggml's
`dequantize_row_<type>`, in float32 in the C's order (bit for bit; gguf-py's `gguf.quants` is the
second oracle, tests/test_quant_lowbit.py). No quantizers: llama.cpp's need an importance matrix and a
search over the grid; models in these formats come from llama.cpp's llama-quantize.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import QK_K, GGMLQuantizationType

from .base import QuantFormat, f16_field, nibbles
from .iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID

F32 = np.float32

# ksigns_iq2xs: the low 7 bits as stored, bit 7 set when they hold an odd number of ones
KSIGNS_IQ2XS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], np.uint8)
IQ1S_DELTA = F32(0.125)  # IQ1S_DELTA = IQ1M_DELTA
# kvalues_mxfp4 (kvalues_fp4): twice the E2M1 values (the scale is halved to match)
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)

# the grids as bytes: entry i is row i (8 values for IQ2/IQ1, 4 for IQ3), int8 for IQ1S
GRID_IQ2XXS = IQ2XXS_GRID.view(np.uint8).reshape(-1, 8)
GRID_IQ2XS = IQ2XS_GRID.view(np.uint8).reshape(-1, 8)
GRID_IQ2S = IQ2S_GRID.view(np.uint8).reshape(-1, 8)
GRID_IQ3XXS = IQ3XXS_GRID.view(np.uint8).reshape(-1, 4)
GRID_IQ3S = IQ3S_GRID.view(np.uint8).reshape(-1, 4)
GRID_IQ1S = IQ1S_GRID.view(np.int8).reshape(-1, 8)

_BIT = np.arange(8, dtype=np.uint8)


def sign_bits(signs: np.ndarray) -> np.ndarray:
    """Sign bytes (...,) -> float32 (..., 8): -1 where bit j is set (kmask_iq2xs[j]), else +1."""
    return np.where((signs[..., None] >> _BIT) & 1, F32(-1), F32(1))


def _le32(b: np.ndarray) -> np.ndarray:
    """Bytes (..., 4k) -> little-endian uint32 (..., k)."""
    return np.ascontiguousarray(b).view("<u4").astype(np.uint32)


class IQ2_XXS(QuantFormat, ggml_type=GGMLQuantizationType.IQ2_XXS):
    # block_iq2_xxs: d | qs u16[32], read as 8 pairs of u32 per block: aux0 = 4 grid indices (bytes),
    # aux1 = 4 x 7 sign bits and a 4-bit scale (top); x = d * (0.5 + s) * 0.25 * grid * sign
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (QK_K // 4,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        q = b["qs"].reshape(n, 8, 8)
        aux1 = _le32(q[:, :, 4:]).reshape(n, 8)
        db = f16_field(b, "d") * (F32(0.5) + (aux1 >> 28).astype(F32)) * F32(0.25)  # (n, 8)
        grid = GRID_IQ2XXS[q[:, :, :4]].astype(F32)  # (n, 8, 4, 8)
        signs = KSIGNS_IQ2XS[(aux1[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127]  # (n, 8, 4)
        return (db[:, :, None, None] * grid * sign_bits(signs)).reshape(n, QK_K)


class IQ2_XS(QuantFormat, ggml_type=GGMLQuantizationType.IQ2_XS):
    # block_iq2_xs: d | qs u16[32] (9-bit grid index, 7 sign bits) | scales u8[8] (two 4-bit scales per
    # 32 values, one per 16); x = d * (0.5 + s) * 0.25 * grid * sign
    block_dtype = np.dtype([("d", "<f2"), ("qs", "<u2", (QK_K // 8,)), ("scales", "u1", (QK_K // 32,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        sc = np.stack([b["scales"] & 0x0F, b["scales"] >> 4], axis=-1).astype(F32)  # (n, 8, 2)
        db = f16_field(b, "d")[:, :, None] * (F32(0.5) + sc) * F32(0.25)
        db = np.repeat(db, 2, axis=-1)  # (n, 8, 4): groups 0, 1 take the low scale, 2, 3 the high one
        qs = b["qs"].reshape(n, 8, 4)
        grid = GRID_IQ2XS[qs & 511].astype(F32)
        return (db[..., None] * grid * sign_bits(KSIGNS_IQ2XS[qs >> 9])).reshape(n, QK_K)


class IQ2_S(QuantFormat, ggml_type=GGMLQuantizationType.IQ2_S):
    # block_iq2_s: d | qs[64] (32 grid index bytes, then 32 sign bytes) | qh[8] (2 high index bits per
    # group) | scales[8]; x = d * (0.5 + s) * 0.25 * grid * sign
    block_dtype = np.dtype(
        [("d", "<f2"), ("qs", "u1", (QK_K // 4,)), ("qh", "u1", (QK_K // 32,)), ("scales", "u1", (QK_K // 32,))]
    )

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        sc = np.stack([b["scales"] & 0x0F, b["scales"] >> 4], axis=-1).astype(F32)
        db = np.repeat(f16_field(b, "d")[:, :, None] * (F32(0.5) + sc) * F32(0.25), 2, axis=-1)  # (n, 8, 4)
        low = b["qs"][:, :32].reshape(n, 8, 4).astype(np.int32)
        high = (b["qh"][:, :, None].astype(np.int32) >> (2 * np.arange(4))) & 3
        grid = GRID_IQ2S[low | (high << 8)].astype(F32)
        signs = b["qs"][:, 32:].reshape(n, 8, 4)
        return (db[..., None] * grid * sign_bits(signs)).reshape(n, QK_K)


class IQ3_XXS(QuantFormat, ggml_type=GGMLQuantizationType.IQ3_XXS):
    # block_iq3_xxs: d | qs[96]: 64 grid index bytes (4 values each), then per 32 values a u32 of 4 x 7
    # sign bits and a 4-bit scale; x = d * (0.5 + s) * 0.5 * grid * sign
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (3 * QK_K // 8,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        aux = _le32(b["qs"][:, 64:]).reshape(n, 8)
        db = f16_field(b, "d") * (F32(0.5) + (aux >> 28).astype(F32)) * F32(0.5)  # (n, 8)
        grid = GRID_IQ3XXS[b["qs"][:, :64]].reshape(n, 8, 4, 8).astype(F32)
        signs = KSIGNS_IQ2XS[(aux[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127]  # (n, 8, 4)
        return (db[:, :, None, None] * grid * sign_bits(signs)).reshape(n, QK_K)


class IQ3_S(QuantFormat, ggml_type=GGMLQuantizationType.IQ3_S):
    # block_iq3_s: d | qs[64] (low 8 index bits, 4 values each) | qh[8] (the 9th bits) | signs[32] |
    # scales[4] (a 4-bit scale per 32 values); x = d * (1 + 2 s) * grid * sign
    block_dtype = np.dtype(
        [("d", "<f2"), ("qs", "u1", (QK_K // 4,)), ("qh", "u1", (QK_K // 32,)), ("signs", "u1", (QK_K // 8,)),
         ("scales", "u1", (QK_K // 64,))]
    )  # fmt: skip

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        s = np.stack([b["scales"] & 0x0F, b["scales"] >> 4], axis=-1).reshape(n, 8).astype(np.int32)
        db = f16_field(b, "d") * (1 + 2 * s).astype(F32)  # (n, 8)
        high = (b["qh"][:, :, None].astype(np.int32) >> np.arange(8)) & 1  # (n, 8, 8)
        idx = b["qs"].reshape(n, 8, 8).astype(np.int32) | (high << 8)
        grid = GRID_IQ3S[idx].reshape(n, 8, 4, 8).astype(F32)
        signs = b["signs"].reshape(n, 8, 4)
        return (db[:, :, None, None] * grid * sign_bits(signs)).reshape(n, QK_K)


class IQ1_S(QuantFormat, ggml_type=GGMLQuantizationType.IQ1_S):
    # block_iq1_s: d | qs[32] (low 8 index bits) | qh u16[8]: per 32 values 4 x 3 high index bits, a
    # 3-bit scale, the sign of the shift; x = d * (2 s + 1) * (grid + delta), delta = +-0.125
    block_dtype = np.dtype([("d", "<f2"), ("qs", "u1", (QK_K // 8,)), ("qh", "<u2", (QK_K // 32,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        qh = b["qh"].astype(np.int32)  # (n, 8)
        dl = f16_field(b, "d") * (2 * ((qh >> 12) & 7) + 1).astype(F32)
        delta = np.where(qh & 0x8000, -IQ1S_DELTA, IQ1S_DELTA)
        idx = b["qs"].reshape(n, 8, 4).astype(np.int32) | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
        grid = GRID_IQ1S[idx].astype(F32)  # (n, 8, 4, 8)
        return (dl[:, :, None, None] * (grid + delta[:, :, None, None])).reshape(n, QK_K)


class IQ1_M(QuantFormat, ggml_type=GGMLQuantizationType.IQ1_M):
    # block_iq1_m: qs[32] | qh[16] (per 8 values: 3 high index bits, the shift's sign) | scales u16[4]:
    # 3-bit scales per 16 values, and the fp16 super-block scale in the top nibbles of the four words
    block_dtype = np.dtype([("qs", "u1", (QK_K // 8,)), ("qh", "u1", (QK_K // 16,)), ("scales", "<u2", (4,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        sc = b["scales"].astype(np.int32)  # (n, 4)
        bits16 = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
        d = bits16.astype(np.uint16).view(np.float16).astype(F32).reshape(n, 1, 1)
        # scale of group g (of 16 values) in sub-block ib: bits 6 (ib % 2) + 3 g of sc[ib // 2]
        shifts = (6 * (np.arange(8) % 2))[:, None] + 3 * np.arange(2)  # (8, 2)
        s = (sc[:, np.arange(8) // 2, None] >> shifts) & 7  # (n, 8, 2)
        dl = np.repeat(d * (2 * s + 1).astype(F32), 2, axis=-1)  # (n, 8, 4): groups of 8
        qh = b["qh"].reshape(n, 8, 2).astype(np.int32)
        nib = np.stack([qh & 0x0F, qh >> 4], axis=-1).reshape(n, 8, 4)  # per group of 8: 3 bits + sign
        idx = b["qs"].reshape(n, 8, 4).astype(np.int32) | ((nib & 7) << 8)
        delta = np.where(nib & 8, -IQ1S_DELTA, IQ1S_DELTA)
        grid = GRID_IQ1S[idx].astype(F32)
        return (dl[..., None] * (grid + delta[..., None])).reshape(n, QK_K)


class TQ1_0(QuantFormat, ggml_type=GGMLQuantizationType.TQ1_0):
    # block_tq1_0: qs[48] (5 ternary digits per byte, as a fixed-point fraction of 243) | qh[4] (4 per
    # byte) | d; digit n of byte q: ((uint8)(q * 3^n) * 3) >> 8, minus 1
    block_dtype = np.dtype([("qs", "u1", (48,)), ("qh", "u1", (4,)), ("d", "<f2")])
    POW3 = np.array([1, 3, 9, 27, 81, 243], np.uint8)

    @classmethod
    def _digits(cls, q: np.ndarray, n: int) -> np.ndarray:
        """Bytes (nb, m) -> digits (nb, n, m), digit k of byte j at [k, j]."""
        p = (q[:, None, :].astype(np.uint16) * cls.POW3[:n, None]).astype(np.uint8)  # uint8 wrap-around
        return ((p.astype(np.uint16) * 3) >> 8).astype(np.int16) - 1

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        v = np.concatenate(
            [cls._digits(b["qs"][:, :32], 5).reshape(n, -1), cls._digits(b["qs"][:, 32:], 5).reshape(n, -1),
             cls._digits(b["qh"], 4).reshape(n, -1)], axis=1)  # fmt: skip
        return v.astype(F32) * f16_field(b, "d")


class TQ2_0(QuantFormat, ggml_type=GGMLQuantizationType.TQ2_0):
    # block_tq2_0: qs[64] (4 two-bit values per byte: value 32 l + m of each half in bits 2 l of byte
    # m) | d; x = (q - 1) * d
    block_dtype = np.dtype([("qs", "u1", (QK_K // 4,)), ("d", "<f2")])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        qs = b["qs"].reshape(n, 2, 1, 32)
        q = ((qs >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3).astype(np.int8) - 1  # (n, 2, 4, 32)
        return q.reshape(n, QK_K).astype(F32) * f16_field(b, "d")


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """GGML_E8M0_TO_FP32_HALF: 2^(e - 128) as float32 (subnormal for e < 2; e = 255 is not special)."""
    e = e.astype(np.uint32)
    return np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32).view(F32)


class MXFP4(QuantFormat, ggml_type=GGMLQuantizationType.MXFP4):
    # block_mxfp4: e (E8M0 shared exponent) | qs[16] (E2M1 codes, value j low nibble, j + 16 high);
    # x = kvalues_mxfp4[q] * 2^(e - 128)
    block_dtype = np.dtype([("e", "u1"), ("qs", "u1", (16,))])

    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        d = e8m0_to_fp32_half(b["e"]).reshape(-1, 1)
        return KVALUES_MXFP4[nibbles(b["qs"])].astype(F32) * d
