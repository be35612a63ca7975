"""SIMD building blocks for Numba kernels: LLVM vector types as Numba types, and the few vector
operations the quantized dot products need, emitted as LLVM IR through llvmlite (`@intrinsic`).

Numba cannot vectorize a block dot of packed 4-bit weights by itself; with these, kernel code stays
plain Numba (loops over blocks, scalar scales) while each block is handled as whole 256-bit vectors:

    acc = f32x8_zero()
    for b in range(n_blocks):                       # Q4_0 weights x Q8_0 activations
        w = i8x32_sub(nibbles_i8x32(wraw, wo), 8)   # 32 weights, int8 in -8..7
        p = madd_ones(dot_i8(w, load_i8x32(yq, yo)))  # i32x8: 8 partial sums of 4 products
        acc = fma_i32x8(p, d_w * d_y, acc)          # float lanes, no horizontal sum per block
    return hsum_f32x8(acc)

On x86 with AVX2 the products use pmaddubsw / pmaddwd / psignb (as ggml's AVX2 code does); elsewhere
the same values come from generic LLVM vector IR (sign/zero extension, multiply, pairwise add) that
LLVM lowers for the target (NEON on ARM). Values never leave the registers as Python objects: the
types exist only inside compiled code.

Byte offsets index 1-D uint8 / int8 / int16 arrays; there are no bounds checks (callers validate).
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ...quant.iquants import KVALUES_IQ4NL

# pmaddubsw & co. when the compiling host has AVX2 (Numba compiles for the host CPU).
# EDGEINFER_GENERIC_SIMD=1 forces the portable IR (to test it on x86; use with its own NUMBA_CACHE_DIR).
USE_AVX2 = bool(llvm.get_host_cpu_features().get("avx2")) and not os.environ.get("EDGEINFER_GENERIC_SIMD")

_i1, _i8, _i16, _i32, _f16, _f32 = (
    ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.HalfType(), ir.FloatType()
)  # fmt: skip
_V8x32 = ir.VectorType(_i8, 32)
_V8x16 = ir.VectorType(_i8, 16)
_V16x16 = ir.VectorType(_i16, 16)
_V32x8 = ir.VectorType(_i32, 8)
_VF32x8 = ir.VectorType(_f32, 8)


class _VectorType(types.Type):
    def __init__(self, name: str, be_type: ir.VectorType):
        self.be_type = be_type
        super().__init__(name=name)


class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.be_type)


i8x32 = _VectorType("i8x32", _V8x32)  # 32 int8 (or uint8, by context)
i16x16 = _VectorType("i16x16", _V16x16)  # 16 int16
i32x8 = _VectorType("i32x8", _V32x8)  # 8 int32
f32x8 = _VectorType("f32x8", _VF32x8)  # 8 float32
register_model(_VectorType)(_VectorModel)


# -- IR helpers ----------------------------------------------------------------------------------------


def _const_vec(vty: ir.VectorType, value) -> ir.Constant:
    return ir.Constant(vty, [ir.Constant(vty.element, value)] * vty.count)


def _splat(builder, value, count: int):
    """A scalar broadcast to all `count` lanes."""
    vty = ir.VectorType(value.type, count)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(
        v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_i32, count), [0] * count)
    )


def _shuffle(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_i32, len(idx)), list(idx)))


def _call(builder, name: str, ret, args):
    """Call an LLVM intrinsic (declared on first use in the current module)."""
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


def _ptr(context, builder, aty, arr, off, vty):
    """Pointer to `vty` at byte offset `off` of a 1-D array."""
    data = context.make_array(aty)(context, builder, arr).data
    p = builder.bitcast(data, _i8.as_pointer())
    p = builder.gep(p, [off], source_etype=_i8)
    return builder.bitcast(p, vty.as_pointer())


def _to_i64(context, builder, ty, v):
    return context.cast(builder, v, ty, types.int64)


def _is_byte_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype in (types.uint8, types.int8)


# -- loads ---------------------------------------------------------------------------------------------


@intrinsic
def load_i8x32(typingctx, a, off):
    """32 bytes at byte offset off."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V8x32)
        return builder.load(p, align=1, typ=_V8x32)

    return i8x32(a, off), codegen


@intrinsic
def nibbles_i8x32(typingctx, a, off):
    """16 bytes at off -> 32 values 0..15: the low nibbles of bytes 0..15, then their high nibbles
    (how ggml packs 32 4-bit values). The 16 bytes go to both halves of the vector (vbroadcasti128),
    the upper half shifted right by 4 (vpsrlvq), then masked."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V8x16)
        v = builder.load(p, align=1, typ=_V8x16)
        both = builder.bitcast(_shuffle(builder, v, v, list(range(16)) * 2), ir.VectorType(ir.IntType(64), 4))
        shift = ir.Constant(ir.VectorType(ir.IntType(64), 4), [0, 0, 4, 4])
        return builder.and_(builder.bitcast(builder.lshr(both, shift), _V8x32), _const_vec(_V8x32, 0x0F))

    return i8x32(a, off), codegen


@intrinsic
def load_i16x16(typingctx, a, off):
    """16 int16 at element offset off of an int16 array."""
    if not (isinstance(a, types.Array) and a.dtype == types.int16 and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(
            context,
            builder,
            a,
            args[0],
            builder.mul(_to_i64(context, builder, off, args[1]), ir.Constant(ir.IntType(64), 2)),
            _V16x16,
        )
        return builder.load(p, align=2, typ=_V16x16)

    return i16x16(a, off), codegen


@intrinsic
def load_i8x16_i16(typingctx, a, off):
    """16 int8 at byte offset off, sign-extended to 16 int16 (Q6_K's scales)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V8x16)
        return builder.sext(builder.load(p, align=1, typ=_V8x16), _V16x16)

    return i16x16(a, off), codegen


@intrinsic
def item(typingctx, a, i):
    """a[i] of a 1-D array, without the negative-index test of a[i] (i >= 0, in bounds)."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arr = context.make_array(a)(context, builder, args[0])
        p = builder.gep(
            arr.data, [_to_i64(context, builder, i, args[1])], source_etype=context.get_data_type(a.dtype)
        )
        return context.unpack_value(builder, a.dtype, p)

    return a.dtype(a, i), codegen


@intrinsic
def address(typingctx, a):
    """The address of an array's first element, as an int64."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(a)(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.int64(a), codegen


@intrinsic
def f16_at(typingctx, a, off):
    """The little-endian fp16 at byte offset off, as float32 (exact: GGML_FP16_TO_FP32).

    For scales inside hot loops use f16_scale8: LLVM turns this load into a vpinsrw into whatever
    register is free, a false dependency that can chain a loop's iterations together."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _f16)
        return builder.fpext(builder.load(p, align=1, typ=_f16), _f32)

    return types.float32(a, off), codegen


@intrinsic
def f16_scale8(typingctx, a, off, y):
    """fp16 at byte offset off times the float32 y, in all 8 lanes (a block's d_x * d_y).

    Broadcast-load (vpbroadcastw), convert 8 lanes, multiply: no dependency on earlier registers."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer) and y == types.float32):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _i16)
        h = _splat(builder, builder.load(p, align=1, typ=_i16), 8)
        d = builder.fpext(builder.bitcast(h, ir.VectorType(_f16, 8)), _VF32x8)
        return builder.fmul(d, _splat(builder, args[2], 8))

    return f32x8(a, off, y), codegen


@intrinsic
def f32_at(typingctx, a, off):
    """The little-endian float32 at byte offset off."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _f32)
        return builder.load(p, align=1, typ=_f32)

    return types.float32(a, off), codegen


@intrinsic
def u16_at(typingctx, a, off):
    """The little-endian uint16 at byte offset off, as int64."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _i16)
        return builder.zext(builder.load(p, align=1, typ=_i16), ir.IntType(64))

    return types.int64(a, off), codegen


@intrinsic
def f16x8_words(typingctx, lo, hi):
    """8 fp16 packed in two int64 (4 each, the first in the low bits of lo), as 8 float32."""
    if not (isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i64x2 = ir.VectorType(ir.IntType(64), 2)
        v = builder.insert_element(
            ir.Constant(i64x2, ir.Undefined),
            context.cast(builder, args[0], lo, types.int64),
            ir.Constant(_i32, 0),
        )
        v = builder.insert_element(v, context.cast(builder, args[1], hi, types.int64), ir.Constant(_i32, 1))
        return builder.fpext(builder.bitcast(v, ir.VectorType(_f16, 8)), _VF32x8)

    return f32x8(lo, hi), codegen


@intrinsic
def u32_at(typingctx, a, off):
    """The little-endian uint32 at byte offset off, as int64."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _i32)
        return builder.zext(builder.load(p, align=1, typ=_i32), ir.IntType(64))

    return types.int64(a, off), codegen


@intrinsic
def f16_round(typingctx, x):
    """x rounded to fp16 and back (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)))."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], _f16), _f32)

    return types.float32(x), codegen


# -- byte vectors --------------------------------------------------------------------------------------


def _i8x32_binop(op):
    @intrinsic
    def fn(typingctx, a, b):
        if a != i8x32:
            return None
        if b == i8x32:

            def codegen(context, builder, sig, args):
                return getattr(builder, op)(args[0], args[1])

            return i8x32(a, b), codegen
        if isinstance(b, types.Integer):

            def codegen(context, builder, sig, args):
                s = builder.trunc(context.cast(builder, args[1], b, types.int64), _i8)
                return getattr(builder, op)(args[0], _splat(builder, s, 32))

            return i8x32(a, b), codegen
        return None

    return fn


i8x32_and = _i8x32_binop("and_")
i8x32_or = _i8x32_binop("or_")
i8x32_sub = _i8x32_binop("sub")
i8x32_shr = _i8x32_binop("lshr")  # logical: bytes as unsigned


@intrinsic
def bits_i8x32(typingctx, bits, one, zero):
    """32 bits of an integer -> 32 bytes: byte j is `one` where bit j is set, else `zero`.

    As ggml's bytes_from_bits_32: broadcast the word, give byte j the word's byte j // 8 (a byte
    shuffle), keep bit j % 8, compare."""
    if not all(isinstance(t, types.Integer) for t in (bits, one, zero)):
        return None

    def codegen(context, builder, sig, args):
        b = builder.trunc(context.cast(builder, args[0], bits, types.int64), _i32)
        word_bytes = builder.bitcast(_splat(builder, b, 8), _V8x32)
        v = _shuffle(builder, word_bytes, word_bytes, [j // 8 for j in range(32)])
        mask = ir.Constant(_V8x32, [ir.Constant(_i8, 1 << (j % 8)) for j in range(32)])
        isset = builder.icmp_unsigned("!=", builder.and_(v, mask), _const_vec(_V8x32, 0))
        on = builder.trunc(context.cast(builder, args[1], one, types.int64), _i8)
        off = builder.trunc(context.cast(builder, args[2], zero, types.int64), _i8)
        return builder.select(isset, _splat(builder, on, 32), _splat(builder, off, 32))

    return i8x32(bits, one, zero), codegen


@intrinsic
def byte_bits_i8x32(typingctx, a, off, bit, value):
    """32 bytes at off -> 32 bytes: `value` where bit `bit` of the byte is set, else 0 (Q5_K's qh)."""
    if not (_is_byte_array(a) and all(isinstance(t, types.Integer) for t in (off, bit, value))):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V8x32)
        v = builder.load(p, align=1, typ=_V8x32)
        b = builder.trunc(context.cast(builder, args[2], bit, types.int64), _i8)
        m = builder.shl(ir.Constant(_i8, 1), b)
        isset = builder.icmp_unsigned("!=", builder.and_(v, _splat(builder, m, 32)), _const_vec(_V8x32, 0))
        on = builder.trunc(context.cast(builder, args[3], value, types.int64), _i8)
        return builder.select(isset, _splat(builder, on, 32), _const_vec(_V8x32, 0))

    return i8x32(a, off, bit, value), codegen


i8x32_shl = _i8x32_binop("shl")


@intrinsic
def kvalues_iq4nl_i8x32(typingctx, idx):
    """32 indices 0..15 -> kvalues_iq4nl[idx] (int8), the IQ4_NL / IQ4_XS code book (pshufb on x86)."""
    if idx != i8x32:
        return None

    def codegen(context, builder, sig, args):
        table = ir.Constant(_V8x32, [ir.Constant(_i8, int(v) & 0xFF) for v in list(KVALUES_IQ4NL) * 2])
        if USE_AVX2:
            return _call(builder, "llvm.x86.avx2.pshuf.b", _V8x32, [table, args[0]])
        out = ir.Constant(_V8x32, ir.Undefined)
        for j in range(32):
            i = builder.extract_element(args[0], ir.Constant(_i32, j))
            out = builder.insert_element(out, builder.extract_element(table, i), ir.Constant(_i32, j))
        return out

    return i8x32(idx), codegen


def _word_bytes_i16(builder, word):
    """The 8 bytes of an int64 (little-endian order), zero-extended to <8 x i16>."""
    return builder.zext(builder.bitcast(word, ir.VectorType(_i8, 8)), ir.VectorType(_i16, 8))


@intrinsic
def i16x16_words(typingctx, lo, hi, bias):
    """16 bytes (the 8 of int64 lo, then the 8 of hi), each as int16 plus bias (Q3_K's scales)."""
    if not all(isinstance(t, types.Integer) for t in (lo, hi, bias)):
        return None

    def codegen(context, builder, sig, args):
        a = _word_bytes_i16(builder, context.cast(builder, args[0], lo, types.int64))
        b = _word_bytes_i16(builder, context.cast(builder, args[1], hi, types.int64))
        v = _shuffle(builder, a, b, range(16))
        c = builder.trunc(context.cast(builder, args[2], bias, types.int64), _i16)
        return builder.add(v, _splat(builder, c, 16))

    return i16x16(lo, hi, bias), codegen


@intrinsic
def i16x16_word_pairs(typingctx, word):
    """The 8 bytes of an int64, each twice, as 16 int16 (Q4_K's 8 mins against 16 bsums)."""
    if not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = _word_bytes_i16(builder, context.cast(builder, args[0], word, types.int64))
        return _shuffle(builder, v, v, [j // 2 for j in range(16)])

    return i16x16(word), codegen


@intrinsic
def i16x16_u8(typingctx, a, off, shift, mask):
    """16 bytes at off, each (byte >> shift) & mask, as int16 (Q2_K's mins)."""
    if not (_is_byte_array(a) and all(isinstance(t, types.Integer) for t in (off, shift, mask))):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V8x16)
        v = builder.zext(builder.load(p, align=1, typ=_V8x16), _V16x16)
        s = builder.trunc(context.cast(builder, args[2], shift, types.int64), _i16)
        m = builder.trunc(context.cast(builder, args[3], mask, types.int64), _i16)
        return builder.and_(builder.lshr(v, _splat(builder, s, 16)), _splat(builder, m, 16))

    return i16x16(a, off, shift, mask), codegen


# -- products ------------------------------------------------------------------------------------------


def _maddubs(builder, u, s):
    """pmaddubsw: unsigned bytes u times signed bytes s, adjacent pairs summed (saturated) to int16."""
    if USE_AVX2:
        return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16x16, [u, s])
    prod = builder.mul(builder.zext(u, ir.VectorType(_i16, 32)), builder.sext(s, ir.VectorType(_i16, 32)))
    even = _shuffle(builder, prod, prod, range(0, 32, 2))
    odd = _shuffle(builder, prod, prod, range(1, 32, 2))
    return _call(builder, "llvm.sadd.sat.v16i16", _V16x16, [even, odd])


def _madd(builder, a, b):
    """pmaddwd: int16 times int16, adjacent pairs summed to int32."""
    if USE_AVX2:
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _V32x8, [a, b])
    vt = ir.VectorType(_i32, 16)
    prod = builder.mul(builder.sext(a, vt), builder.sext(b, vt))
    even = _shuffle(builder, prod, prod, range(0, 16, 2))
    odd = _shuffle(builder, prod, prod, range(1, 16, 2))
    return builder.add(even, odd)


@intrinsic
def dot_u8(typingctx, u, s):
    """Unsigned bytes (0..127 at most: no saturation then) times signed bytes: 16 int16 pair sums."""
    if u != i8x32 or s != i8x32:
        return None

    def codegen(context, builder, sig, args):
        return _maddubs(builder, args[0], args[1])

    return i16x16(u, s), codegen


@intrinsic
def dot_i8(typingctx, a, b):
    """Signed bytes times signed bytes (b in -127..127): 16 int16 pair sums.

    |a| * sign(b, a) through pmaddubsw, as ggml's mul_sum_i8_pairs does; exact for a in -128..127."""
    if a != i8x32 or b != i8x32:
        return None

    def codegen(context, builder, sig, args):
        x, y = args
        if USE_AVX2:
            ax = _call(builder, "llvm.abs.v32i8", _V8x32, [x, ir.Constant(_i1, 0)])
            sy = _call(builder, "llvm.x86.avx2.psign.b", _V8x32, [y, x])
            return _maddubs(builder, ax, sy)
        vt = ir.VectorType(_i16, 32)
        prod = builder.mul(builder.sext(x, vt), builder.sext(y, vt))
        even = _shuffle(builder, prod, prod, range(0, 32, 2))
        odd = _shuffle(builder, prod, prod, range(1, 32, 2))
        return builder.add(even, odd)

    return i16x16(a, b), codegen


@intrinsic
def madd_ones(typingctx, p):
    """16 int16 -> 8 int32: adjacent pairs summed."""
    if p != i16x16:
        return None

    def codegen(context, builder, sig, args):
        return _madd(builder, args[0], _const_vec(_V16x16, 1))

    return i32x8(p), codegen


@intrinsic
def madd_scale(typingctx, p, s):
    """16 int16 times one integer scale (int16 range) -> 8 int32 pair sums."""
    if p != i16x16 or not isinstance(s, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        sc = builder.trunc(context.cast(builder, args[1], s, types.int64), _i16)
        return _madd(builder, args[0], _splat(builder, sc, 16))

    return i32x8(p, s), codegen


@intrinsic
def madd_scales2(typingctx, p, s0, s1):
    """16 int16 -> 8 int32 pair sums, lanes 0..7 times s0, lanes 8..15 times s1 (two sub-blocks of 16)."""
    if p != i16x16 or not (isinstance(s0, types.Integer) and isinstance(s1, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        a = _splat(builder, builder.trunc(context.cast(builder, args[1], s0, types.int64), _i16), 16)
        b = _splat(builder, builder.trunc(context.cast(builder, args[2], s1, types.int64), _i16), 16)
        return _madd(builder, args[0], _shuffle(builder, a, b, list(range(8)) + list(range(24, 32))))

    return i32x8(p, s0, s1), codegen


@intrinsic
def madd_i16(typingctx, a, b):
    """int16 times int16 -> 8 int32 pair sums."""
    if a != i16x16 or b != i16x16:
        return None

    def codegen(context, builder, sig, args):
        return _madd(builder, args[0], args[1])

    return i32x8(a, b), codegen


# -- int32 and float lanes -----------------------------------------------------------------------------


@intrinsic
def i32x8_zero(typingctx):
    def codegen(context, builder, sig, args):
        return _const_vec(_V32x8, 0)

    return i32x8(), codegen


@intrinsic
def i32x8_add(typingctx, a, b):
    if a != i32x8 or b != i32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return i32x8(a, b), codegen


@intrinsic
def i32x8_sub(typingctx, a, b):
    if a != i32x8 or b != i32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.sub(args[0], args[1])

    return i32x8(a, b), codegen


@intrinsic
def i32x8_shl(typingctx, a, n):
    if a != i32x8 or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        s = builder.trunc(context.cast(builder, args[1], n, types.int64), _i32)
        return builder.shl(args[0], _splat(builder, s, 8))

    return i32x8(a, n), codegen


@intrinsic
def f32x8_zero(typingctx):
    def codegen(context, builder, sig, args):
        return _const_vec(_VF32x8, 0.0)

    return f32x8(), codegen


@intrinsic
def fma_i32x8(typingctx, v, d, acc):
    """acc + float(v) * d, lane by lane (d: f32x8, e.g. from f16_scale8)."""
    if v != i32x8 or d != f32x8 or acc != f32x8:
        return None

    def codegen(context, builder, sig, args):
        fv = builder.sitofp(args[0], _VF32x8)
        return _call(builder, "llvm.fmuladd.v8f32", _VF32x8, [fv, args[1], args[2]])

    return f32x8(v, d, acc), codegen


@intrinsic
def f32x8_add(typingctx, a, b):
    if a != f32x8 or b != f32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return f32x8(a, b), codegen


@intrinsic
def f32x8_head(typingctx, a, n):
    """Lanes 0..n-1 of a, zeros in the others."""
    if a != f32x8 or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        k = builder.trunc(context.cast(builder, args[1], n, types.int64), _i32)
        keep = builder.icmp_signed("<", ir.Constant(_V32x8, list(range(8))), _splat(builder, k, 8))
        return builder.select(keep, args[0], _const_vec(_VF32x8, 0.0))

    return f32x8(a, n), codegen


@intrinsic
def hsum_f32x8(typingctx, a):
    """Sum of the 8 float32 lanes (pairwise: (0+4, 1+5, ...), then halves again)."""
    if a != f32x8:
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        lo = _shuffle(builder, v, v, range(4))
        hi = _shuffle(builder, v, v, range(4, 8))
        v = builder.fadd(lo, hi)
        lo = _shuffle(builder, v, v, range(2))
        hi = _shuffle(builder, v, v, range(2, 4))
        v = builder.fadd(lo, hi)
        return builder.fadd(
            builder.extract_element(v, ir.Constant(_i32, 0)), builder.extract_element(v, ir.Constant(_i32, 1))
        )

    return types.float32(a), codegen


# -- float vectors from memory (F32 / F16 / BF16 weights) ----------------------------------------------


def _float_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32


@intrinsic
def load_f32x8(typingctx, a, i):
    """8 float32 from a float32 array at element i."""
    if not (_float_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        off = builder.mul(_to_i64(context, builder, i, args[1]), ir.Constant(ir.IntType(64), 4))
        return builder.load(_ptr(context, builder, a, args[0], off, _VF32x8), align=4, typ=_VF32x8)

    return f32x8(a, i), codegen


@intrinsic
def f32x8_at(typingctx, a, off):
    """8 little-endian float32 at byte offset off of a byte array."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _VF32x8)
        return builder.load(p, align=1, typ=_VF32x8)

    return f32x8(a, off), codegen


@intrinsic
def f16x8_at(typingctx, a, off):
    """8 little-endian fp16 at byte offset off, as float32 (exact)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_f16, 8)
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), vt)
        return builder.fpext(builder.load(p, align=1, typ=vt), _VF32x8)

    return f32x8(a, off), codegen


@intrinsic
def bf16x8_at(typingctx, a, off):
    """8 little-endian bf16 at byte offset off, as float32 (exact: the bits shifted up 16)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vt = ir.VectorType(_i16, 8)
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), vt)
        v = builder.zext(builder.load(p, align=1, typ=vt), _V32x8)
        return builder.bitcast(builder.shl(v, _const_vec(_V32x8, 16)), _VF32x8)

    return f32x8(a, off), codegen


@intrinsic
def h16x8_f32(typingctx, a, i):
    """8 fp16 (their bits: a uint16 array) from element i, as float32 (exact: vcvtph2ps with F16C)."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.uint16 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_f16, 8)
        off = builder.mul(_to_i64(context, builder, i, args[1]), ir.Constant(ir.IntType(64), 2))
        return builder.fpext(builder.load(_ptr(context, builder, a, args[0], off, vty), align=2, typ=vty), _VF32x8)

    return f32x8(a, i), codegen


@intrinsic
def f32x8_splat(typingctx, s):
    """A float32 in all 8 lanes."""
    if s != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], 8)

    return f32x8(s), codegen


@intrinsic
def fma_f32x8(typingctx, a, b, acc):
    """acc + a * b, lane by lane."""
    if a != f32x8 or b != f32x8 or acc != f32x8:
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.fmuladd.v8f32", _VF32x8, list(args))

    return f32x8(a, b, acc), codegen


@intrinsic
def bf16_at(typingctx, a, off):
    """The little-endian bf16 at byte offset off, as float32 (exact)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _i16)
        v = builder.zext(builder.load(p, align=1, typ=_i16), _i32)
        return builder.bitcast(builder.shl(v, ir.Constant(_i32, 16)), _f32)

    return types.float32(a, off), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The bit pattern of a float32, as an int64 (0 .. 2**32 - 1)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(builder.bitcast(args[0], _i32), ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def f32_from_bits(typingctx, u):
    """The low 32 bits of an integer as a float32."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = builder.trunc(context.cast(builder, args[0], u, types.int64), _i32)
        return builder.bitcast(v, _f32)

    return types.float32(u), codegen


# -- row-interleaved ("x8") tiles: a 32-bit lane per weight row (edgeinfer.kernels.numba.x8) ------------


@intrinsic
def bcast4_i8x32(typingctx, a, off):
    """The 4 bytes at byte offset off, repeated in every 32-bit lane (vpbroadcastd)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _i32)
        return builder.bitcast(_splat(builder, builder.load(p, align=1, typ=_i32), 8), _V8x32)

    return i8x32(a, off), codegen


@intrinsic
def bcast2_i16x16(typingctx, a, i):
    """int16 elements i, i + 1 of an int16 array, repeated in every 32-bit lane."""
    if not (isinstance(a, types.Array) and a.dtype == types.int16 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        off = builder.mul(_to_i64(context, builder, i, args[1]), ir.Constant(ir.IntType(64), 2))
        p = _ptr(context, builder, a, args[0], off, _i32)
        return builder.bitcast(_splat(builder, builder.load(p, align=2, typ=_i32), 8), _V16x16)

    return i16x16(a, i), codegen


@intrinsic
def load_i32x8(typingctx, a, off):
    """8 int32 at byte offset off of a byte array."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), _V32x8)
        return builder.load(p, align=1, typ=_V32x8)

    return i32x8(a, off), codegen


@intrinsic
def load_u16x8_i32(typingctx, a, off):
    """8 little-endian uint16 at byte offset off of a byte array, zero-extended to 8 int32 (vpmovzxwd)."""
    if not (_is_byte_array(a) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_i16, 8)
        p = _ptr(context, builder, a, args[0], _to_i64(context, builder, off, args[1]), vty)
        return builder.zext(builder.load(p, align=1, typ=vty), _V32x8)

    return i32x8(a, off), codegen


@intrinsic
def nibble_bits_i8x32(typingctx, v, value):
    """Bits 0..3 of each 32-bit lane of v -> bytes 0..3 of that lane: `value` where the bit is set, else 0
    (Q5_0's fifth bits, a row's qh shifted down to a word's four quants; a byte shuffle, a mask, a compare
    on x86)."""
    if v != i32x8 or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        b = builder.bitcast(args[0], _V8x32)
        low = _shuffle(builder, b, b, [4 * (j // 4) for j in range(32)])  # byte 0 of the lane, 4 times
        mask = ir.Constant(_V8x32, [ir.Constant(_i8, 1 << (j % 4)) for j in range(32)])
        isset = builder.icmp_unsigned("!=", builder.and_(low, mask), _const_vec(_V8x32, 0))
        on = builder.trunc(context.cast(builder, args[1], value, types.int64), _i8)
        return builder.select(isset, _splat(builder, on, 32), _const_vec(_V8x32, 0))

    return i8x32(v, value), codegen


@intrinsic
def i16x16_add(typingctx, a, b):
    if a != i16x16 or b != i16x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return i16x16(a, b), codegen


@intrinsic
def i8x32_abs(typingctx, a):
    if a != i8x32:
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.abs.v32i8", _V8x32, [args[0], ir.Constant(_i1, 0)])

    return i8x32(a), codegen


@intrinsic
def i8x32_sign(typingctx, a, b):
    """a with b's sign: -a where b < 0, 0 where b == 0, else a (psignb)."""
    if a != i8x32 or b != i8x32:
        return None

    def codegen(context, builder, sig, args):
        x, s = args
        if USE_AVX2:
            return _call(builder, "llvm.x86.avx2.psign.b", _V8x32, [x, s])
        zero = _const_vec(_V8x32, 0)
        neg = builder.select(builder.icmp_signed("<", s, zero), builder.sub(zero, x), x)
        return builder.select(builder.icmp_signed("==", s, zero), zero, neg)

    return i8x32(a, b), codegen


def _i32x8_binop(op):
    @intrinsic
    def fn(typingctx, a, b):
        if a != i32x8:
            return None
        if b == i32x8:

            def codegen(context, builder, sig, args):
                return getattr(builder, op)(args[0], args[1])

            return i32x8(a, b), codegen
        if isinstance(b, types.Integer):

            def codegen(context, builder, sig, args):
                s = builder.trunc(context.cast(builder, args[1], b, types.int64), _i32)
                return getattr(builder, op)(args[0], _splat(builder, s, 8))

            return i32x8(a, b), codegen
        return None

    return fn


i32x8_mul = _i32x8_binop("mul")  # the low 32 bits of each product (vpmulld)
i32x8_and = _i32x8_binop("and_")
i32x8_or = _i32x8_binop("or_")
i32x8_shr = _i32x8_binop("lshr")  # logical
i32x8_subs = _i32x8_binop("sub")  # minus a vector or a scalar broadcast


@intrinsic
def i32x8_dup_byte(typingctx, v, j):
    """Byte j (0..3) of each 32-bit lane, zero-extended into both int16 halves of the lane (a row's
    scale as the int16 pair (s, s) that pmaddwd multiplies a lane's two pair sums by)."""
    if v != i32x8 or not isinstance(j, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        s = builder.trunc(context.cast(builder, args[1], j, types.int64), _i32)
        if USE_AVX2:  # vpshufb: bytes (4L + j, none, 4L + j, none) of lane L (0x80: a zero byte)
            base = ir.Constant(_V32x8, [(0x80008000 + 0x00040004 * (L % 4)) - (1 << 32) for L in range(8)])
            mask = builder.add(base, _splat(builder, builder.mul(s, ir.Constant(_i32, 0x00010001)), 8))
            v = _call(builder, "llvm.x86.avx2.pshuf.b", _V8x32, [builder.bitcast(args[0], _V8x32),
                                                                  builder.bitcast(mask, _V8x32)])
            return builder.bitcast(v, _V16x16)
        b = builder.and_(builder.lshr(args[0], _splat(builder, builder.mul(s, ir.Constant(_i32, 8)), 8)),
                         _const_vec(_V32x8, 0xFF))
        return builder.bitcast(builder.or_(b, builder.shl(b, _const_vec(_V32x8, 16))), _V16x16)

    return i16x16(v, j), codegen


@intrinsic
def i16x16_dup_pairs(typingctx, v, odd):
    """int16 element 2L + odd of each 32-bit lane L into both halves of the lane (odd: 0 or 1)."""
    if v != i16x16 or not isinstance(odd, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ev = _shuffle(builder, args[0], args[0], [2 * (k // 2) for k in range(16)])
        od = _shuffle(builder, args[0], args[0], [2 * (k // 2) + 1 for k in range(16)])
        o = context.cast(builder, args[1], odd, types.int64)
        return builder.select(builder.icmp_signed("!=", o, ir.Constant(ir.IntType(64), 0)), od, ev)

    return i16x16(v, odd), codegen


@intrinsic
def f32x8_mul_scalar(typingctx, a, s):
    if a != f32x8 or s != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], _splat(builder, args[1], 8))

    return f32x8(a, s), codegen


@intrinsic
def fma_exact_i32x8(typingctx, d, v, acc):
    """fma(d, float(v), acc) lane by lane, one rounding (llvm.fma: never split into mul + add)."""
    if d != f32x8 or v != i32x8 or acc != f32x8:
        return None

    def codegen(context, builder, sig, args):
        fv = builder.sitofp(args[1], _VF32x8)
        return _call(builder, "llvm.fma.v8f32", _VF32x8, [args[0], fv, args[2]])

    return f32x8(d, v, acc), codegen


@intrinsic
def fnma_exact_i32x8(typingctx, d, v, acc):
    """fma(-d, float(v), acc) lane by lane, one rounding."""
    if d != f32x8 or v != i32x8 or acc != f32x8:
        return None

    def codegen(context, builder, sig, args):
        fv = builder.sitofp(args[1], _VF32x8)
        return _call(builder, "llvm.fma.v8f32", _VF32x8, [builder.fneg(args[0]), fv, args[2]])

    return f32x8(d, v, acc), codegen


@intrinsic
def store_f32x8(typingctx, a, i, v):
    """a[i : i + 8] = v (a: 1-D float32 array, no bounds check)."""
    if not (_float_array(a) and isinstance(i, types.Integer) and v == f32x8):
        return None

    def codegen(context, builder, sig, args):
        off = builder.mul(_to_i64(context, builder, i, args[1]), ir.Constant(ir.IntType(64), 4))
        builder.store(args[2], _ptr(context, builder, a, args[0], off, _VF32x8), align=4)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def f32x8_lane(typingctx, v, i):
    """Lane i of v."""
    if v != f32x8 or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(context.cast(builder, args[1], i, types.int64), _i32))

    return types.float32(v, i), codegen


@intrinsic
def i16x16_zero(typingctx):
    def codegen(context, builder, sig, args):
        return _const_vec(_V16x16, 0)

    return i16x16(), codegen


@intrinsic
def prefetch(typingctx, a, off):
    """Prefetch the cache line at byte offset off of an array into L1 (a hint: past the end is harmless)."""
    if not (isinstance(a, types.Array) and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(a)(context, builder, args[0]).data
        p = builder.gep(builder.bitcast(data, _i8.as_pointer()), [_to_i64(context, builder, off, args[1])],
                        source_etype=_i8)  # fmt: skip
        fnty = ir.FunctionType(ir.VoidType(), [_i8.as_pointer(), _i32, _i32, _i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [p, ir.Constant(_i32, 0), ir.Constant(_i32, 3), ir.Constant(_i32, 1)])
        return context.get_dummy_value()

    return types.none(a, off), codegen


@intrinsic
def atomic_add(typingctx, a, i, v):
    """a[i] += v atomically (a: 1-D int64 array); returns the value before."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
            and isinstance(i, types.Integer) and isinstance(v, types.Integer)):  # fmt: skip
        return None

    def codegen(context, builder, sig, args):
        arr = context.make_array(a)(context, builder, args[0])
        p = builder.gep(arr.data, [_to_i64(context, builder, i, args[1])], source_etype=ir.IntType(64))
        return builder.atomic_rmw("add", p, _to_i64(context, builder, v, args[2]), "monotonic")

    return types.int64(a, i, v), codegen
