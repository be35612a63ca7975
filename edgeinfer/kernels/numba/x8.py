"""Row-interleaved ("x8") weights for the Numba backend: the native backend's layout (native/x8.h) and
its arithmetic, in Numba.

At load, NumbaBackend.prepare() repacks a weight of a type in FIELDS: rows are taken eight at a time (a
partial last group padded with copies of its last row) and, block by block, the eight rows' fields are
interleaved so that one 32-byte load holds the same 4 bytes (or 2) of each of the eight rows. A 32-bit
SIMD lane is then a row: a block's int32 dot for eight rows is one vector, the eight fp16 scales one
16-byte load, and nothing is summed across lanes. The bytes are exactly those of native/x8.c's repack
(the tests compare them), so a weight repacked by either backend is the same array.

What a kernel computes per (row, token) is x8.h's definition, per block b in order:

    acc = fma(d_row * d_tok, float(sumi), acc)          Q4_0, Q5_0, Q8_0, IQ4_NL, Q6_K, IQ4_XS
    acc = fma(d_row * d_tok, float(isum), acc); acc = fma(-(dmin_row * d_tok), float(msum), acc)   Q4_K, Q5_K

with the integer parts exact: the same bits as the native x8 kernels, for any batch, tile or thread
count. Each format is one function, `_blk_<type>`: a group block (8 rows) against one token's
activation block, returning the updated 8-lane accumulator. The tile driver takes 4 tokens per block
through `_blk4_<type>` where the format has one (Q4_K, Q5_K, Q6_K: each word of quants loaded and
decoded once for the four tokens, the same sums in the same order), else `_each4`, four calls of
`_blk_<type>` in turn: LLVM shares the weight loads and decoding between those where it unrolls the
block's loops (the small formats), not across the K-quants' loops over sub-blocks (there each call
re-decoded the weights: 1B Q4_K_M prefill 0.54x native before the _blk4 functions, 0.79x after). Each
decoded weight vector feeds four tokens and each broadcast activation word eight rows.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType
from numba import njit, prange

from .simd import (
    atomic_add,
    bcast2_i16x16,
    bcast4_i8x32,
    dot_u8,
    f16x8_at,
    f32x8_lane,
    f32x8_mul_scalar,
    f32x8_zero,
    fma_exact_i32x8,
    fnma_exact_i32x8,
    i8x32_abs,
    i8x32_and,
    i8x32_or,
    i8x32_shl,
    i8x32_shr,
    i8x32_sign,
    i16x16_add,
    i16x16_dup_pairs,
    i16x16_zero,
    i32x8_add,
    i32x8_and,
    i32x8_dup_byte,
    i32x8_mul,
    i32x8_or,
    i32x8_shl,
    i32x8_shr,
    i32x8_subs,
    i32x8_zero,
    item,
    kvalues_iq4nl_i8x32,
    load_i8x16_i16,
    load_i8x32,
    load_i32x8,
    load_u16x8_i32,
    nibble_bits_i8x32,
    prefetch,
    madd_i16,
    madd_ones,
    store_f32x8,
)

T = GGMLQuantizationType

# The x8 layout of each type: fields (offset in the plain block, bytes, word size), in their order in a
# group block (native/x8.c's x8_traits: the two tables must agree, tests/test_numba_x8.py checks the bytes)
FIELDS: dict[GGMLQuantizationType, tuple[tuple[int, int, int], ...]] = {
    T.Q4_0: ((0, 2, 2), (2, 16, 4)),
    T.Q8_0: ((0, 2, 2), (2, 32, 4)),
    T.Q4_K: ((0, 2, 2), (2, 2, 2), (4, 12, 4), (16, 128, 4)),
    T.Q6_K: ((208, 2, 2), (192, 16, 2), (0, 128, 4), (128, 64, 4)),
    T.Q5_0: ((0, 2, 2), (2, 4, 4), (6, 16, 4)),
    T.Q5_K: ((0, 2, 2), (2, 2, 2), (4, 12, 4), (16, 160, 4)),
    T.IQ4_NL: ((0, 2, 2), (2, 16, 4)),
    T.IQ4_XS: ((0, 2, 2), (2, 2, 2), (4, 4, 4), (8, 128, 4)),
}
del T


# -- the repack ----------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _move(src, dst, n_rows, row_bytes, type_size, fields, pack):
    """Plain rows (n_rows * row_bytes,) <-> x8 groups ((n_rows + 7) // 8 * 8 * row_bytes,): pack copies
    src (plain) into dst (groups; padding rows: copies of the last row), else src (groups) into dst."""
    nb = row_bytes // type_size
    n_groups = (n_rows + 7) // 8
    for gi in prange(n_groups):
        for b in range(nb):
            go = gi * 8 * row_bytes + b * 8 * type_size
            for f in range(fields.shape[0]):
                off = fields[f, 0]
                size = fields[f, 1]
                word = fields[f, 2]
                for r in range(8):
                    row = gi * 8 + r
                    if row >= n_rows:
                        if not pack:
                            continue
                        row = n_rows - 1
                    po = row * row_bytes + b * type_size + off
                    for i in range(size // word):
                        g = go + (i * 8 + r) * word
                        p = po + i * word
                        for k in range(word):
                            if pack:
                                dst[g + k] = src[p + k]
                            else:
                                dst[p + k] = src[g + k]
                go += 8 * size


@njit(cache=True, parallel=True)
def _pack(plain, group, n_rows, row_bytes, type_size, fields):
    _move(plain, group, n_rows, row_bytes, type_size, fields, True)


@njit(cache=True, parallel=True)
def _unpack(group, plain, n_rows, row_bytes, type_size, fields):
    _move(group, plain, n_rows, row_bytes, type_size, fields, False)


def _fields(ggml_type) -> np.ndarray:
    return np.array(FIELDS[GGMLQuantizationType(ggml_type)], np.int64)


def pack(ggml_type, plain: np.ndarray, type_size: int) -> np.ndarray:
    """plain uint8 rows (n_rows, row_bytes) -> x8 groups ((n_rows + 7) // 8 * 8, row_bytes), read-only."""
    n_rows, row_bytes = plain.shape
    out = np.empty(((n_rows + 7) // 8 * 8, row_bytes), np.uint8)
    _pack(np.ascontiguousarray(plain).reshape(-1), out.reshape(-1), n_rows, row_bytes, type_size,
          _fields(ggml_type))  # fmt: skip
    out.flags.writeable = False
    return out


def unpack(ggml_type, group: np.ndarray, n_rows: int, type_size: int) -> np.ndarray:
    """x8 groups -> the file's rows (n_rows, row_bytes)."""
    row_bytes = group.shape[-1]
    out = np.empty((n_rows, row_bytes), np.uint8)
    _unpack(np.ascontiguousarray(group).reshape(-1), out.reshape(-1), n_rows, row_bytes, type_size,
          _fields(ggml_type))  # fmt: skip
    return out


# -- one group block (8 rows) against one token's activation block --------------------------------------
#
# w: the repacked weight's bytes, o: the group block's byte offset; yq: int8 activation quants, yo: this
# block's first quant; yd: scales, yb: the block's index in them (and in yqs: Q8_0 sums of quants); ybs:
# Q8_K sums of 16, bo: the block's first. Returns acc updated.


@njit(cache=True, inline="always")
def _blk_q4_0(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """Nibbles taken unsigned (0..15); the - 8 is 8 x the activation block's sum of quants."""
    s16 = i16x16_zero()  # 8 pair sums of <= 2 * 15 * 127 each: within int16
    for k in range(4):
        v = load_i8x32(w, o + 16 + 32 * k)
        s16 = i16x16_add(s16, dot_u8(i8x32_and(v, 0x0F), bcast4_i8x32(yq, yo + 4 * k)))
        s16 = i16x16_add(s16, dot_u8(i8x32_shr(v, 4), bcast4_i8x32(yq, yo + 16 + 4 * k)))
    sumi = i32x8_subs(madd_ones(s16), 8 * item(yqs, yb))
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), sumi, acc)


@njit(cache=True, inline="always")
def _blk_q8_0(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """|w| . (y with w's sign), pairs of int16 summed to int32 at once."""
    s32 = i32x8_zero()
    for k in range(8):
        v = load_i8x32(w, o + 16 + 32 * k)
        s32 = i32x8_add(s32, madd_ones(dot_u8(i8x32_abs(v), i8x32_sign(bcast4_i8x32(yq, yo + 4 * k), v))))
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), s32, acc)


@njit(cache=True, inline="always")
def _k_scales(w, o):
    """A Q4_K/Q5_K group block's eight rows' 6-bit scales and mins, a lane per row, four bytes a vector:
    scales 0..3, scales 4..7, mins 0..3, mins 4..7 (ggml's kmask shuffle)."""
    w0 = load_i32x8(w, o + 32)
    w1 = load_i32x8(w, o + 64)
    w2 = load_i32x8(w, o + 96)
    u0 = i32x8_and(w0, 0x3F3F3F3F)
    u2 = i32x8_and(w1, 0x3F3F3F3F)
    u1 = i32x8_or(i32x8_and(w2, 0x0F0F0F0F), i32x8_shl(i32x8_and(i32x8_shr(w0, 6), 0x03030303), 4))
    u3 = i32x8_or(i32x8_and(i32x8_shr(w2, 4), 0x0F0F0F0F), i32x8_shl(i32x8_and(i32x8_shr(w1, 6), 0x03030303), 4))
    return u0, u1, u2, u3


@njit(cache=True, inline="always")
def _k_word(five, w, o, qs, c, k, s):
    """Word k of sub-block s's quants (pair c of sub-blocks shares the bytes: low nibbles even s, high odd
    s), with Q5_K's fifth bit (bit s of qh) where five."""
    v = load_i8x32(w, o + qs + 32 * (8 * c + k))
    q = i8x32_shr(v, 4) if s % 2 else i8x32_and(v, 0x0F)
    if five:
        q = i8x32_or(q, i8x32_and(i8x32_shl(i8x32_shr(load_i8x32(w, o + 128 + 32 * k), s), 4), 0x10))
    return q


@njit(cache=True, inline="always")
def _blk_q45_k(five, w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """Q4_K (qs at 128) or, five, Q5_K (qh at 128, qs at 384: a fifth bit per quant, bit s of qh[l] for
    sub-block s). The eight rows' 6-bit scales and mins unpacked together (a lane per row; ggml's kmask
    shuffle), each scale applied as an int16 pair in the pmaddwd that widens a sub-block's pair sums."""
    qs = 384 if five else 128
    per = 4 if five else 8  # pair sums per int16 accumulator: <= 2 * 31 * 127 (five) or 2 * 15 * 127 each
    u0, u1, u2, u3 = _k_scales(w, o)
    isum = i32x8_zero()
    for s in range(8):
        c = s // 2
        sc = i32x8_dup_byte(u0 if s < 4 else u1, s & 3)
        for k0 in range(0, 8, per):
            s16 = i16x16_zero()
            for k in range(k0, k0 + per):
                q = _k_word(five, w, o, qs, c, k, s)
                s16 = i16x16_add(s16, dot_u8(q, bcast4_i8x32(yq, yo + 32 * s + 4 * k)))
            isum = i32x8_add(isum, madd_i16(s16, sc))
    return _k_mins(u2, u3, ybs, bo, f16x8_at(w, o), f16x8_at(w, o + 16), item(yd, yb), isum, acc)


@njit(cache=True, inline="always")
def _dot4(q, yq, y, nc, s0, s1, s2, s3):
    """One word of eight rows' quants (unsigned) against the same 4 activation quants of four tokens (at y,
    y + nc, ...), added to their int16 pair sums."""
    s0 = i16x16_add(s0, dot_u8(q, bcast4_i8x32(yq, y)))
    s1 = i16x16_add(s1, dot_u8(q, bcast4_i8x32(yq, y + nc)))
    s2 = i16x16_add(s2, dot_u8(q, bcast4_i8x32(yq, y + 2 * nc)))
    s3 = i16x16_add(s3, dot_u8(q, bcast4_i8x32(yq, y + 3 * nc)))
    return s0, s1, s2, s3


@njit(cache=True, inline="always")
def _scale4(sc, s0, s1, s2, s3, i0, i1, i2, i3):
    """Four tokens' int16 pair sums widened with the rows' int16 scale pairs, added to their int32 sums."""
    return (i32x8_add(i0, madd_i16(s0, sc)), i32x8_add(i1, madd_i16(s1, sc)),
            i32x8_add(i2, madd_i16(s2, sc)), i32x8_add(i3, madd_i16(s3, sc)))  # fmt: skip


@njit(cache=True, inline="always")
def _blk4_q45_k(five, w, o, yq, yo, nc, yd, ybs, bo, nbs, yb, nb, a0, a1, a2, a3):
    """_blk_q45_k for four tokens (yo, bo, yb for the first; the next ones nc, nbs, nb further on), each
    32-byte word of quants loaded and decoded once for the four. The same sums in the same order as four
    _blk_q45_k calls (LLVM does not fuse four calls' loops over the sub-blocks by itself: each re-decoded
    the weights)."""
    qs = 384 if five else 128
    per = 4 if five else 8
    u0, u1, u2, u3 = _k_scales(w, o)
    i0 = i1 = i2 = i3 = i32x8_zero()
    for s in range(8):
        c = s // 2
        sc = i32x8_dup_byte(u0 if s < 4 else u1, s & 3)
        for k0 in range(0, 8, per):
            s0 = s1 = s2 = s3 = i16x16_zero()
            for k in range(k0, k0 + per):
                q = _k_word(five, w, o, qs, c, k, s)
                s0, s1, s2, s3 = _dot4(q, yq, yo + 32 * s + 4 * k, nc, s0, s1, s2, s3)
            i0, i1, i2, i3 = _scale4(sc, s0, s1, s2, s3, i0, i1, i2, i3)
    d = f16x8_at(w, o)
    dm = f16x8_at(w, o + 16)
    a0 = _k_mins(u2, u3, ybs, bo, d, dm, item(yd, yb), i0, a0)
    a1 = _k_mins(u2, u3, ybs, bo + nbs, d, dm, item(yd, yb + nb), i1, a1)
    a2 = _k_mins(u2, u3, ybs, bo + 2 * nbs, d, dm, item(yd, yb + 2 * nb), i2, a2)
    a3 = _k_mins(u2, u3, ybs, bo + 3 * nbs, d, dm, item(yd, yb + 3 * nb), i3, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _k_mins(u2, u3, ybs, bo, d, dm, dy, isum, acc):
    """One token's end of a Q4_K/Q5_K block: the mins' sum (the rows' mins, u2/u3, times the token's sums
    of 16 quants), then isum's fma and the mins' fnma."""
    msum = i32x8_zero()
    for p in range(8):
        m = i32x8_dup_byte(u2 if p < 4 else u3, p & 3)
        msum = i32x8_add(msum, madd_i16(m, bcast2_i16x16(ybs, bo + 2 * p)))
    acc = fma_exact_i32x8(f32x8_mul_scalar(d, dy), isum, acc)
    return fnma_exact_i32x8(f32x8_mul_scalar(dm, dy), msum, acc)


@njit(cache=True, inline="always")
def _blk4_q4_k(blk, w, o, yq, yo, nc, yd, yqs, ybs, bo, nbs, yb, nb, a0, a1, a2, a3):
    return _blk4_q45_k(False, w, o, yq, yo, nc, yd, ybs, bo, nbs, yb, nb, a0, a1, a2, a3)


@njit(cache=True, inline="always")
def _blk4_q5_k(blk, w, o, yq, yo, nc, yd, yqs, ybs, bo, nbs, yb, nb, a0, a1, a2, a3):
    return _blk4_q45_k(True, w, o, yq, yo, nc, yd, ybs, bo, nbs, yb, nb, a0, a1, a2, a3)


@njit(cache=True, inline="always")
def _each4(blk, w, o, yq, yo, nc, yd, yqs, ybs, bo, nbs, yb, nb, a0, a1, a2, a3):
    """Four tokens as four calls of the format's block function (LLVM shares the weight loads between
    them where it unrolls the block's loops)."""
    a0 = blk(w, o, yq, yo, yd, yqs, ybs, bo, yb, a0)
    a1 = blk(w, o, yq, yo + nc, yd, yqs, ybs, bo + nbs, yb + nb, a1)
    a2 = blk(w, o, yq, yo + 2 * nc, yd, yqs, ybs, bo + 2 * nbs, yb + 2 * nb, a2)
    a3 = blk(w, o, yq, yo + 3 * nc, yd, yqs, ybs, bo + 3 * nbs, yb + 3 * nb, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _blk_q4_k(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    return _blk_q45_k(False, w, o, yq, yo, yd, yqs, ybs, bo, yb, acc)


@njit(cache=True, inline="always")
def _blk_q5_k(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    return _blk_q45_k(True, w, o, yq, yo, yd, yqs, ybs, bo, yb, acc)


@njit(cache=True, inline="always")
def _q6_word(w, o, n, qd, e, kk):
    """Word kk of half e of a Q6_K 32-value pair of sub-blocks (n: which 128 values, qd: which quarter of
    them): the low four bits from ql, the high two from qh, 0..63."""
    lq = load_i8x32(w, o + 144 + 32 * (16 * n + 8 * (qd & 1) + 4 * e + kk))
    hq = load_i8x32(w, o + 1168 + 32 * (8 * n + 4 * e + kk))
    lo = i8x32_and(lq, 0x0F) if qd < 2 else i8x32_shr(lq, 4)
    hs = i8x32_shl(hq, 4 - 2 * qd) if qd < 2 else i8x32_shr(hq, 2 * qd - 4)
    return i8x32_or(lo, i8x32_and(hs, 0x30))


@njit(cache=True, inline="always")
def _blk_q6_k(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """Quants 0..63 (the - 32 is 32 x the sum of scale x bsum), int8 scales per 16 values."""
    isum = i32x8_zero()
    for p in range(8):  # sub-blocks 2p, 2p + 1: values 32p .. 32p + 31
        n = p // 4
        qd = p % 4
        scp = load_i8x16_i16(w, o + 16 + 16 * p)  # lane r: row r's (sc[2p], sc[2p + 1])
        isum = i32x8_subs(isum, i32x8_shl(madd_i16(scp, bcast2_i16x16(ybs, bo + 2 * p)), 5))
        for e in range(2):
            sc = i16x16_dup_pairs(scp, e)
            for kp in range(0, 4, 2):
                s16 = i16x16_zero()  # two pair sums of <= 2 * 63 * 127 each: within int16
                for u in range(2):
                    kk = kp + u
                    q = _q6_word(w, o, n, qd, e, kk)
                    s16 = i16x16_add(s16, dot_u8(q, bcast4_i8x32(yq, yo + 32 * p + 16 * e + 4 * kk)))
                isum = i32x8_add(isum, madd_i16(s16, sc))
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), isum, acc)


@njit(cache=True, inline="always")
def _blk4_q6_k(blk, w, o, yq, yo, nc, yd, yqs, ybs, bo, nbs, yb, nb, a0, a1, a2, a3):
    """_blk_q6_k for four tokens, each word of quants decoded once for the four (as _blk4_q45_k)."""
    i0 = i1 = i2 = i3 = i32x8_zero()
    for p in range(8):
        n = p // 4
        qd = p % 4
        scp = load_i8x16_i16(w, o + 16 + 16 * p)
        i0 = i32x8_subs(i0, i32x8_shl(madd_i16(scp, bcast2_i16x16(ybs, bo + 2 * p)), 5))
        i1 = i32x8_subs(i1, i32x8_shl(madd_i16(scp, bcast2_i16x16(ybs, bo + nbs + 2 * p)), 5))
        i2 = i32x8_subs(i2, i32x8_shl(madd_i16(scp, bcast2_i16x16(ybs, bo + 2 * nbs + 2 * p)), 5))
        i3 = i32x8_subs(i3, i32x8_shl(madd_i16(scp, bcast2_i16x16(ybs, bo + 3 * nbs + 2 * p)), 5))
        for e in range(2):
            sc = i16x16_dup_pairs(scp, e)
            for kp in range(0, 4, 2):
                s0 = s1 = s2 = s3 = i16x16_zero()
                for u in range(2):
                    kk = kp + u
                    q = _q6_word(w, o, n, qd, e, kk)
                    s0, s1, s2, s3 = _dot4(q, yq, yo + 32 * p + 16 * e + 4 * kk, nc, s0, s1, s2, s3)
                i0, i1, i2, i3 = _scale4(sc, s0, s1, s2, s3, i0, i1, i2, i3)
    d = f16x8_at(w, o)
    a0 = fma_exact_i32x8(f32x8_mul_scalar(d, item(yd, yb)), i0, a0)
    a1 = fma_exact_i32x8(f32x8_mul_scalar(d, item(yd, yb + nb)), i1, a1)
    a2 = fma_exact_i32x8(f32x8_mul_scalar(d, item(yd, yb + 2 * nb)), i2, a2)
    a3 = fma_exact_i32x8(f32x8_mul_scalar(d, item(yd, yb + 3 * nb)), i3, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _blk_q5_0(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """Quants 0..31 (the - 16 is 16 x the activation block's sum of quants); the eight rows' fifth bits are
    one vector (lane r: row r's 32-bit qh), spread to the bytes of each word of quants."""
    qh = load_i32x8(w, o + 16)
    s16l = i16x16_zero()  # 4 pair sums of <= 2 * 31 * 127 each: within int16
    s16h = i16x16_zero()
    for k in range(4):
        v = load_i8x32(w, o + 48 + 32 * k)
        lo = i8x32_or(i8x32_and(v, 0x0F), nibble_bits_i8x32(i32x8_shr(qh, 4 * k), 0x10))
        hi = i8x32_or(i8x32_shr(v, 4), nibble_bits_i8x32(i32x8_shr(qh, 16 + 4 * k), 0x10))
        s16l = i16x16_add(s16l, dot_u8(lo, bcast4_i8x32(yq, yo + 4 * k)))
        s16h = i16x16_add(s16h, dot_u8(hi, bcast4_i8x32(yq, yo + 16 + 4 * k)))
    sumi = i32x8_subs(i32x8_add(madd_ones(s16l), madd_ones(s16h)), 16 * item(yqs, yb))
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), sumi, acc)


@njit(cache=True, inline="always")
def _iq4_dot(w, o, yq, yo):
    """Eight rows' 32 IQ4 nibbles (four words at o) through the code book, dotted with 32 activation
    quants as Q8_0 is: |w| . (y with w's sign), exact int32 per row."""
    s32 = i32x8_zero()
    for k in range(4):
        v = load_i8x32(w, o + 32 * k)
        for h in range(2):
            q = kvalues_iq4nl_i8x32(i8x32_shr(v, 4) if h else i8x32_and(v, 0x0F))
            s = i8x32_sign(bcast4_i8x32(yq, yo + 16 * h + 4 * k), q)
            s32 = i32x8_add(s32, madd_ones(dot_u8(i8x32_abs(q), s)))
    return s32


@njit(cache=True, inline="always")
def _blk_iq4_nl(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), _iq4_dot(w, o + 16, yq, yo), acc)


@njit(cache=True, inline="always")
def _blk_iq4_xs(w, o, yq, yo, yd, yqs, ybs, bo, yb, acc):
    """IQ4_NL's values, a 6-bit scale (minus 32) per 32: the eight rows' scales unpacked together."""
    sh = load_u16x8_i32(w, o + 16)
    sl = load_i32x8(w, o + 32)
    isum = i32x8_zero()
    for ib in range(8):
        ls = i32x8_or(i32x8_and(i32x8_shr(sl, 4 * ib), 0x0F), i32x8_shl(i32x8_and(i32x8_shr(sh, 2 * ib), 3), 4))
        isum = i32x8_add(isum, i32x8_mul(_iq4_dot(w, o + 64 + 128 * ib, yq, yo + 32 * ib), i32x8_subs(ls, 32)))
    return fma_exact_i32x8(f32x8_mul_scalar(f16x8_at(w, o), item(yd, yb)), isum, acc)


# -- drivers -------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _store(of, n_rows, t, r, nr, acc):
    if nr == 8:
        store_f32x8(of, t * n_rows + r, acc)
    else:
        for i in range(nr):
            of[t * n_rows + r + i] = f32x8_lane(acc, i)


@njit(cache=True, inline="always")
def _prefetch(w, o, n):
    """The cache lines of w[o : o + n]."""
    for line in range(o & ~63, o + n, 64):
        prefetch(w, line)


@njit(cache=True, inline="always")
def _tile4(blk, blk4, gb, bs, w, g, nb, nc, yq, yd, yqs, ybs, t, of, n_rows, r, nr, pf):
    """Group g (8 rows from row r, nr of them real) x tokens t..t+3; weights prefetched pf bytes ahead
    (pf > 0: few tokens, the weights stream from memory)."""
    a0 = a1 = a2 = a3 = f32x8_zero()
    nbs = nc // 16
    for b in range(nb):
        o = g + gb * b
        if pf:
            _prefetch(w, o + pf, gb)
        yb = t * nb + b
        yo = t * nc + bs * b
        bo = t * nbs + (bs // 16) * b
        a0, a1, a2, a3 = blk4(blk, w, o, yq, yo, nc, yd, yqs, ybs, bo, nbs, yb, nb, a0, a1, a2, a3)
    _store(of, n_rows, t, r, nr, a0)
    _store(of, n_rows, t + 1, r, nr, a1)
    _store(of, n_rows, t + 2, r, nr, a2)
    _store(of, n_rows, t + 3, r, nr, a3)


@njit(cache=True, inline="always")
def _tile1(blk, gb, bs, w, g, nb, nc, yq, yd, yqs, ybs, t, of, n_rows, r, nr, pf):
    acc = f32x8_zero()
    nbs = nc // 16
    for b in range(nb):
        if pf:
            _prefetch(w, g + gb * b + pf, gb)
        acc = blk(w, g + gb * b, yq, t * nc + bs * b, yd, yqs, ybs, t * nbs + (bs // 16) * b, t * nb + b, acc)
    _store(of, n_rows, t, r, nr, acc)


PREFETCH_BYTES = 2048  # how far ahead a decode (<= PREFETCH_MAX_TOKENS tokens) prefetches weights
PREFETCH_MAX_TOKENS = 16
TOKEN_BLOCK_BYTES = 128 * 1024  # activation quants of one token block: they stay in L2 across a row chunk


@njit(cache=True, inline="always")
def rows(blk, blk4, gb, bs, w, g0, g1, nc, yq, yd, yqs, ybs, of, n_tokens, n_rows):
    """Groups g0..g1-1 x every token: token blocks (their quants stay in L2) x groups x tiles of 4
    tokens, then single tokens (the same sums: a token's result does not depend on its tile)."""
    nb = nc // bs
    row_bytes = nb * gb // 8
    tb = max(4, (TOKEN_BLOCK_BYTES // max(nc, 1)) & ~3)
    pf = PREFETCH_BYTES if n_tokens <= PREFETCH_MAX_TOKENS else 0
    for t0 in range(0, n_tokens, tb):
        t1 = min(n_tokens, t0 + tb)
        for gi in range(g0, g1):
            r = 8 * gi
            nr = min(8, n_rows - r)
            g = r * row_bytes
            t = t0
            while t + 4 <= t1:
                _tile4(blk, blk4, gb, bs, w, g, nb, nc, yq, yd, yqs, ybs, t, of, n_rows, r, nr, pf)
                t += 4
            while t < t1:
                _tile1(blk, gb, bs, w, g, nb, nc, yq, yd, yqs, ybs, t, of, n_rows, r, nr, pf)
                t += 1


# Workers of a product's parallel loop: OpenMP hands each thread a static share of them, and each worker
# takes chunks from the counter until none is left, so the first worker of each thread does the work
# and the others return at once (numba.get_num_threads() inside the kernel would keep it out of the cache)
MAX_WORKERS = 1024
MIN_CHUNKS = 32  # group chunks per matmul at least (the threads take them in turn)
CHUNK_BYTES = 64 * 1024  # weight bytes per chunk at most (a prefill re-reads them per token block, from L2)


@njit(cache=True, inline="always")
def group_chunks(n_rows, row_bytes):
    """(groups, groups per chunk) of an x8 product: chunks of at most CHUNK_BYTES, MIN_CHUNKS at least."""
    n_groups = (n_rows + 7) // 8
    return n_groups, max(1, min(CHUNK_BYTES // (8 * row_bytes), (n_groups + MIN_CHUNKS - 1) // MIN_CHUNKS))


@njit(cache=True, inline="always")
def run(chunk_fn, n_units, per, w, nc, yq, yd, ys, ybs, yf, yqs, out):
    """The parallel loop of every product (plain rows or x8 groups): out (n_tokens, n_rows) is written by
    chunk_fn(w, u0, u1, nc, yq, yd, ys, ybs, yf, yqs, of, n_tokens, n_rows) for units (rows or groups)
    u0..u1-1, chunks of `per` units that the threads take from an atomic counter (as the native pool does),
    so that a thread the OS holds back does not hold the others up: the running threads take its share
    (OpenMP's static split would wait for it)."""
    n_tokens, n_rows = out.shape
    of = out.reshape(-1)
    n_chunks = (n_units + per - 1) // per
    next_chunk = np.empty(1, np.int64)  # (np.zeros here: a parfor that the parallel loop's lowering mishandles)
    next_chunk[0] = 0
    for worker in prange(min(n_chunks, MAX_WORKERS)):
        slot = worker - worker  # 0, but of the loop: Numba would hoist a call with loop-invariant arguments
        # all taken: the thread's remaining workers leave on a plain read (an atomic add each would bounce
        # the counter's cache line between the cores, ~100 times per product)
        if next_chunk[slot] < n_chunks:
            c = atomic_add(next_chunk, slot, 1)
            while c < n_chunks:
                u0 = c * per
                chunk_fn(w, u0, min(u0 + per, n_units), nc, yq, yd, ys, ybs, yf, yqs, of, n_tokens, n_rows)
                c = atomic_add(next_chunk, slot, 1)
