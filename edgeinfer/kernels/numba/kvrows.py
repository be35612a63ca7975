"""K/V cache rows in their storage formats (edgeinfer.nn.kv's KV_TYPES), for Numba kernels.

Numba has no float16 on the CPU, so the kernels get f16 storage as its uint16 bits, and q8_0 storage
(uint8 rows of ggml's block_q8_0: fp16 d, 32 int8 q) as int8, so that the quants convert to float in
one vector instruction (`kv_array`). Two functions, typed by the storage's dtype at compile time (one
specialization per format, no run-time branch):

    kv_row(store, c, g, buf) -> float32 (head_dim,)   row (c, g) read: the row itself for float32
                                                        storage, else converted into buf (exact)
    kv_put(store, c, g, src)                            float32 src (head_dim,) written into row (c, g):
                                                        f16 rounded to nearest even, q8_0 quantized as
                                                        quantize_row_q8_0_ref (numpy_ops.kv_store's rounding)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .simd import h16x8_f32, store_f32x8

QK = 32  # values per q8_0 block
QB = 34  # bytes per q8_0 block

_i16, _f16, _f32 = ir.IntType(16), ir.HalfType(), ir.FloatType()


@intrinsic
def h2f(typingctx, h):
    """The fp16 with bits h (an integer, its low 16 bits), as float32: exact (vcvtph2ps with F16C)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        bits = builder.trunc(args[0], _i16) if h.bitwidth > 16 else builder.zext(args[0], _i16) if h.bitwidth < 16 else args[0]
        return builder.fpext(builder.bitcast(bits, _f16), _f32)

    return types.float32(h), codegen


@intrinsic
def f2h(typingctx, x):
    """float32 x rounded to fp16 (nearest even), its bits as uint16."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], _f16), _i16)

    return types.uint16(x), codegen


def kv_array(store: np.ndarray) -> np.ndarray:
    """K/V storage as the kernels take it (a view): float16 as its uint16 bits, q8_0's uint8 as int8."""
    if store.dtype == np.float16:
        return store.view(np.uint16)
    return store.view(np.int8) if store.dtype == np.uint8 else store


@njit(cache=True, inline="always")
def _d(row, o):
    """The fp16 scale d at byte o of an int8 row, as float32."""
    return h2f((np.uint16(np.uint8(row[o])) | (np.uint16(np.uint8(row[o + 1])) << 8)))


def kv_row(store, c, g, buf):  # compiled only (see the overload)
    raise NotImplementedError


def kv_put(store, c, g, src):  # compiled only (see the overload)
    raise NotImplementedError


@overload(kv_row)
def _kv_row(store, c, g, buf):
    if store.dtype == types.float32:

        def row_f32(store, c, g, buf):
            return store[c, g]

        return row_f32
    if store.dtype == types.uint16:

        def row_f16(store, c, g, buf):
            row = store[c, g]
            n = buf.shape[0]
            n8 = n - n % 8
            for e in range(0, n8, 8):
                store_f32x8(buf, e, h16x8_f32(row, e))
            for e in range(n8, n):
                buf[e] = h2f(row[e])
            return buf

        return row_f16
    if store.dtype == types.int8:

        def row_q8_0(store, c, g, buf):
            row = store[c, g]
            for b in range(buf.shape[0] // QK):
                o = b * QB
                d = _d(row, o)
                qs = row[o + 2 : o + QB]  # views of fixed length: LLVM vectorizes the loop whole
                out = buf[b * QK : (b + 1) * QK]
                for i in range(QK):
                    out[i] = d * np.float32(qs[i])  # exact: 11 x 8 bits
            return buf

        return row_q8_0
    return None


@overload(kv_put)
def _kv_put(store, c, g, src):
    if store.dtype == types.float32:

        def put_f32(store, c, g, src):
            row = store[c, g]
            for e in range(src.shape[0]):
                row[e] = src[e]

        return put_f32
    if store.dtype == types.uint16:

        def put_f16(store, c, g, src):
            row = store[c, g]
            for e in range(src.shape[0]):
                row[e] = f2h(src[e])

        return put_f16
    if store.dtype == types.int8:

        def put_q8_0(store, c, g, src):
            row = store[c, g]
            for b in range(src.shape[0] // QK):
                amax = np.float32(0.0)
                for i in range(QK):
                    amax = max(amax, abs(src[b * QK + i]))
                d = amax / np.float32(127.0)
                inv = np.float32(1.0) / d if d != np.float32(0.0) else np.float32(0.0)
                h = f2h(d)
                o = b * QB
                row[o] = np.int8(np.uint8(h & 0xFF))
                row[o + 1] = np.int8(np.uint8(h >> 8))
                for i in range(QK):
                    x = np.float64(src[b * QK + i] * inv)  # C's roundf: halves away from zero, exact in float64
                    row[o + 2 + i] = np.int8(x + 0.5) if x >= 0.0 else np.int8(x - 0.5)

        return put_q8_0
    return None


__all__ = ["f2h", "h2f", "kv_array", "kv_put", "kv_row"]
