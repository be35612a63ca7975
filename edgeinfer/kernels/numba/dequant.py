"""Numba dequantizers: one compiled loop per block format, each the loop of ggml's `dequantize_row_<type>`.

Every kernel has the same signature:

    dequant_<type>_blocks(raw, out, block_start, n_blocks)
        raw: uint8 (n_total_blocks * type_size,)   block i is raw[i * type_size : (i + 1) * type_size]
        out: float32 (n_total_blocks * block_size,) block i decodes to out[i * block_size : ...]
    decoding blocks block_start .. block_start + n_blocks - 1 (no bounds checks: callers validate).

Arithmetic is float32 in the same order as ggml's C (and as the numpy references in edgeinfer.quant,
their tests' oracle), so results agree bit for bit. `dequantize` and `dequantize_rows` are the checked
entry points.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ...quant import check_raw, get_format
from ...quant.iquants import KVALUES_IQ4NL

QK = 32  # values per block of the legacy formats and IQ4_NL
QK_K = 256  # values per K-quant super-block

_KVALUES_IQ4NL = KVALUES_IQ4NL.astype(np.int32)  # frozen into the compiled code as a constant


# -- scalar helpers ------------------------------------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, u):
    """The low 32 bits of an integer reinterpreted as a float32 (memcpy from uint32_t to float)."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@njit(cache=True)
def _u16(x, o):
    """Little-endian uint16 at byte o."""
    return np.int64(x[o]) | (np.int64(x[o + 1]) << 8)


@njit(cache=True)
def _u32(x, o):
    """Little-endian uint32 at byte o."""
    return _u16(x, o) | (_u16(x, o + 2) << 16)


@njit(cache=True)
def _i8(v):
    """A byte (0..255) read as int8_t."""
    return np.int64(v) - ((np.int64(v) & 0x80) << 1)


@njit(cache=True)
def _f16(x, o):
    """GGML_FP16_TO_FP32 of the little-endian fp16 at byte o."""
    h = _u16(x, o)
    sign = (h & 0x8000) << 16
    exp = h & 0x7C00
    if exp == 0x7C00:  # inf or NaN: all-ones exponent, same mantissa
        return _f32_from_bits(sign | 0x7F800000 | ((h & 0x03FF) << 13))
    if exp != 0:  # normal: exponent bias 15 -> 127
        return _f32_from_bits(sign | (((h & 0x7FFF) + 0x1C000) << 13))
    v = np.float32(h & 0x03FF) * np.float32(2.0**-24)  # zero or subnormal: exact
    return -v if sign else v


@njit(cache=True)
def _scale_min_k4(j, q):
    """get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 packed bytes q."""
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


# -- floats --------------------------------------------------------------------------------------------


@njit(cache=True)
def dequant_f32_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        out[i] = _f32_from_bits(_u32(raw, 4 * i))


@njit(cache=True)
def dequant_f16_blocks(raw, out, block_start, n_blocks):
    for i in range(block_start, block_start + n_blocks):
        out[i] = _f16(raw, 2 * i)


@njit(cache=True)
def dequant_bf16_blocks(raw, out, block_start, n_blocks):
    # ggml_compute_bf16_to_fp32
    for i in range(block_start, block_start + n_blocks):
        out[i] = _f32_from_bits(_u16(raw, 2 * i) << 16)


# -- legacy: blocks of 32 ------------------------------------------------------------------------------


@njit(cache=True)
def dequant_q4_0_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q4_0. block: d fp16 | qs[16]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 18 : (i + 1) * 18]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        for j in range(16):
            y[j] = np.float32((x[2 + j] & 0x0F) - 8) * d
            y[j + 16] = np.float32((x[2 + j] >> 4) - 8) * d


@njit(cache=True)
def dequant_q4_1_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q4_1. block: d fp16 | m fp16 | qs[16]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 20 : (i + 1) * 20]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        m = _f16(x, 2)
        for j in range(16):
            y[j] = np.float32(x[4 + j] & 0x0F) * d + m
            y[j + 16] = np.float32(x[4 + j] >> 4) * d + m


@njit(cache=True)
def dequant_q5_0_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q5_0. block: d fp16 | qh uint32 (bit 4 of value j at bit j) | qs[16]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 22 : (i + 1) * 22]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        qh = _u32(x, 2)
        for j in range(16):
            xh_0 = ((qh >> j) << 4) & 0x10
            xh_1 = (qh >> (j + 12)) & 0x10
            y[j] = np.float32(((x[6 + j] & 0x0F) | xh_0) - 16) * d
            y[j + 16] = np.float32(((x[6 + j] >> 4) | xh_1) - 16) * d


@njit(cache=True)
def dequant_q5_1_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q5_1. block: d fp16 | m fp16 | qh uint32 | qs[16]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 24 : (i + 1) * 24]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        m = _f16(x, 2)
        qh = _u32(x, 4)
        for j in range(16):
            xh_0 = ((qh >> j) << 4) & 0x10
            xh_1 = (qh >> (j + 12)) & 0x10
            y[j] = np.float32((x[8 + j] & 0x0F) | xh_0) * d + m
            y[j + 16] = np.float32((x[8 + j] >> 4) | xh_1) * d + m


@njit(cache=True)
def dequant_q8_0_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q8_0. block: d fp16 | qs int8[32]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 34 : (i + 1) * 34]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        for j in range(QK):
            y[j] = np.float32(_i8(x[2 + j])) * d


@njit(cache=True)
def dequant_iq4_nl_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_iq4_nl. block: d fp16 | qs[16], 4-bit indices into kvalues_iq4nl
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 18 : (i + 1) * 18]
        y = out[i * QK : (i + 1) * QK]
        d = _f16(x, 0)
        for j in range(16):
            y[j] = d * np.float32(_KVALUES_IQ4NL[x[2 + j] & 0x0F])
            y[j + 16] = d * np.float32(_KVALUES_IQ4NL[x[2 + j] >> 4])


# -- K-quants: super-blocks of 256 ---------------------------------------------------------------------


@njit(cache=True)
def dequant_q2_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q2_K. block: scales[16] | qs[64] | d fp16 | dmin fp16
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 84 : (i + 1) * 84]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f16(x, 80)
        dmin = _f16(x, 82)
        for n in range(2):  # halves of 128 values, 32 bytes of qs each
            q = x[16 + 32 * n : 48 + 32 * n]
            for j in range(4):  # 2-bit field at shift 2 j
                for h in range(2):  # sub-blocks of 16
                    sc = x[8 * n + 2 * j + h]
                    dl = d * np.float32(sc & 0x0F)
                    ml = dmin * np.float32(sc >> 4)
                    yy = y[128 * n + 32 * j + 16 * h :]
                    for l in range(16):
                        yy[l] = dl * np.float32((q[16 * h + l] >> (2 * j)) & 3) - ml


@njit(cache=True)
def dequant_q3_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q3_K. block: hmask[32] | qs[64] | scales[12] (16 6-bit) | d fp16
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 110 : (i + 1) * 110]
        y = out[i * QK_K : (i + 1) * QK_K]
        hm = x[0:32]
        sc = x[96:108]
        d_all = _f16(x, 108)
        for n in range(2):
            q = x[32 + 32 * n : 64 + 32 * n]
            for j in range(4):
                g = 4 * n + j  # group of 32: its high bits are bit g of hmask
                for h in range(2):
                    k = 8 * n + 2 * j + h  # sub-block of 16
                    s_low = (sc[k % 8] >> (4 * (k // 8))) & 0x0F
                    s_high = (sc[8 + k % 4] >> (2 * (k // 4))) & 3
                    s = s_low | (s_high << 4)
                    dl = d_all * np.float32(s - 32)
                    yy = y[128 * n + 32 * j + 16 * h :]
                    for l in range(16):
                        ll = 16 * h + l
                        v = ((q[ll] >> (2 * j)) & 3) - 4 + 4 * ((hm[ll] >> g) & 1)
                        yy[l] = dl * np.float32(v)


@njit(cache=True)
def dequant_q4_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q4_K. block: d fp16 | dmin fp16 | scales[12] | qs[128]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 144 : (i + 1) * 144]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f16(x, 0)
        dmin = _f16(x, 2)
        scales = x[4:16]
        for c in range(4):  # 64 values from 32 bytes: low nibbles, then high nibbles
            sc, m = _scale_min_k4(2 * c, scales)
            d1 = d * np.float32(sc)
            m1 = dmin * np.float32(m)
            sc, m = _scale_min_k4(2 * c + 1, scales)
            d2 = d * np.float32(sc)
            m2 = dmin * np.float32(m)
            q = x[16 + 32 * c : 48 + 32 * c]
            yy = y[64 * c : 64 * c + 64]
            for l in range(32):
                yy[l] = d1 * np.float32(q[l] & 0x0F) - m1
                yy[l + 32] = d2 * np.float32(q[l] >> 4) - m2


@njit(cache=True)
def dequant_q5_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q5_K. block: d fp16 | dmin fp16 | scales[12] | qh[32] | qs[128]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 176 : (i + 1) * 176]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f16(x, 0)
        dmin = _f16(x, 2)
        scales = x[4:16]
        qh = x[16:48]
        for c in range(4):
            sc, m = _scale_min_k4(2 * c, scales)
            d1 = d * np.float32(sc)
            m1 = dmin * np.float32(m)
            sc, m = _scale_min_k4(2 * c + 1, scales)
            d2 = d * np.float32(sc)
            m2 = dmin * np.float32(m)
            ql = x[48 + 32 * c : 80 + 32 * c]
            yy = y[64 * c : 64 * c + 64]
            for l in range(32):  # the fifth bit of sub-block s is bit s of qh[l]
                yy[l] = d1 * np.float32((ql[l] & 0x0F) + 16 * ((qh[l] >> (2 * c)) & 1)) - m1
                yy[l + 32] = d2 * np.float32((ql[l] >> 4) + 16 * ((qh[l] >> (2 * c + 1)) & 1)) - m2


@njit(cache=True)
def dequant_q6_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q6_K. block: ql[128] | qh[64] | scales int8[16] | d fp16
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 210 : (i + 1) * 210]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f16(x, 208)
        for n in range(2):
            ql = x[64 * n : 64 * n + 64]
            qh = x[128 + 32 * n : 160 + 32 * n]
            sc = x[192 + 8 * n : 200 + 8 * n]
            yy = y[128 * n : 128 * n + 128]
            for h in range(2):  # values l = 16 h .. 16 h + 15 of each run of 32 share a scale
                s1 = d * np.float32(_i8(sc[h]))  # d * sc[is] * q == (d * sc[is]) * q, as in C
                s2 = d * np.float32(_i8(sc[h + 2]))
                s3 = d * np.float32(_i8(sc[h + 4]))
                s4 = d * np.float32(_i8(sc[h + 6]))
                for l in range(16 * h, 16 * h + 16):
                    q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                    q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    yy[l] = s1 * np.float32(q1)
                    yy[l + 32] = s2 * np.float32(q2)
                    yy[l + 64] = s3 * np.float32(q3)
                    yy[l + 96] = s4 * np.float32(q4)


@njit(cache=True)
def dequant_q8_k_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_q8_K. block: d float32 | qs int8[256] | bsums int16[16]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 292 : (i + 1) * 292]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f32_from_bits(_u32(x, 0))
        for j in range(QK_K):
            y[j] = d * np.float32(_i8(x[4 + j]))


@njit(cache=True)
def dequant_iq4_xs_blocks(raw, out, block_start, n_blocks):
    # dequantize_row_iq4_xs. block: d fp16 | scales_h uint16 | scales_l[4] | qs[128]
    for i in range(block_start, block_start + n_blocks):
        x = raw[i * 136 : (i + 1) * 136]
        y = out[i * QK_K : (i + 1) * QK_K]
        d = _f16(x, 0)
        scales_h = _u16(x, 2)
        for ib in range(8):  # sub-blocks of 32, 16 bytes each
            ls = ((x[4 + ib // 2] >> (4 * (ib % 2))) & 0x0F) | (((scales_h >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            qs = x[8 + 16 * ib : 24 + 16 * ib]
            yy = y[32 * ib : 32 * ib + 32]
            for j in range(16):
                yy[j] = dl * np.float32(_KVALUES_IQ4NL[qs[j] & 0x0F])
                yy[j + 16] = dl * np.float32(_KVALUES_IQ4NL[qs[j] >> 4])


T = GGMLQuantizationType
KERNELS = {
    T.F32: dequant_f32_blocks,
    T.F16: dequant_f16_blocks,
    T.BF16: dequant_bf16_blocks,
    T.Q4_0: dequant_q4_0_blocks,
    T.Q4_1: dequant_q4_1_blocks,
    T.Q5_0: dequant_q5_0_blocks,
    T.Q5_1: dequant_q5_1_blocks,
    T.Q8_0: dequant_q8_0_blocks,
    T.Q2_K: dequant_q2_k_blocks,
    T.Q3_K: dequant_q3_k_blocks,
    T.Q4_K: dequant_q4_k_blocks,
    T.Q5_K: dequant_q5_k_blocks,
    T.Q6_K: dequant_q6_k_blocks,
    T.Q8_K: dequant_q8_k_blocks,
    T.IQ4_NL: dequant_iq4_nl_blocks,
    T.IQ4_XS: dequant_iq4_xs_blocks,
}
del T


# -- checked entry points ------------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view, so that a kernel compiles once whether its input is an mmap or a fresh array."""
    v = a.view()
    v.flags.writeable = False
    return v


def get_kernel(ggml_type: GGMLQuantizationType | int, tensor_name: str | None = None):
    """The compiled `dequant_<type>_blocks` of a type (UnsupportedTypeError if none)."""
    return KERNELS[get_format(ggml_type, tensor_name).ggml_type]


def dequantize(
    raw: np.ndarray,
    ggml_type: GGMLQuantizationType | int,
    shape,
    tensor_name: str | None = None,
) -> np.ndarray:
    """Raw tensor bytes -> float32 array of `shape` (numpy order), with the same checks as
    edgeinfer.quant.dequantize."""
    fmt, flat = check_raw(raw, ggml_type, shape, tensor_name)
    if fmt.ggml_type == GGMLQuantizationType.F32:  # a copy (norm weights at load: no compiled code to load)
        return np.array(np.ascontiguousarray(flat).view(np.float32)).reshape(tuple(shape))
    n_blocks = flat.size // fmt.type_size
    out = np.empty(n_blocks * fmt.block_size, np.float32)
    KERNELS[fmt.ggml_type](_readonly(flat), out, 0, n_blocks)
    return out.reshape(tuple(shape))


def dequantize_rows(
    raw_rows: np.ndarray,
    ggml_type: GGMLQuantizationType | int,
    row_start: int = 0,
    row_end: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rows row_start..row_end-1 of a tensor's raw bytes (n_rows, row_bytes) -> float32 (n, n_cols).

    Tensors of more than 2 dimensions count their rows flattened (as `TensorInfo.data.reshape(-1,
    row_bytes)`). `out`, if given, is a C-contiguous float32 array of n * n_cols values to fill.
    """
    fmt = get_format(ggml_type)
    raw_rows = np.asarray(raw_rows)
    if raw_rows.dtype != np.uint8 or raw_rows.ndim < 2:
        raise ValueError(
            f"raw_rows must be uint8 of shape (n_rows, row_bytes), not {raw_rows.dtype} {raw_rows.shape}"
        )
    raw_rows = raw_rows.reshape(-1, raw_rows.shape[-1])
    n_row_bytes = raw_rows.shape[1]
    if n_row_bytes % fmt.type_size:
        raise ValueError(
            f"A {fmt.ggml_type.name} row is a whole number of {fmt.type_size}-byte blocks, "
            f"not {n_row_bytes} bytes."
        )
    rows = raw_rows[row_start:row_end]
    n_cols = n_row_bytes // fmt.type_size * fmt.block_size
    if out is None:
        out = np.empty((rows.shape[0], n_cols), np.float32)
    elif out.dtype != np.float32 or out.size != rows.shape[0] * n_cols or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 with {rows.shape[0] * n_cols} values")
    flat = np.ascontiguousarray(rows).reshape(-1)
    KERNELS[fmt.ggml_type](_readonly(flat), out.reshape(-1), 0, flat.size // fmt.type_size)
    return out.reshape(rows.shape[0], n_cols)
