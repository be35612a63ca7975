"""Numba kernels of the low-bit formats: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0,
TQ2_0 (against Q8_K activations) and MXFP4 (against Q8_0), as ggml's `ggml_vec_dot_<type>_q8_<k>`
computes them (ggml-cpu/quants.c): per super-block, integer sums of grid value x sign x activation
quant, weighted by the integer sub-block scales, then one float multiply by the two block scales; the
final constant (0.125 for IQ2, 0.25 for IQ3_XXS) as ggml applies it. And `dequant_<type>_blocks`, the
loops of ggml's `dequantize_row_<type>` (the numpy references in edgeinfer.quant.lowbit, bit for bit).

Plain scalar Numba (the grids and sign patterns are constant tables frozen into the compiled code):
correct first, not tuned. Importing this module registers the kernels in matmul.py's and dequant.py's
tables (FORMATS / MATMUL_KERNELS / VEC_DOT_TYPE, dequant.KERNELS), so that the Numba backend, and the
native one for types without a C kernel, multiply and look up these types like any other. The
per-type wrappers are generated from `LOWBIT` below with matmul.py's templates; Numba compiles each
lazily, on a type's first product, and caches it.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange  # noqa: F401  (prange: the generated wrappers)

from ...quant import lowbit as ql
from . import dequant as _dq
from . import matmul as _mm
from .dequant import _f16, _f32_from_bits, _u16, _u32
from .matmul import ACT_Q8_0, ACT_Q8_K, _quantize_activations, _run  # noqa: F401  (the wrappers)

QK = 32
QK_K = 256

# the tables as int32 (frozen into the compiled code as constants)
G_IQ2XXS = ql.GRID_IQ2XXS.astype(np.int32)
G_IQ2XS = ql.GRID_IQ2XS.astype(np.int32)
G_IQ2S = ql.GRID_IQ2S.astype(np.int32)
G_IQ3XXS = ql.GRID_IQ3XXS.astype(np.int32)
G_IQ3S = ql.GRID_IQ3S.astype(np.int32)
G_IQ1S = ql.GRID_IQ1S.astype(np.int32)
# SIGNS8[s, j]: -1 where bit j of the sign byte s is set, else 1; SIGNS7: the same for ksigns_iq2xs[s]
SIGNS8 = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, -1, 1).astype(np.int32)
SIGNS7 = SIGNS8[ql.KSIGNS_IQ2XS.astype(np.int64)]
KV_MXFP4 = ql.KVALUES_MXFP4.astype(np.int32)
F = np.float32
DELTA = np.float32(0.125)  # IQ1S_DELTA = IQ1M_DELTA


@njit(cache=True)
def _half(h):
    """GGML_FP16_TO_FP32 of the fp16 bits h (dequant._f16, from a value rather than memory)."""
    sign = (h & 0x8000) << 16
    exp = h & 0x7C00
    if exp == 0x7C00:
        return _f32_from_bits(sign | 0x7F800000 | ((h & 0x03FF) << 13))
    if exp != 0:
        return _f32_from_bits(sign | (((h & 0x7FFF) + 0x1C000) << 13))
    v = np.float32(h & 0x03FF) * np.float32(2.0**-24)
    return -v if sign else v


@njit(cache=True)
def _e8m0_half(e):
    """GGML_E8M0_TO_FP32_HALF: 2^(e - 128) as float32."""
    return _f32_from_bits(np.int64(0x00200000) << e if e < 2 else (np.int64(e) - 1) << 23)


# -- dot products: row at byte wo (nb blocks) . token t of the quantized activations -------------------


@njit(cache=True, inline="always")
def _dot_iq2_xxs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 66 * b
        yb = t * nb + b
        q = yb * QK_K
        bsum = 0
        for ib in range(8):
            oo = o + 2 + 8 * ib
            aux1 = _u32(w, oo + 4)
            sumi = 0
            for l in range(4):
                g = np.int64(w[oo + l])
                s = (aux1 >> (7 * l)) & 127
                for j in range(8):
                    sumi += G_IQ2XXS[g, j] * SIGNS7[s, j] * np.int32(yq[q + j])
                q += 8
            bsum += sumi * (2 * (aux1 >> 28) + 1)
        sumf += (_f16(w, o) * yd[yb]) * F(bsum)
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _dot_iq2_xs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 74 * b
        yb = t * nb + b
        q = yb * QK_K
        bsum = 0
        for ib in range(8):
            sc = np.int64(w[o + 66 + ib])
            for h in range(2):
                sumi = 0
                for l in range(2 * h, 2 * h + 2):
                    v = _u16(w, o + 2 + 2 * (4 * ib + l))
                    g = v & 511
                    s = v >> 9
                    for j in range(8):
                        sumi += G_IQ2XS[g, j] * SIGNS7[s, j] * np.int32(yq[q + j])
                    q += 8
                bsum += sumi * (2 * ((sc >> (4 * h)) & 15) + 1)
        sumf += (_f16(w, o) * yd[yb]) * F(bsum)
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _dot_iq2_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 82 * b
        yb = t * nb + b
        q = yb * QK_K
        bsum = 0
        for ib in range(8):
            sc = np.int64(w[o + 74 + ib])
            qh = np.int64(w[o + 66 + ib])
            for h in range(2):
                sumi = 0
                for l in range(2 * h, 2 * h + 2):
                    g = np.int64(w[o + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                    s = np.int64(w[o + 34 + 4 * ib + l])
                    for j in range(8):
                        sumi += G_IQ2S[g, j] * SIGNS8[s, j] * np.int32(yq[q + j])
                    q += 8
                bsum += sumi * (2 * ((sc >> (4 * h)) & 15) + 1)
        sumf += (_f16(w, o) * yd[yb]) * F(bsum)
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _dot_iq3_xxs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 98 * b
        yb = t * nb + b
        q = yb * QK_K
        bsum = 0
        for ib in range(8):
            aux = _u32(w, o + 66 + 4 * ib)
            sumi = 0
            for l in range(4):
                g1 = np.int64(w[o + 2 + 8 * ib + 2 * l])
                g2 = np.int64(w[o + 3 + 8 * ib + 2 * l])
                s = (aux >> (7 * l)) & 127
                for j in range(4):
                    sumi += G_IQ3XXS[g1, j] * SIGNS7[s, j] * np.int32(yq[q + j])
                    sumi += G_IQ3XXS[g2, j] * SIGNS7[s, j + 4] * np.int32(yq[q + j + 4])
                q += 8
            bsum += sumi * (2 * (aux >> 28) + 1)
        sumf += (_f16(w, o) * yd[yb]) * F(bsum)
    return F(0.25) * sumf


@njit(cache=True, inline="always")
def _dot_iq3_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 110 * b
        yb = t * nb + b
        q = yb * QK_K
        bsum = 0
        for ib in range(8):
            qh = np.int64(w[o + 66 + ib])
            sumi = 0
            for l in range(4):
                g1 = np.int64(w[o + 2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                g2 = np.int64(w[o + 3 + 8 * ib + 2 * l]) | ((qh << (7 - 2 * l)) & 256)
                s = np.int64(w[o + 74 + 4 * ib + l])
                for j in range(4):
                    sumi += G_IQ3S[g1, j] * SIGNS8[s, j] * np.int32(yq[q + j])
                    sumi += G_IQ3S[g2, j] * SIGNS8[s, j + 4] * np.int32(yq[q + j + 4])
                q += 8
            bsum += sumi * (2 * ((np.int64(w[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1)
        sumf += (_f16(w, o) * yd[yb]) * F(bsum)
    return sumf


@njit(cache=True, inline="always")
def _dot_iq1_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 50 * b
        yb = t * nb + b
        q = yb * QK_K
        sumi = 0
        sumi1 = 0
        for ib in range(8):
            qh = _u16(w, o + 34 + 2 * ib)
            ls = 2 * ((qh >> 12) & 7) + 1
            delta = -1 if qh & 0x8000 else 1
            lsum = 0
            for l in range(4):
                g = np.int64(w[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                for j in range(8):
                    lsum += G_IQ1S[g, j] * np.int32(yq[q + j])
                q += 8
            sumi += ls * lsum
            sumi1 += ls * delta * (np.int64(ybs[yb * 16 + 2 * ib]) + np.int64(ybs[yb * 16 + 2 * ib + 1]))
        sumf += (_f16(w, o) * yd[yb]) * (F(sumi) + DELTA * F(sumi1))
    return sumf


@njit(cache=True, inline="always")
def _dot_iq1_m(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 56 * b
        yb = t * nb + b
        q = yb * QK_K
        s0, s1, s2, s3 = _u16(w, o + 48), _u16(w, o + 50), _u16(w, o + 52), _u16(w, o + 54)
        bits = (s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)
        d = _half(bits)
        sumi1 = 0
        sumi2 = 0
        for ib in range(8):
            sc = _u16(w, o + 48 + 2 * (ib // 2))
            for h in range(2):
                qh = np.int64(w[o + 32 + 2 * ib + h])
                sum1 = 0
                sum2 = 0
                for m in range(2):
                    g = np.int64(w[o + 4 * ib + 2 * h + m]) | (((qh >> (4 * m)) & 7) << 8)
                    delta = -1 if (qh >> (4 * m)) & 8 else 1
                    lsum1 = 0
                    lsum2 = 0
                    for j in range(8):
                        lsum1 += G_IQ1S[g, j] * np.int32(yq[q + j])
                        lsum2 += np.int32(yq[q + j])
                    q += 8
                    sum1 += lsum1
                    sum2 += lsum2 * delta
                ls = 2 * ((sc >> (6 * (ib % 2) + 3 * h)) & 7) + 1
                sumi1 += sum1 * ls
                sumi2 += sum2 * ls
        sumf += (d * yd[yb]) * (F(sumi1) + DELTA * F(sumi2))
    return sumf


@njit(cache=True, inline="always")
def _tq1_digit(byte, p):
    """Ternary digit of a TQ1_0 byte: ((uint8)(byte * 3^n) * 3) >> 8, minus 1 (p = 3^n)."""
    return (((np.int64(byte) * p) & 0xFF) * 3 >> 8) - 1


@njit(cache=True, inline="always")
def _dot_tq1_0(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 54 * b
        yb = t * nb + b
        q = yb * QK_K
        s = 0
        p = 1
        for n in range(5):
            for m in range(32):
                s += _tq1_digit(w[o + m], p) * np.int32(yq[q + n * 32 + m])
            for m in range(16):
                s += _tq1_digit(w[o + 32 + m], p) * np.int32(yq[q + 160 + n * 16 + m])
            p *= 3
        p = 1
        for n in range(4):
            for j in range(4):
                s += _tq1_digit(w[o + 48 + j], p) * np.int32(yq[q + 240 + n * 4 + j])
            p *= 3
        sumf += F(s) * (_f16(w, o + 52) * yd[yb])
    return sumf


@njit(cache=True, inline="always")
def _dot_tq2_0(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 66 * b
        yb = t * nb + b
        q = yb * QK_K
        s = 0
        for h in range(2):
            for l in range(4):
                for k in range(32):
                    s += (((np.int32(w[o + 32 * h + k]) >> (2 * l)) & 3) - 1) * np.int32(yq[q + 128 * h + 32 * l + k])
        sumf += F(s) * (yd[yb] * _f16(w, o + 64))
    return sumf


@njit(cache=True, inline="always")
def _dot_mxfp4(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 17 * b
        yb = t * nb + b
        q = yb * QK
        s = 0
        for j in range(16):
            v = np.int64(w[o + 1 + j])
            s += np.int32(yq[q + j]) * KV_MXFP4[v & 15] + np.int32(yq[q + j + 16]) * KV_MXFP4[v >> 4]
        sumf += (yd[yb] * _e8m0_half(np.int64(w[o]))) * F(s)
    return sumf


# -- dequantization: ggml's dequantize_row_<type>, block by block --------------------------------------


@njit(cache=True)
def dequant_iq2_xxs_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 66 * i
        d = _f16(raw, o)
        for ib in range(8):
            aux1 = _u32(raw, o + 6 + 8 * ib)
            db = d * (F(0.5) + F(aux1 >> 28)) * F(0.25)
            for l in range(4):
                g = np.int64(raw[o + 2 + 8 * ib + l])
                s = (aux1 >> (7 * l)) & 127
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(8):
                    out[y + j] = db * F(G_IQ2XXS[g, j]) * F(SIGNS7[s, j])


@njit(cache=True)
def dequant_iq2_xs_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 74 * i
        d = _f16(raw, o)
        for ib in range(8):
            sc = np.int64(raw[o + 66 + ib])
            for l in range(4):
                db = d * (F(0.5) + F((sc >> (4 * (l // 2))) & 15)) * F(0.25)
                v = _u16(raw, o + 2 + 2 * (4 * ib + l))
                g, s = v & 511, v >> 9
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(8):
                    out[y + j] = db * F(G_IQ2XS[g, j]) * F(SIGNS7[s, j])


@njit(cache=True)
def dequant_iq2_s_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 82 * i
        d = _f16(raw, o)
        for ib in range(8):
            sc = np.int64(raw[o + 74 + ib])
            qh = np.int64(raw[o + 66 + ib])
            for l in range(4):
                db = d * (F(0.5) + F((sc >> (4 * (l // 2))) & 15)) * F(0.25)
                g = np.int64(raw[o + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                s = np.int64(raw[o + 34 + 4 * ib + l])
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(8):
                    out[y + j] = db * F(G_IQ2S[g, j]) * F(SIGNS8[s, j])


@njit(cache=True)
def dequant_iq3_xxs_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 98 * i
        d = _f16(raw, o)
        for ib in range(8):
            aux = _u32(raw, o + 66 + 4 * ib)
            db = d * (F(0.5) + F(aux >> 28)) * F(0.5)
            for l in range(4):
                s = (aux >> (7 * l)) & 127
                g1 = np.int64(raw[o + 2 + 8 * ib + 2 * l])
                g2 = np.int64(raw[o + 3 + 8 * ib + 2 * l])
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(4):
                    out[y + j] = db * F(G_IQ3XXS[g1, j]) * F(SIGNS7[s, j])
                    out[y + j + 4] = db * F(G_IQ3XXS[g2, j]) * F(SIGNS7[s, j + 4])


@njit(cache=True)
def dequant_iq3_s_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 110 * i
        d = _f16(raw, o)
        for ib in range(8):
            db = d * F(1 + 2 * ((np.int64(raw[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15))
            qh = np.int64(raw[o + 66 + ib])
            for l in range(4):
                g1 = np.int64(raw[o + 2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                g2 = np.int64(raw[o + 3 + 8 * ib + 2 * l]) | ((qh << (7 - 2 * l)) & 256)
                s = np.int64(raw[o + 74 + 4 * ib + l])
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(4):
                    out[y + j] = db * F(G_IQ3S[g1, j]) * F(SIGNS8[s, j])
                    out[y + j + 4] = db * F(G_IQ3S[g2, j]) * F(SIGNS8[s, j + 4])


@njit(cache=True)
def dequant_iq1_s_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 50 * i
        d = _f16(raw, o)
        for ib in range(8):
            qh = _u16(raw, o + 34 + 2 * ib)
            dl = d * F(2 * ((qh >> 12) & 7) + 1)
            delta = -DELTA if qh & 0x8000 else DELTA
            for l in range(4):
                g = np.int64(raw[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(8):
                    out[y + j] = dl * (F(G_IQ1S[g, j]) + delta)


@njit(cache=True)
def dequant_iq1_m_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 56 * i
        s0, s1, s2, s3 = _u16(raw, o + 48), _u16(raw, o + 50), _u16(raw, o + 52), _u16(raw, o + 54)
        bits = (s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)
        d = _half(bits)
        for ib in range(8):
            sc = _u16(raw, o + 48 + 2 * (ib // 2))
            for l in range(4):
                dl = d * F(2 * ((sc >> (6 * (ib % 2) + 3 * (l // 2))) & 7) + 1)
                nib = (np.int64(raw[o + 32 + 2 * ib + l // 2]) >> (4 * (l % 2))) & 15
                g = np.int64(raw[o + 4 * ib + l]) | ((nib & 7) << 8)
                delta = -DELTA if nib & 8 else DELTA
                y = QK_K * i + 32 * ib + 8 * l
                for j in range(8):
                    out[y + j] = dl * (F(G_IQ1S[g, j]) + delta)


@njit(cache=True)
def dequant_tq1_0_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 54 * i
        d = _f16(raw, o + 52)
        y = QK_K * i
        p = 1
        for n in range(5):
            for m in range(32):
                out[y + 32 * n + m] = F(_tq1_digit(raw[o + m], p)) * d
            for m in range(16):
                out[y + 160 + 16 * n + m] = F(_tq1_digit(raw[o + 32 + m], p)) * d
            p *= 3
        p = 1
        for n in range(4):
            for j in range(4):
                out[y + 240 + 4 * n + j] = F(_tq1_digit(raw[o + 48 + j], p)) * d
            p *= 3


@njit(cache=True)
def dequant_tq2_0_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 66 * i
        d = _f16(raw, o + 64)
        for h in range(2):
            for l in range(4):
                for m in range(32):
                    q = ((np.int64(raw[o + 32 * h + m]) >> (2 * l)) & 3) - 1
                    out[QK_K * i + 128 * h + 32 * l + m] = F(q) * d


@njit(cache=True)
def dequant_mxfp4_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        o = 17 * i
        d = _e8m0_half(np.int64(raw[o]))
        for j in range(16):
            v = np.int64(raw[o + 1 + j])
            out[QK * i + j] = F(KV_MXFP4[v & 15]) * d
            out[QK * i + j + 16] = F(KV_MXFP4[v >> 4]) * d


# -- the table, and the wrappers generated from it with matmul.py's templates --------------------------

T = GGMLQuantizationType
LOWBIT: dict[GGMLQuantizationType, dict] = {
    T.IQ2_XXS: dict(name="iq2_xxs", act="ACT_Q8_K", dot="_dot_iq2_xxs(", dot4=None, x8=None),
    T.IQ2_XS: dict(name="iq2_xs", act="ACT_Q8_K", dot="_dot_iq2_xs(", dot4=None, x8=None),
    T.IQ2_S: dict(name="iq2_s", act="ACT_Q8_K", dot="_dot_iq2_s(", dot4=None, x8=None),
    T.IQ3_XXS: dict(name="iq3_xxs", act="ACT_Q8_K", dot="_dot_iq3_xxs(", dot4=None, x8=None),
    T.IQ3_S: dict(name="iq3_s", act="ACT_Q8_K", dot="_dot_iq3_s(", dot4=None, x8=None),
    T.IQ1_S: dict(name="iq1_s", act="ACT_Q8_K", dot="_dot_iq1_s(", dot4=None, x8=None),
    T.IQ1_M: dict(name="iq1_m", act="ACT_Q8_K", dot="_dot_iq1_m(", dot4=None, x8=None),
    T.TQ1_0: dict(name="tq1_0", act="ACT_Q8_K", dot="_dot_tq1_0(", dot4=None, x8=None),
    T.TQ2_0: dict(name="tq2_0", act="ACT_Q8_K", dot="_dot_tq2_0(", dot4=None, x8=None),
    T.MXFP4: dict(name="mxfp4", act="ACT_Q8_0", dot="_dot_mxfp4(", dot4=None, x8=None),
}
DEQUANT = {t: globals()[f"dequant_{f['name']}_blocks"] for t, f in LOWBIT.items()}
_ACT_TYPE = {"ACT_Q8_0": T.Q8_0, "ACT_Q8_K": T.Q8_K}
del T


def _generate() -> dict:
    src = []
    for t, f in LOWBIT.items():
        block_size, _ = GGML_QUANT_SIZES[t]
        src.append(_mm._TEMPLATE.format(**f))
        run = f"_run(_rows_{f['name']}, w, x.shape[1] // {block_size}, yq, yd, ys, ybs, yf, out)"
        src.append(_mm._TEMPLATE_MATMUL.format(run=run, **f))
    exec(compile("".join(src), __file__, "exec"), globals())
    return {t: globals()[f"_matmul_{f['name']}"] for t, f in LOWBIT.items()}


MATMUL_KERNELS = _generate()


def register() -> None:
    """Add these types to the Numba backend's tables (matmul's products, dequant's lookups)."""
    for t, f in LOWBIT.items():
        _mm.FORMATS.setdefault(t, f)
        _mm.VEC_DOT_TYPE.setdefault(t, _ACT_TYPE[f["act"]])
        _mm.MATMUL_KERNELS.setdefault(t, MATMUL_KERNELS[t])
        _mm._MATMUL.setdefault(t, (MATMUL_KERNELS[t], *GGML_QUANT_SIZES[t]))
        _dq.KERNELS.setdefault(t, DEQUANT[t])


register()
