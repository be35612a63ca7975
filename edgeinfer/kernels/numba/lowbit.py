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

import os

import llvmlite.binding as llvm
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from llvmlite import ir
from numba import njit, prange, types  # noqa: F401  (prange: the generated wrappers)
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ...quant import lowbit as ql
from . import dequant as _dq
from . import matmul as _mm
from . import x8  # noqa: F401  (the wrappers)
from .dequant import _f16, _f32_from_bits, _u16, _u32
from .matmul import ACT_Q8_0, ACT_Q8_K, _chunk_rows, _quantize_activations  # noqa: F401  (the wrappers)

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


# -- vector helpers (LLVM IR through llvmlite, as simd.py's; kept here so that this file does not follow
# simd.py's changes): 32 int8 lanes built from the grids, signs applied, integer dot products --------------

_i1, _i8, _i16, _i32, _i64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V8x32, _V16x16, _V32x8 = ir.VectorType(_i8, 32), ir.VectorType(_i16, 16), ir.VectorType(_i32, 8)
USE_AVX2 = bool(llvm.get_host_cpu_features().get("avx2")) and not os.environ.get("EDGEINFER_GENERIC_SIMD")


class _Vec(types.Type):
    def __init__(self, name, ir_type):
        self.ir_type = ir_type
        super().__init__(name=f"lowbit_{name}")


class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.ir_type)


V8 = _Vec("i8x32", _V8x32)  # 32 int8
V32 = _Vec("i32x8", _V32x8)  # 8 int32
register_model(_Vec)(_VecModel)


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _splat(builder, value, count):
    vty = ir.VectorType(value.type, count)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_i32, count), [0] * count))


def _data(context, builder, aty, arr):
    return builder.bitcast(context.make_array(aty)(context, builder, arr).data, _i8.as_pointer())


def _is_array(a, dtypes):
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype in dtypes


@intrinsic
def gather8(typingctx, table, i0, i1, i2, i3):
    """32 bytes: table[i0], table[i1], table[i2], table[i3] (a uint64 table: 8 bytes each)."""
    if not _is_array(table, (types.uint64, types.int64)):
        return None

    def codegen(context, builder, sig, args):
        base = builder.bitcast(_data(context, builder, table, args[0]), _i64.as_pointer())
        v = ir.Constant(ir.VectorType(_i64, 4), ir.Undefined)
        for k in range(4):
            i = context.cast(builder, args[1 + k], sig.args[1 + k], types.int64)
            v = builder.insert_element(v, builder.load(builder.gep(base, [i]), align=8), ir.Constant(_i32, k))
        return builder.bitcast(v, _V8x32)

    return V8(table, i0, i1, i2, i3), codegen


@intrinsic
def gather4(typingctx, table, i0, i1, i2, i3, i4, i5, i6, i7):
    """32 bytes: table[i0] .. table[i7] (a uint32 table: 4 bytes each)."""
    if not _is_array(table, (types.uint32, types.int32)):
        return None

    def codegen(context, builder, sig, args):
        base = builder.bitcast(_data(context, builder, table, args[0]), _i32.as_pointer())
        v = ir.Constant(_V32x8, ir.Undefined)
        for k in range(8):
            i = context.cast(builder, args[1 + k], sig.args[1 + k], types.int64)
            v = builder.insert_element(v, builder.load(builder.gep(base, [i]), align=4), ir.Constant(_i32, k))
        return builder.bitcast(v, _V8x32)

    return V8(table, i0, i1, i2, i3, i4, i5, i6, i7), codegen


@intrinsic
def load8(typingctx, a, off):
    """32 bytes of a byte array at byte offset off."""
    if not _is_array(a, (types.uint8, types.int8)):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, a, args[0]), [context.cast(builder, args[1], sig.args[1], types.int64)])
        return builder.load(builder.bitcast(p, _V8x32.as_pointer()), align=1)

    return V8(a, off), codegen


@intrinsic
def signed(typingctx, x, m):
    """x with the lanes where m is -1 negated: (x ^ m) - m."""
    if x != V8 or m != V8:
        return None

    def codegen(context, builder, sig, args):
        return builder.sub(builder.xor(args[0], args[1]), args[1])

    return V8(x, m), codegen


@intrinsic
def crumbs(typingctx, v, shift, bias):
    """((v >> shift) & 3) - bias per byte (TQ2_0's 2-bit values)."""
    if v != V8:
        return None

    def codegen(context, builder, sig, args):
        sh = builder.trunc(context.cast(builder, args[1], sig.args[1], types.int64), _i8)
        b = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), _i8)
        q = builder.and_(builder.lshr(args[0], _splat(builder, sh, 32)), _splat(builder, ir.Constant(_i8, 3), 32))
        return builder.sub(q, _splat(builder, b, 32))

    return V8(v, shift, bias), codegen


@intrinsic
def ternary(typingctx, v, p):
    """TQ1_0's digit per byte: (((uint8)(v * p)) * 3 >> 8) - 1."""
    if v != V8:
        return None

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_i16, 32)
        pw = builder.trunc(context.cast(builder, args[1], sig.args[1], types.int64), _i8)
        q = builder.zext(builder.mul(args[0], _splat(builder, pw, 32)), vt)  # uint8 wrap-around, then widen
        d = builder.lshr(builder.mul(q, _splat(builder, ir.Constant(_i16, 3), 32)), _splat(builder, ir.Constant(_i16, 8), 32))
        return builder.sub(builder.trunc(d, _V8x32), _splat(builder, ir.Constant(_i8, 1), 32))

    return V8(v, p), codegen


@intrinsic
def mxfp4_values(typingctx, a, off):
    """16 bytes at off -> 32 int8: kvalues_mxfp4 of the low nibbles, then of the high ones."""
    if not _is_array(a, (types.uint8, types.int8)):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, a, args[0]), [context.cast(builder, args[1], sig.args[1], types.int64)])
        b16 = builder.load(builder.bitcast(p, ir.VectorType(_i8, 16).as_pointer()), align=1)
        both = builder.shuffle_vector(b16, b16, ir.Constant(ir.VectorType(_i32, 32), list(range(16)) * 2))
        shift = ir.Constant(_V8x32, [0] * 16 + [4] * 16)
        idx = builder.and_(builder.lshr(both, shift), _splat(builder, ir.Constant(_i8, 15), 32))
        table = ir.Constant(_V8x32, [ir.Constant(_i8, int(v) & 0xFF) for v in list(ql.KVALUES_MXFP4) * 2])
        if USE_AVX2:
            return _call(builder, "llvm.x86.avx2.pshuf.b", _V8x32, [table, idx])
        out = ir.Constant(_V8x32, ir.Undefined)
        for j in range(32):
            i = builder.extract_element(idx, ir.Constant(_i32, j))
            out = builder.insert_element(out, builder.extract_element(table, i), ir.Constant(_i32, j))
        return out

    return V8(a, off), codegen


@intrinsic
def sdot(typingctx, x, y, s0, s1):
    """Integer dot of 32 signed bytes x (|x| <= 64) and y (-127..127), lanes 0..15 times s0 and 16..31
    times s1 (|s| < 2^15), as 8 int32 partial sums (pmaddubsw then pmaddwd on AVX2, exact here)."""
    if x != V8 or y != V8:
        return None

    def codegen(context, builder, sig, args):
        a, b = args[0], args[1]
        s0v = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), _i16)
        s1v = builder.trunc(context.cast(builder, args[3], sig.args[3], types.int64), _i16)
        sc = builder.shuffle_vector(_splat(builder, s0v, 16), _splat(builder, s1v, 16),
                                    ir.Constant(ir.VectorType(_i32, 16), [0] * 8 + [16] * 8))  # fmt: skip
        if USE_AVX2:
            ax = _call(builder, "llvm.abs.v32i8", _V8x32, [a, ir.Constant(_i1, 0)])
            sy = _call(builder, "llvm.x86.avx2.psign.b", _V8x32, [b, a])
            p = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16x16, [ax, sy])
            return _call(builder, "llvm.x86.avx2.pmadd.wd", _V32x8, [p, sc])
        vt = ir.VectorType(_i32, 32)
        prod = builder.mul(builder.sext(a, vt), builder.sext(b, vt))
        idx = lambda r: ir.Constant(ir.VectorType(_i32, 16), list(range(r, 32, 2)))  # noqa: E731
        pairs = builder.add(builder.shuffle_vector(prod, prod, idx(0)), builder.shuffle_vector(prod, prod, idx(1)))
        pairs = builder.mul(pairs, builder.sext(sc, ir.VectorType(_i32, 16)))
        i8 = lambda r: ir.Constant(ir.VectorType(_i32, 8), list(range(r, 16, 2)))  # noqa: E731
        return builder.add(builder.shuffle_vector(pairs, pairs, i8(0)), builder.shuffle_vector(pairs, pairs, i8(1)))

    return V32(x, y, s0, s1), codegen


@intrinsic
def zero32(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V32x8, [ir.Constant(_i32, 0)] * 8)

    return V32(), codegen


@intrinsic
def add32(typingctx, a, b):
    if a != V32 or b != V32:
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return V32(a, b), codegen


@intrinsic
def hsum32(typingctx, a):
    """The sum of the 8 int32 lanes, as int64."""
    if a != V32:
        return None

    def codegen(context, builder, sig, args):
        s = args[0]
        for half in (4, 2, 1):
            s = builder.add(s, builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(_i32, 8), [(k + half) % 8 for k in range(8)])))
        return builder.sext(builder.extract_element(s, ir.Constant(_i32, 0)), _i64)

    return types.int64(a), codegen


# the grids as 64-bit / 32-bit words (a group of 8 / 4 bytes each), sign masks as words of 0x00 / 0xff bytes
W_IQ2XXS, W_IQ2XS, W_IQ2S, W_IQ1S = ql.IQ2XXS_GRID, ql.IQ2XS_GRID, ql.IQ2S_GRID, ql.IQ1S_GRID
W_IQ3XXS, W_IQ3S = ql.IQ3XXS_GRID, ql.IQ3S_GRID
MASKS8 = (SIGNS8 < 0).astype(np.uint8).__mul__(255).astype(np.uint8).view(np.uint64).reshape(-1).copy()  # byte s
MASKS7 = MASKS8[ql.KSIGNS_IQ2XS.astype(np.int64)].copy()  # ksigns_iq2xs[s]
ONES8 = np.array([0x0101010101010101, 0xFFFFFFFFFFFFFFFF], np.uint64)  # 8 x (+1), 8 x (-1)


# -- the same dot products with 32 lanes at a time: the integer sums are the same numbers, so the results
# are the same bits as the scalar loops above (tests/test_matmul_lowbit.py) ------------------------------


@njit(cache=True, inline="always")
def _vdot_iq2_xxs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 66 * b
        yb = t * nb + b
        acc = zero32()
        for ib in range(8):
            oo = o + 2 + 8 * ib
            aux1 = _u32(w, oo + 4)
            x = signed(gather8(W_IQ2XXS, w[oo], w[oo + 1], w[oo + 2], w[oo + 3]),
                       gather8(MASKS7, aux1 & 127, (aux1 >> 7) & 127, (aux1 >> 14) & 127, (aux1 >> 21) & 127))  # fmt: skip
            ls = 2 * (aux1 >> 28) + 1
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), ls, ls))
        sumf += (_f16(w, o) * yd[yb]) * F(hsum32(acc))
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _vdot_iq2_xs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 74 * b
        yb = t * nb + b
        acc = zero32()
        for ib in range(8):
            q = o + 2 + 8 * ib
            v0, v1, v2, v3 = _u16(w, q), _u16(w, q + 2), _u16(w, q + 4), _u16(w, q + 6)
            x = signed(gather8(W_IQ2XS, v0 & 511, v1 & 511, v2 & 511, v3 & 511),
                       gather8(MASKS7, v0 >> 9, v1 >> 9, v2 >> 9, v3 >> 9))  # fmt: skip
            sc = np.int64(w[o + 66 + ib])
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1))
        sumf += (_f16(w, o) * yd[yb]) * F(hsum32(acc))
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _vdot_iq2_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 82 * b
        yb = t * nb + b
        acc = zero32()
        for ib in range(8):
            q = o + 2 + 4 * ib
            qh = np.int64(w[o + 66 + ib])
            x = signed(gather8(W_IQ2S, np.int64(w[q]) | ((qh << 8) & 0x300), np.int64(w[q + 1]) | ((qh << 6) & 0x300),
                               np.int64(w[q + 2]) | ((qh << 4) & 0x300), np.int64(w[q + 3]) | ((qh << 2) & 0x300)),
                       gather8(MASKS8, w[q + 32], w[q + 33], w[q + 34], w[q + 35]))  # fmt: skip
            sc = np.int64(w[o + 74 + ib])
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1))
        sumf += (_f16(w, o) * yd[yb]) * F(hsum32(acc))
    return F(0.125) * sumf


@njit(cache=True, inline="always")
def _vdot_iq3_xxs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 98 * b
        yb = t * nb + b
        acc = zero32()
        for ib in range(8):
            q = o + 2 + 8 * ib
            aux = _u32(w, o + 66 + 4 * ib)
            x = signed(gather4(W_IQ3XXS, w[q], w[q + 1], w[q + 2], w[q + 3], w[q + 4], w[q + 5], w[q + 6], w[q + 7]),
                       gather8(MASKS7, aux & 127, (aux >> 7) & 127, (aux >> 14) & 127, (aux >> 21) & 127))  # fmt: skip
            ls = 2 * (aux >> 28) + 1
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), ls, ls))
        sumf += (_f16(w, o) * yd[yb]) * F(hsum32(acc))
    return F(0.25) * sumf


@njit(cache=True, inline="always")
def _vdot_iq3_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 110 * b
        yb = t * nb + b
        acc = zero32()
        for ib in range(8):
            q = o + 2 + 8 * ib
            qh = np.int64(w[o + 66 + ib])
            x = signed(gather4(W_IQ3S, np.int64(w[q]) | ((qh << 8) & 256), np.int64(w[q + 1]) | ((qh << 7) & 256),
                               np.int64(w[q + 2]) | ((qh << 6) & 256), np.int64(w[q + 3]) | ((qh << 5) & 256),
                               np.int64(w[q + 4]) | ((qh << 4) & 256), np.int64(w[q + 5]) | ((qh << 3) & 256),
                               np.int64(w[q + 6]) | ((qh << 2) & 256), np.int64(w[q + 7]) | ((qh << 1) & 256)),
                       gather8(MASKS8, w[o + 74 + 4 * ib], w[o + 75 + 4 * ib], w[o + 76 + 4 * ib], w[o + 77 + 4 * ib]))  # fmt: skip
            ls = 2 * ((np.int64(w[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), ls, ls))
        sumf += (_f16(w, o) * yd[yb]) * F(hsum32(acc))
    return sumf


@njit(cache=True, inline="always")
def _vdot_iq1_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 50 * b
        yb = t * nb + b
        acc = zero32()
        sumi1 = 0
        for ib in range(8):
            q = o + 2 + 4 * ib
            qh = _u16(w, o + 34 + 2 * ib)
            x = gather8(W_IQ1S, np.int64(w[q]) | ((qh << 8) & 0x700), np.int64(w[q + 1]) | ((qh << 5) & 0x700),
                        np.int64(w[q + 2]) | ((qh << 2) & 0x700), np.int64(w[q + 3]) | ((qh >> 1) & 0x700))  # fmt: skip
            ls = 2 * ((qh >> 12) & 7) + 1
            acc = add32(acc, sdot(x, load8(yq, yb * QK_K + 32 * ib), ls, ls))
            delta = -1 if qh & 0x8000 else 1
            sumi1 += ls * delta * (np.int64(ybs[yb * 16 + 2 * ib]) + np.int64(ybs[yb * 16 + 2 * ib + 1]))
        sumf += (_f16(w, o) * yd[yb]) * (F(hsum32(acc)) + DELTA * F(sumi1))
    return sumf


@njit(cache=True, inline="always")
def _vdot_iq1_m(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 56 * b
        yb = t * nb + b
        s0, s1, s2, s3 = _u16(w, o + 48), _u16(w, o + 50), _u16(w, o + 52), _u16(w, o + 54)
        d = _half((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000))
        acc1 = zero32()
        acc2 = zero32()
        for ib in range(8):
            q = o + 4 * ib
            h0, h1 = np.int64(w[o + 32 + 2 * ib]), np.int64(w[o + 33 + 2 * ib])
            x = gather8(W_IQ1S, np.int64(w[q]) | ((h0 << 8) & 0x700), np.int64(w[q + 1]) | ((h0 << 4) & 0x700),
                        np.int64(w[q + 2]) | ((h1 << 8) & 0x700), np.int64(w[q + 3]) | ((h1 << 4) & 0x700))  # fmt: skip
            dv = gather8(ONES8, (h0 >> 3) & 1, (h0 >> 7) & 1, (h1 >> 3) & 1, (h1 >> 7) & 1)
            sc = _u16(w, o + 48 + 2 * (ib // 2)) >> (6 * (ib % 2))
            ls1, ls2 = 2 * (sc & 7) + 1, 2 * ((sc >> 3) & 7) + 1
            y = load8(yq, yb * QK_K + 32 * ib)
            acc1 = add32(acc1, sdot(x, y, ls1, ls2))
            acc2 = add32(acc2, sdot(dv, y, ls1, ls2))
        sumf += (d * yd[yb]) * (F(hsum32(acc1)) + DELTA * F(hsum32(acc2)))
    return sumf


@njit(cache=True, inline="always")
def _vdot_tq1_0(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 54 * b
        yb = t * nb + b
        q = yb * QK_K
        acc = zero32()
        v = load8(w, o)
        p = 1
        for n in range(5):
            acc = add32(acc, sdot(ternary(v, p), load8(yq, q + 32 * n), 1, 1))
            p *= 3
        s = hsum32(acc)
        p = 1
        for n in range(5):
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
def _vdot_tq2_0(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 66 * b
        yb = t * nb + b
        acc = zero32()
        for h in range(2):
            v = load8(w, o + 32 * h)
            for l in range(4):
                acc = add32(acc, sdot(crumbs(v, 2 * l, 1), load8(yq, yb * QK_K + 128 * h + 32 * l), 1, 1))
        sumf += F(hsum32(acc)) * (yd[yb] * _f16(w, o + 64))
    return sumf


@njit(cache=True, inline="always")
def _vdot_mxfp4(w, wo, nb, yq, yd, ys, ybs, yf, t):
    sumf = F(0)
    for b in range(nb):
        o = wo + 17 * b
        yb = t * nb + b
        s = hsum32(sdot(mxfp4_values(w, o + 1), load8(yq, yb * QK), 1, 1))
        sumf += (yd[yb] * _e8m0_half(np.int64(w[o]))) * F(s)
    return sumf


# -- 4-token tiles (a prefill): each IQ2 / IQ3 sub-block decoded once for tokens t..t+3, every token's
# sums in the order of its one-token dot above (the same bits: a token's result does not depend on its
# batch). decode(w, o, ib) -> (32 signed grid values of sub-block ib of the block at o, scale of lanes
# 0..15, scale of lanes 16..31).


@njit(cache=True, inline="always")
def _x_iq2_xxs(w, o, ib):
    oo = o + 2 + 8 * ib
    aux1 = _u32(w, oo + 4)
    x = signed(gather8(W_IQ2XXS, w[oo], w[oo + 1], w[oo + 2], w[oo + 3]),
               gather8(MASKS7, aux1 & 127, (aux1 >> 7) & 127, (aux1 >> 14) & 127, (aux1 >> 21) & 127))  # fmt: skip
    ls = 2 * (aux1 >> 28) + 1
    return x, ls, ls


@njit(cache=True, inline="always")
def _x_iq2_xs(w, o, ib):
    q = o + 2 + 8 * ib
    v0, v1, v2, v3 = _u16(w, q), _u16(w, q + 2), _u16(w, q + 4), _u16(w, q + 6)
    x = signed(gather8(W_IQ2XS, v0 & 511, v1 & 511, v2 & 511, v3 & 511),
               gather8(MASKS7, v0 >> 9, v1 >> 9, v2 >> 9, v3 >> 9))  # fmt: skip
    sc = np.int64(w[o + 66 + ib])
    return x, 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1


@njit(cache=True, inline="always")
def _x_iq2_s(w, o, ib):
    q = o + 2 + 4 * ib
    qh = np.int64(w[o + 66 + ib])
    x = signed(gather8(W_IQ2S, np.int64(w[q]) | ((qh << 8) & 0x300), np.int64(w[q + 1]) | ((qh << 6) & 0x300),
                       np.int64(w[q + 2]) | ((qh << 4) & 0x300), np.int64(w[q + 3]) | ((qh << 2) & 0x300)),
               gather8(MASKS8, w[q + 32], w[q + 33], w[q + 34], w[q + 35]))  # fmt: skip
    sc = np.int64(w[o + 74 + ib])
    return x, 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1


@njit(cache=True, inline="always")
def _x_iq3_xxs(w, o, ib):
    q = o + 2 + 8 * ib
    aux = _u32(w, o + 66 + 4 * ib)
    x = signed(gather4(W_IQ3XXS, w[q], w[q + 1], w[q + 2], w[q + 3], w[q + 4], w[q + 5], w[q + 6], w[q + 7]),
               gather8(MASKS7, aux & 127, (aux >> 7) & 127, (aux >> 14) & 127, (aux >> 21) & 127))  # fmt: skip
    ls = 2 * (aux >> 28) + 1
    return x, ls, ls


@njit(cache=True, inline="always")
def _x_iq3_s(w, o, ib):
    q = o + 2 + 8 * ib
    qh = np.int64(w[o + 66 + ib])
    x = signed(gather4(W_IQ3S, np.int64(w[q]) | ((qh << 8) & 256), np.int64(w[q + 1]) | ((qh << 7) & 256),
                       np.int64(w[q + 2]) | ((qh << 6) & 256), np.int64(w[q + 3]) | ((qh << 5) & 256),
                       np.int64(w[q + 4]) | ((qh << 4) & 256), np.int64(w[q + 5]) | ((qh << 3) & 256),
                       np.int64(w[q + 6]) | ((qh << 2) & 256), np.int64(w[q + 7]) | ((qh << 1) & 256)),
               gather8(MASKS8, w[o + 74 + 4 * ib], w[o + 75 + 4 * ib], w[o + 76 + 4 * ib], w[o + 77 + 4 * ib]))  # fmt: skip
    ls = 2 * ((np.int64(w[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1
    return x, ls, ls


@njit(cache=True, inline="always")
def _vdot4_grid(decode, type_size, final, w, wo, nb, yq, yd, ys, ybs, yf, t):
    """Tokens t..t+3 of an IQ2 / IQ3 row: d_x d_y * (the block's integer sum), summed, times `final`."""
    s0 = s1 = s2 = s3 = F(0)
    step = nb * QK_K
    for b in range(nb):
        o = wo + type_size * b
        a0 = a1 = a2 = a3 = zero32()
        for ib in range(8):
            x, l0, l1 = decode(w, o, ib)
            yo = (t * nb + b) * QK_K + 32 * ib
            a0 = add32(a0, sdot(x, load8(yq, yo), l0, l1))
            a1 = add32(a1, sdot(x, load8(yq, yo + step), l0, l1))
            a2 = add32(a2, sdot(x, load8(yq, yo + 2 * step), l0, l1))
            a3 = add32(a3, sdot(x, load8(yq, yo + 3 * step), l0, l1))
        d = _f16(w, o)
        yb = t * nb + b
        s0 += (d * yd[yb]) * F(hsum32(a0))
        s1 += (d * yd[yb + nb]) * F(hsum32(a1))
        s2 += (d * yd[yb + 2 * nb]) * F(hsum32(a2))
        s3 += (d * yd[yb + 3 * nb]) * F(hsum32(a3))
    return final * s0, final * s1, final * s2, final * s3


@njit(cache=True, inline="always")
def _vdot4_mxfp4(w, wo, nb, yq, yd, ys, ybs, yf, t):
    s0 = s1 = s2 = s3 = F(0)
    step = nb * QK
    for b in range(nb):
        o = wo + 17 * b
        x = mxfp4_values(w, o + 1)
        d = _e8m0_half(np.int64(w[o]))
        yb = t * nb + b
        yo = yb * QK
        s0 += (yd[yb] * d) * F(hsum32(sdot(x, load8(yq, yo), 1, 1)))
        s1 += (yd[yb + nb] * d) * F(hsum32(sdot(x, load8(yq, yo + step), 1, 1)))
        s2 += (yd[yb + 2 * nb] * d) * F(hsum32(sdot(x, load8(yq, yo + 2 * step), 1, 1)))
        s3 += (yd[yb + 3 * nb] * d) * F(hsum32(sdot(x, load8(yq, yo + 3 * step), 1, 1)))
    return s0, s1, s2, s3


@njit(cache=True, inline="always")
def _vdot4_tq2_0(w, wo, nb, yq, yd, ys, ybs, yf, t):
    s0 = s1 = s2 = s3 = F(0)
    step = nb * QK_K
    for b in range(nb):
        o = wo + 66 * b
        yb = t * nb + b
        a0 = a1 = a2 = a3 = zero32()
        for h in range(2):
            v = load8(w, o + 32 * h)
            for l in range(4):
                x = crumbs(v, 2 * l, 1)
                yo = yb * QK_K + 128 * h + 32 * l
                a0 = add32(a0, sdot(x, load8(yq, yo), 1, 1))
                a1 = add32(a1, sdot(x, load8(yq, yo + step), 1, 1))
                a2 = add32(a2, sdot(x, load8(yq, yo + 2 * step), 1, 1))
                a3 = add32(a3, sdot(x, load8(yq, yo + 3 * step), 1, 1))
        d = _f16(w, o + 64)
        s0 += F(hsum32(a0)) * (yd[yb] * d)
        s1 += F(hsum32(a1)) * (yd[yb + nb] * d)
        s2 += F(hsum32(a2)) * (yd[yb + 2 * nb] * d)
        s3 += F(hsum32(a3)) * (yd[yb + 3 * nb] * d)
    return s0, s1, s2, s3


@njit(cache=True, inline="always")
def _bsum2(ybs, yb, ib):
    return np.int64(ybs[yb * 16 + 2 * ib]) + np.int64(ybs[yb * 16 + 2 * ib + 1])


@njit(cache=True, inline="always")
def _vdot4_iq1_s(w, wo, nb, yq, yd, ys, ybs, yf, t):
    s0 = s1 = s2 = s3 = F(0)
    step = nb * QK_K
    for b in range(nb):
        o = wo + 50 * b
        yb = t * nb + b
        a0 = a1 = a2 = a3 = zero32()
        m0 = m1 = m2 = m3 = 0
        for ib in range(8):
            q = o + 2 + 4 * ib
            qh = _u16(w, o + 34 + 2 * ib)
            x = gather8(W_IQ1S, np.int64(w[q]) | ((qh << 8) & 0x700), np.int64(w[q + 1]) | ((qh << 5) & 0x700),
                        np.int64(w[q + 2]) | ((qh << 2) & 0x700), np.int64(w[q + 3]) | ((qh >> 1) & 0x700))  # fmt: skip
            ls = 2 * ((qh >> 12) & 7) + 1
            lsd = -ls if qh & 0x8000 else ls
            yo = yb * QK_K + 32 * ib
            a0 = add32(a0, sdot(x, load8(yq, yo), ls, ls))
            a1 = add32(a1, sdot(x, load8(yq, yo + step), ls, ls))
            a2 = add32(a2, sdot(x, load8(yq, yo + 2 * step), ls, ls))
            a3 = add32(a3, sdot(x, load8(yq, yo + 3 * step), ls, ls))
            m0 += lsd * _bsum2(ybs, yb, ib)
            m1 += lsd * _bsum2(ybs, yb + nb, ib)
            m2 += lsd * _bsum2(ybs, yb + 2 * nb, ib)
            m3 += lsd * _bsum2(ybs, yb + 3 * nb, ib)
        d = _f16(w, o)
        s0 += (d * yd[yb]) * (F(hsum32(a0)) + DELTA * F(m0))
        s1 += (d * yd[yb + nb]) * (F(hsum32(a1)) + DELTA * F(m1))
        s2 += (d * yd[yb + 2 * nb]) * (F(hsum32(a2)) + DELTA * F(m2))
        s3 += (d * yd[yb + 3 * nb]) * (F(hsum32(a3)) + DELTA * F(m3))
    return s0, s1, s2, s3


@njit(cache=True, inline="always")
def _vdot4_iq1_m(w, wo, nb, yq, yd, ys, ybs, yf, t):
    s0 = s1 = s2 = s3 = F(0)
    step = nb * QK_K
    for b in range(nb):
        o = wo + 56 * b
        yb = t * nb + b
        c0, c1, c2, c3 = _u16(w, o + 48), _u16(w, o + 50), _u16(w, o + 52), _u16(w, o + 54)
        d = _half((c0 >> 12) | ((c1 >> 8) & 0x00F0) | ((c2 >> 4) & 0x0F00) | (c3 & 0xF000))
        a0 = a1 = a2 = a3 = zero32()
        e0 = e1 = e2 = e3 = zero32()
        for ib in range(8):
            q = o + 4 * ib
            h0, h1 = np.int64(w[o + 32 + 2 * ib]), np.int64(w[o + 33 + 2 * ib])
            x = gather8(W_IQ1S, np.int64(w[q]) | ((h0 << 8) & 0x700), np.int64(w[q + 1]) | ((h0 << 4) & 0x700),
                        np.int64(w[q + 2]) | ((h1 << 8) & 0x700), np.int64(w[q + 3]) | ((h1 << 4) & 0x700))  # fmt: skip
            dv = gather8(ONES8, (h0 >> 3) & 1, (h0 >> 7) & 1, (h1 >> 3) & 1, (h1 >> 7) & 1)
            sc = _u16(w, o + 48 + 2 * (ib // 2)) >> (6 * (ib % 2))
            ls1, ls2 = 2 * (sc & 7) + 1, 2 * ((sc >> 3) & 7) + 1
            yo = yb * QK_K + 32 * ib
            y = load8(yq, yo)
            a0 = add32(a0, sdot(x, y, ls1, ls2))
            e0 = add32(e0, sdot(dv, y, ls1, ls2))
            y = load8(yq, yo + step)
            a1 = add32(a1, sdot(x, y, ls1, ls2))
            e1 = add32(e1, sdot(dv, y, ls1, ls2))
            y = load8(yq, yo + 2 * step)
            a2 = add32(a2, sdot(x, y, ls1, ls2))
            e2 = add32(e2, sdot(dv, y, ls1, ls2))
            y = load8(yq, yo + 3 * step)
            a3 = add32(a3, sdot(x, y, ls1, ls2))
            e3 = add32(e3, sdot(dv, y, ls1, ls2))
        s0 += (d * yd[yb]) * (F(hsum32(a0)) + DELTA * F(hsum32(e0)))
        s1 += (d * yd[yb + nb]) * (F(hsum32(a1)) + DELTA * F(hsum32(e1)))
        s2 += (d * yd[yb + 2 * nb]) * (F(hsum32(a2)) + DELTA * F(hsum32(e2)))
        s3 += (d * yd[yb + 3 * nb]) * (F(hsum32(a3)) + DELTA * F(hsum32(e3)))
    return s0, s1, s2, s3


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
    T.IQ2_XXS: dict(name="iq2_xxs", act="ACT_Q8_K", dot="_vdot_iq2_xxs(", dot4="_vdot4_grid(_x_iq2_xxs, 66, F(0.125), ", x8=None),
    T.IQ2_XS: dict(name="iq2_xs", act="ACT_Q8_K", dot="_vdot_iq2_xs(", dot4="_vdot4_grid(_x_iq2_xs, 74, F(0.125), ", x8=None),
    T.IQ2_S: dict(name="iq2_s", act="ACT_Q8_K", dot="_vdot_iq2_s(", dot4="_vdot4_grid(_x_iq2_s, 82, F(0.125), ", x8=None),
    T.IQ3_XXS: dict(name="iq3_xxs", act="ACT_Q8_K", dot="_vdot_iq3_xxs(", dot4="_vdot4_grid(_x_iq3_xxs, 98, F(0.25), ", x8=None),
    T.IQ3_S: dict(name="iq3_s", act="ACT_Q8_K", dot="_vdot_iq3_s(", dot4="_vdot4_grid(_x_iq3_s, 110, F(1), ", x8=None),
    T.IQ1_S: dict(name="iq1_s", act="ACT_Q8_K", dot="_vdot_iq1_s(", dot4="_vdot4_iq1_s(", x8=None),
    T.IQ1_M: dict(name="iq1_m", act="ACT_Q8_K", dot="_vdot_iq1_m(", dot4="_vdot4_iq1_m(", x8=None),
    T.TQ1_0: dict(name="tq1_0", act="ACT_Q8_K", dot="_vdot_tq1_0(", dot4=None, x8=None),
    T.TQ2_0: dict(name="tq2_0", act="ACT_Q8_K", dot="_vdot_tq2_0(", dot4="_vdot4_tq2_0(", x8=None),
    T.MXFP4: dict(name="mxfp4", act="ACT_Q8_0", dot="_vdot_mxfp4(", dot4="_vdot4_mxfp4(", x8=None),
}
DEQUANT = {t: globals()[f"dequant_{f['name']}_blocks"] for t, f in LOWBIT.items()}
_ACT_TYPE = {"ACT_Q8_0": T.Q8_0, "ACT_Q8_K": T.Q8_K}
del T


def _generate() -> dict:
    src = [_mm.wrapper_source(f, *GGML_QUANT_SIZES[t]) for t, f in LOWBIT.items()]
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
