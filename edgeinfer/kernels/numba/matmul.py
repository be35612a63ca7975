"""Quantized matrix products y = x @ W.T on the CPU, the way llama.cpp computes them.

For each matmul the activations x (n_tokens, n_cols) are quantized once to 8 bits, in the format ggml
pairs with the weight type (its `vec_dot_type`):

    Q8_0  blocks of 32: int8 quants, fp16 scale          for Q4_0, Q5_0, Q8_0, IQ4_NL
    Q8_1  as Q8_0 plus s = fp16(d * sum of the quants)   for Q4_1, Q5_1 (the min term m * s)
    Q8_K  blocks of 256: int8, float32 scale, sums of 16 for Q2_K .. Q6_K, IQ4_XS (the min / offset terms)
    F16 / BF16 (x rounded), F32 (x as is)                for F16, BF16, F32 weights

and every output is a sum over blocks of (integer dot product of weight and activation quants, in
int32) times the float scales, as ggml's `ggml_vec_dot_<type>_q8_<k>` does (ggml-cpu/quants.c). The
activation quantizers match ggml's `quantize_row_q8_0_ref` / `_q8_1_ref` / `_q8_K_ref` bit for bit.
Weights are never expanded: each block is decoded in registers (edgeinfer.kernels.numba.simd), and in
a prefill (n_tokens > 1) once per tile of 4 tokens. Float rounding differs from ggml's scalar code only
in summation order (8 float lanes, as ggml's AVX2 code).

Rows are cut into chunks that the threads share (`prange`, OpenMP threading layer); one matmul is one
compiled call: quantize x into buffers allocated once (in parallel from 8 tokens up), then one parallel
region over the rows.

Kernels, per weight type: `_dot_<type>(w, wo, nb, yq, yd, ys, ybs, yf, t)` is the row at byte wo of
the flat weight bytes w (nb blocks) dotted with token t of the quantized activations; `_dot4_<type>`
does tokens t..t+3 from one decode of the row, with the same sums in the same order (a token's result
does not depend on the batch it came in). `_rows_<type>` / `_rows4_<type>` run them over a chunk of
rows, one compiled function per type. Numba's cache is stamped with the helper modules each file imports
(cachestamp.py): an edit of simd.py or x8.py compiles their dependents again.
"""

from __future__ import annotations

import os
import warnings
import weakref

import numba
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from ...errors import UnsupportedTypeError
from ...quant import get_format
from ...system import cpu_pressure
from ..base import QTensor
from . import dequant, x8
from .simd import (
    address,
    bf16_at,
    bf16x8_at,
    bits_i8x32,
    byte_bits_i8x32,
    dot_i8,
    dot_u8,
    f16_at,
    f16_round,
    f16_scale8,
    f16x8_at,
    f16x8_words,
    f32_at,
    f32_bits,
    f32_from_bits,
    f32x8_add,
    f32x8_at,
    f32x8_head,
    f32x8_zero,
    fma_f32x8,
    fma_i32x8,
    hsum_f32x8,
    i8x32_and,
    i8x32_or,
    i8x32_shl,
    i8x32_shr,
    i8x32_sub,
    i16x16_u8,
    i16x16_word_pairs,
    i16x16_words,
    i32x8_add,
    i32x8_shl,
    i32x8_sub,
    i32x8_zero,
    item,
    kvalues_iq4nl_i8x32,
    load_f32x8,
    load_i8x16_i16,
    load_i8x32,
    load_i16x16,
    madd_i16,
    madd_ones,
    madd_scale,
    madd_scales2,
    nibbles_i8x32,
    u16_at,
    u32_at,
)

QK = 32  # values per block of the legacy formats, IQ4_NL, Q8_0 and Q8_1
QK_K = 256  # values per K-quant super-block and Q8_K block
PARALLEL_QUANTIZE_MIN_TOKENS = 8  # below this, x is quantized by one thread (a parallel region costs more)
MIN_CHUNKS = 32  # row chunks per matmul at least (threads take equal shares of them)


# -- threading -----------------------------------------------------------------------------------------


# How long an idle OpenMP thread spins before it sleeps (libgomp's GOMP_SPINCOUNT, in pause loops: ~1000
# is 20-40 us here), chosen when the pool starts. libgomp's default, 300000 (milliseconds), keeps the
# workers spinning through all the Python between two products: on a machine that is also running other
# jobs, a spinning worker uses up its CPU share and the OS then sets it aside just when the next parallel
# region needs it (a 1B decode 3-8x slower at load 6 on 2 cores); SPIN_BUSY sleeps between tokens and
# catches the next product of a layer only if it comes quickly. On a quiet machine sleeping costs a wake-up
# per region (~1 ms per 1B decode token): SPIN_QUIET bridges the gaps between the products of a token.
# Busy: CPU pressure (some task waiting for a CPU, /proc/pressure/cpu, last 10 s) of BUSY_PRESSURE or more,
# or no pressure figure. The user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
SPIN_QUIET, SPIN_BUSY = "20000", "1000"
BUSY_PRESSURE = 0.1


def spin_count(pressure: float | None) -> str:
    """GOMP_SPINCOUNT for the pool, from the CPU pressure when it starts (system.cpu_pressure())."""
    return SPIN_QUIET if pressure is not None and pressure < BUSY_PRESSURE else SPIN_BUSY


def _launch(parallel) -> None:
    """Start Numba's threads, libgomp (loaded and configured here, from the environment) spinning
    spin_count() loops unless the user set its wait policy; the environment is left as it was."""
    own = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if own:
        os.environ["GOMP_SPINCOUNT"] = spin_count(cpu_pressure())
    try:
        parallel._launch_threads()
    finally:
        if own:
            del os.environ["GOMP_SPINCOUNT"]


def _init_threading() -> str:
    """Choose the OpenMP threading layer before the first parallel region (about 2 us to start a region,
    against 155 us for workqueue); fall back to tbb, then workqueue, with a warning."""
    from numba.np.ufunc import parallel

    if not parallel._is_initialized:  # else someone launched parallel code first: keep what they got
        for layer in ("omp", "tbb", "workqueue"):
            numba.config.THREADING_LAYER = layer
            try:
                _launch(parallel)
            except (ValueError, ImportError, OSError):
                continue
            break
    got = numba.threading_layer()
    if got != "omp":
        warnings.warn(
            f"Numba runs its threads on the {got!r} threading layer, whose parallel regions start far "
            "slower than OpenMP's; install an OpenMP runtime (libgomp or libomp) for full speed.",
            RuntimeWarning,
            stacklevel=2,
        )
    return got


THREADING_LAYER = _init_threading()


# -- activation quantizers (one token row each) --------------------------------------------------------


@njit(cache=True)
def _roundf(v):
    """C's roundf (halves away from zero); exact in float64 for any float32 v."""
    v = np.float64(v)
    return np.int64(np.trunc(v + np.copysign(0.5, v)))


@njit(cache=True)
def _quantize_row_q8_0(x, t, yq, yd, ys, yqs, with_sum):
    """quantize_row_q8_0_ref (with_sum: quantize_row_q8_1_ref) of x[t] into yq[t * n_cols :], yd, ys;
    yqs: each block's sum of quants (x8 Q4_0 weights)."""
    n_cols = x.shape[1]
    nb = n_cols // QK
    for b in range(nb):
        i0 = b * QK
        amax = np.float32(0)
        for j in range(QK):
            amax = max(amax, abs(x[t, i0 + j]))
        d = amax / np.float32(127)
        inv_d = np.float32(1) / d if d != 0 else np.float32(0)
        s = 0
        for j in range(QK):
            q = _roundf(x[t, i0 + j] * inv_d)
            yq[t * n_cols + i0 + j] = q
            s += q
        yd[t * nb + b] = f16_round(d)
        yqs[t * nb + b] = s
        if with_sum:
            ys[t * nb + b] = f16_round(np.float32(s) * d)


@njit(cache=True)
def _quantize_row_q8_k(x, t, yq, yd, ybs):
    """quantize_row_q8_K_ref of x[t]: yd = 1 / iscale, yq = min(127, rint(iscale * x)), ybs = sums of 16."""
    n_cols = x.shape[1]
    nb = n_cols // QK_K
    for b in range(nb):
        i0 = b * QK_K
        amax = np.float32(0)
        vmax = np.float32(0)
        for j in range(QK_K):
            v = x[t, i0 + j]
            if abs(v) > amax:
                amax = abs(v)
                vmax = v
        o = t * n_cols + i0
        if amax == 0:
            yd[t * nb + b] = 0
            yq[o : o + QK_K] = 0
            ybs[(t * nb + b) * 16 : (t * nb + b + 1) * 16] = 0
            continue
        iscale = np.float32(-127) / vmax
        for j in range(QK_K):
            yq[o + j] = min(127, np.int64(np.rint(iscale * x[t, i0 + j])))
        for g in range(16):
            s = 0
            for j in range(16):
                s += yq[o + 16 * g + j]
            ybs[(t * nb + b) * 16 + g] = s
        yd[t * nb + b] = np.float32(1) / iscale


@njit(cache=True)
def _round_row_f16(x, t, yf):
    n_cols = x.shape[1]
    for j in range(n_cols):
        yf[t * n_cols + j] = f16_round(x[t, j])


@njit(cache=True)
def _round_row_bf16(x, t, yf):
    """ggml_compute_fp32_to_bf16 and back: NaN made quiet, otherwise rounded to nearest even."""
    n_cols = x.shape[1]
    for j in range(n_cols):
        u = f32_bits(x[t, j])
        if (u & 0x7FFFFFFF) > 0x7F800000:
            h = (u >> 16) | 64
        else:
            h = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        yf[t * n_cols + j] = f32_from_bits(h << 16)


ACT_Q8_0, ACT_Q8_1, ACT_Q8_K, ACT_F32, ACT_F16, ACT_BF16 = range(6)


@njit(cache=True)
def _empty_aligned(n_bytes):
    """n_bytes uninitialized bytes starting on a cache line (malloc promises 16 bytes: 32-byte vector
    loads from such a buffer can straddle two lines)."""
    buf = np.empty(n_bytes + 64, np.uint8)
    start = (-address(buf)) % 64
    return buf[start : start + n_bytes]


@njit(cache=True, inline="always")
def _quantize_activations(x, kind):
    """x float32 (n_tokens, n_cols) -> (yq, yd, ys, ybs, yf), flat per token:
    yq int8 (n_tokens * n_cols,)          8-bit quants (Q8_0 / Q8_1 / Q8_K)
    yd float32 (n_tokens * n_blocks,)     block scales (fp16-rounded for Q8_0 / Q8_1)
    ys float32 (n_tokens * n_blocks + 8,) Q8_1: fp16(d * sum of the block's quants), then 8 zeros
    ybs int16 (n_tokens * n_cols / 16,)   Q8_K: sums of 16 quants
    yf float32 (n_tokens * n_cols,)       F32 / F16 / BF16 weights: x, rounded as ggml converts it
    yqs int32 (n_tokens * n_blocks,)      Q8_0 / Q8_1: each block's sum of quants
    Arrays a kind does not use are empty."""
    n_tokens, n_cols = x.shape
    is_q8 = kind == ACT_Q8_0 or kind == ACT_Q8_1 or kind == ACT_Q8_K
    is_float = kind == ACT_F32 or kind == ACT_F16 or kind == ACT_BF16
    nb = n_cols // (QK_K if kind == ACT_Q8_K else QK) if is_q8 else 0
    yq = _empty_aligned(n_tokens * n_cols if is_q8 else 0).view(np.int8)
    yd = np.empty(n_tokens * nb, np.float32)
    ys = np.zeros(n_tokens * nb + 8 if kind == ACT_Q8_1 else 0, np.float32)  # + 8: see _min_sum
    ybs = _empty_aligned(2 * (n_tokens * n_cols // 16) if kind == ACT_Q8_K else 0).view(np.int16)
    yf = _empty_aligned(4 * n_tokens * n_cols if is_float else 0).view(np.float32)
    yqs = np.empty(n_tokens * nb if kind == ACT_Q8_0 or kind == ACT_Q8_1 else 0, np.int32)
    if n_tokens >= PARALLEL_QUANTIZE_MIN_TOKENS:
        for t in prange(n_tokens):
            _quantize_row(x, t, kind, yq, yd, ys, ybs, yf, yqs)
    else:
        for t in range(n_tokens):
            _quantize_row(x, t, kind, yq, yd, ys, ybs, yf, yqs)
    return yq, yd, ys, ybs, yf, yqs


@njit(cache=True)
def _quantize_row(x, t, kind, yq, yd, ys, ybs, yf, yqs):
    if kind == ACT_Q8_0 or kind == ACT_Q8_1:
        _quantize_row_q8_0(x, t, yq, yd, ys, yqs, kind == ACT_Q8_1)
    elif kind == ACT_Q8_K:
        _quantize_row_q8_k(x, t, yq, yd, ybs)
    elif kind == ACT_F16:
        _round_row_f16(x, t, yf)
    elif kind == ACT_BF16:
        _round_row_bf16(x, t, yf)
    else:
        n_cols = x.shape[1]
        yf[t * n_cols : (t + 1) * n_cols] = x[t]


# -- legacy formats: blocks of 32 against Q8_0 / Q8_1 --------------------------------------------------


@njit(cache=True)
def _x_q4_0(w, o):
    """block_q4_0 (d fp16 | qs[16]) at o -> 32 int8 quants, nibble - 8."""
    return i8x32_sub(nibbles_i8x32(w, o + 2), 8)


@njit(cache=True)
def _x_q5_0(w, o):
    """block_q5_0 (d | qh u32 | qs[16]) -> 32 int8 quants q - 16: a clear fifth bit leaves the nibble
    | 0xF0, which is nibble - 16 as int8."""
    return i8x32_or(nibbles_i8x32(w, o + 6), bits_i8x32(u32_at(w, o + 2), 0, 0xF0))


@njit(cache=True)
def _x_q8_0(w, o):
    """block_q8_0 (d | qs int8[32])."""
    return load_i8x32(w, o + 2)


@njit(cache=True)
def _x_iq4_nl(w, o):
    """block_iq4_nl (d | qs[16]) -> kvalues_iq4nl[nibble]."""
    return kvalues_iq4nl_i8x32(nibbles_i8x32(w, o + 2))


@njit(cache=True, inline="always")
def _acc_block(x, signed, w, o, yq, yd, i, acc):
    """acc + d_x d_y * (the 32 quants x of the block at o) . (Q8_0 / Q8_1 block i), the integer dot in
    int32 lanes: ggml_vec_dot_q4_0_q8_0's step. x signed, or unsigned (0..127) when `signed` is False."""
    y = load_i8x32(yq, QK * i)
    p = madd_ones(dot_i8(x, y) if signed else dot_u8(x, y))
    return fma_i32x8(p, f16_scale8(w, o, item(yd, i)), acc)


@njit(cache=True, inline="always")
def _block(decode, signed, type_size, w, wo, nb, yq, yd, t, b, acc):
    o = wo + type_size * b
    return _acc_block(decode(w, o), signed, w, o, yq, yd, t * nb + b, acc)


@njit(cache=True, inline="always")
def _block4(decode, signed, type_size, w, wo, nb, yq, yd, t, b, a0, a1, a2, a3):
    """Block b against tokens t..t+3: one decode, four dots."""
    o = wo + type_size * b
    x = decode(w, o)
    i = t * nb + b
    a0 = _acc_block(x, signed, w, o, yq, yd, i, a0)
    a1 = _acc_block(x, signed, w, o, yq, yd, i + nb, a1)
    a2 = _acc_block(x, signed, w, o, yq, yd, i + 2 * nb, a2)
    a3 = _acc_block(x, signed, w, o, yq, yd, i + 3 * nb, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _dot_legacy(decode, signed, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t):
    """The d_x d_y sumi part of a row of blocks of 32 (d fp16 at byte 0) against token t. Even and odd
    blocks go to two accumulators (with one, each block would wait for the previous block's fma)."""
    even = odd = f32x8_zero()
    for b in range(0, nb - 1, 2):
        even = _block(decode, signed, type_size, w, wo, nb, yq, yd, t, b, even)
        odd = _block(decode, signed, type_size, w, wo, nb, yq, yd, t, b + 1, odd)
    if nb % 2:
        even = _block(decode, signed, type_size, w, wo, nb, yq, yd, t, nb - 1, even)
    return hsum_f32x8(f32x8_add(even, odd))


@njit(cache=True, inline="always")
def _dot4_legacy(decode, signed, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t):
    """_dot_legacy for tokens t..t+3, each weight block decoded once. The same sums in the same order as
    _dot_legacy: a token's result does not depend on whether it came in a tile (prefill == decode)."""
    e0 = e1 = e2 = e3 = f32x8_zero()  # even blocks
    o0 = o1 = o2 = o3 = f32x8_zero()  # odd blocks
    for b in range(0, nb - 1, 2):
        e0, e1, e2, e3 = _block4(decode, signed, type_size, w, wo, nb, yq, yd, t, b, e0, e1, e2, e3)
        o0, o1, o2, o3 = _block4(decode, signed, type_size, w, wo, nb, yq, yd, t, b + 1, o0, o1, o2, o3)
    if nb % 2:
        e0, e1, e2, e3 = _block4(decode, signed, type_size, w, wo, nb, yq, yd, t, nb - 1, e0, e1, e2, e3)
    return (
        hsum_f32x8(f32x8_add(e0, o0)),
        hsum_f32x8(f32x8_add(e1, o1)),
        hsum_f32x8(f32x8_add(e2, o2)),
        hsum_f32x8(f32x8_add(e3, o3)),
    )


@njit(cache=True, inline="always")
def _mins8(w, o, type_size, n):
    """The fp16 mins m (byte 2 of each block) of the n <= 8 blocks from o as 8 float32 (lanes past n
    repeat the last block: mask them). Gathered in integer registers and converted together: per block,
    the vector units are busy enough."""
    o += 2
    last = n - 1
    lo = (
        u16_at(w, o)
        | (u16_at(w, o + type_size * min(1, last)) << 16)
        | (u16_at(w, o + type_size * min(2, last)) << 32)
        | (u16_at(w, o + type_size * min(3, last)) << 48)
    )
    hi = (
        u16_at(w, o + type_size * min(4, last))
        | (u16_at(w, o + type_size * min(5, last)) << 16)
        | (u16_at(w, o + type_size * min(6, last)) << 32)
        | (u16_at(w, o + type_size * min(7, last)) << 48)
    )
    return f16x8_words(lo, hi)


@njit(cache=True, inline="always")
def _min_sum(w, wo, type_size, nb, ys, i):
    """Q4_1 / Q5_1: sum over a row's blocks b of m_b s_b (s: Q8_1 block sums from ys[i]), block b in
    float lane b % 8. (ys has 8 zeros past its end: the last token's loads stay finite.)"""
    acc = f32x8_zero()
    for b in range(0, nb, 8):
        n = min(8, nb - b)
        m = f32x8_head(_mins8(w, wo + type_size * b, type_size, n), n)
        acc = fma_f32x8(m, load_f32x8(ys, i + b), acc)
    return hsum_f32x8(acc)


@njit(cache=True, inline="always")
def _min_sum4(w, wo, type_size, nb, ys, i):
    """_min_sum for tokens t..t+3 (ys from i, nb per token), the mins gathered once."""
    a0 = a1 = a2 = a3 = f32x8_zero()
    for b in range(0, nb, 8):
        n = min(8, nb - b)
        m = f32x8_head(_mins8(w, wo + type_size * b, type_size, n), n)
        a0 = fma_f32x8(m, load_f32x8(ys, i + b), a0)
        a1 = fma_f32x8(m, load_f32x8(ys, i + nb + b), a1)
        a2 = fma_f32x8(m, load_f32x8(ys, i + 2 * nb + b), a2)
        a3 = fma_f32x8(m, load_f32x8(ys, i + 3 * nb + b), a3)
    return hsum_f32x8(a0), hsum_f32x8(a1), hsum_f32x8(a2), hsum_f32x8(a3)


@njit(cache=True)
def _x_q4_1(w, o):
    """block_q4_1 (d | m | qs[16]) -> 32 quants 0..15."""
    return nibbles_i8x32(w, o + 4)


@njit(cache=True)
def _x_q5_1(w, o):
    """block_q5_1 (d | m | qh u32 | qs[16]) -> 32 quants 0..31."""
    return i8x32_or(nibbles_i8x32(w, o + 8), bits_i8x32(u32_at(w, o + 4), 0x10, 0))


@njit(cache=True, inline="always")
def _dot_legacy_min(decode, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t):
    """Q4_1 / Q5_1 (ggml_vec_dot_q4_1_q8_1): sum of d_x d_y sumi + m_x s_y, the quants unsigned."""
    return _dot_legacy(decode, False, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t) + _min_sum(
        w, wo, type_size, nb, ys, t * nb
    )


@njit(cache=True, inline="always")
def _dot4_legacy_min(decode, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t):
    y0, y1, y2, y3 = _dot4_legacy(decode, False, type_size, w, wo, nb, yq, yd, ys, ybs, yf, t)
    m0, m1, m2, m3 = _min_sum4(w, wo, type_size, nb, ys, t * nb)
    return y0 + m0, y1 + m1, y2 + m2, y3 + m3


# -- K-quants: super-blocks of 256 against Q8_K --------------------------------------------------------
#
# Each super-block b gives, per token, an int32x8 `isum` (sum over sub-blocks of scale * quant dot, the
# quants unsigned: any offset comes back through the bsums) and for Q2_K/Q4_K/Q5_K an int32x8 `msum`
# (sum of bsums * mins); then acc += d_x d_y isum - dmin_x d_y msum, as ggml's vec_dot_<type>_q8_K.


@njit(cache=True)
def _byte(word, j):
    return (word >> (8 * j)) & 0xFF


@njit(cache=True)
def _scales_mins_k4(w, o):
    """Q4_K / Q5_K: 12 packed bytes at o -> 8 six-bit scales and 8 mins, as the bytes of two int64
    (the kmask / utmp shuffle of ggml_vec_dot_q4_K_q8_K)."""
    u0 = u32_at(w, o)
    u1 = u32_at(w, o + 4)
    u2 = u32_at(w, o + 8)
    scales_hi = (u2 & 0x0F0F0F0F) | (((u0 >> 6) & 0x03030303) << 4)
    mins_hi = ((u2 >> 4) & 0x0F0F0F0F) | (((u1 >> 6) & 0x03030303) << 4)
    return (u0 & 0x3F3F3F3F) | (scales_hi << 32), (u1 & 0x3F3F3F3F) | (mins_hi << 32)


@njit(cache=True)
def _scales_q3_k(w, o):
    """Q3_K: 12 packed bytes at o -> 16 six-bit scales (0..63, used minus 32), as two int64 of 8 bytes."""
    a0 = u32_at(w, o)
    a1 = u32_at(w, o + 4)
    tmp = u32_at(w, o + 8)
    s0 = (a0 & 0x0F0F0F0F) | (((tmp >> 0) & 0x03030303) << 4)
    s1 = (a1 & 0x0F0F0F0F) | (((tmp >> 2) & 0x03030303) << 4)
    s2 = ((a0 >> 4) & 0x0F0F0F0F) | (((tmp >> 4) & 0x03030303) << 4)
    s3 = ((a1 >> 4) & 0x0F0F0F0F) | (((tmp >> 6) & 0x03030303) << 4)
    return s0 | (s1 << 32), s2 | (s3 << 32)


@njit(cache=True)
def _i8(v):
    """A byte (0..255) read as int8_t."""
    return np.int64(v) - ((np.int64(v) & 0x80) << 1)


# Q2_K. block: scales[16] (scale low nibble, min high) | qs[64] | d fp16 @80 | dmin fp16 @82
@njit(cache=True)
def _isum_q2_k(w, o, yq, y):
    isum = i32x8_zero()
    for k in range(2):  # halves of 128 values: 32 bytes of 2-bit quants at shifts 0, 2, 4, 6
        q2 = load_i8x32(w, o + 16 + 32 * k)
        for j in range(4):
            q = i8x32_and(i8x32_shr(q2, 2 * j), 3)
            s = o + 8 * k + 2 * j
            p = dot_u8(q, load_i8x32(yq, y + 128 * k + 32 * j))
            isum = i32x8_add(isum, madd_scales2(p, item(w, s) & 0x0F, item(w, s + 1) & 0x0F))
    return isum


@njit(cache=True, inline="always")
def _dot_q2_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 84 * b
        yb = t * nb + b
        isum = _isum_q2_k(w, o, yq, yb * QK_K)
        msum = madd_i16(load_i16x16(ybs, 16 * yb), i16x16_u8(w, o, 4, 0x0F))
        acc = _k_acc_min(acc, isum, msum, w, o + 80, item(yd, yb))
    return hsum_f32x8(acc)


# Q3_K. block: hmask[32] | qs[64] | scales[12] | d fp16 @108; value = (2 bits | hmask bit << 2) - 4
@njit(cache=True)
def _isum_q3_k(w, o, yq, y):
    scales_lo, scales_hi = _scales_q3_k(w, o + 96)
    isum = i32x8_zero()
    for k in range(2):
        q3 = load_i8x32(w, o + 32 + 32 * k)
        for j in range(4):
            g = 4 * k + j  # run of 32 values: its high bits are bit g of hmask
            q = i8x32_or(i8x32_and(i8x32_shr(q3, 2 * j), 3), byte_bits_i8x32(w, o, g, 4))
            p = dot_u8(q, load_i8x32(yq, y + 128 * k + 32 * j))
            word = scales_lo if k == 0 else scales_hi
            isum = i32x8_add(isum, madd_scales2(p, _byte(word, 2 * j) - 32, _byte(word, 2 * j + 1) - 32))
    return isum, scales_lo, scales_hi


@njit(cache=True, inline="always")
def _dot_q3_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 110 * b
        yb = t * nb + b
        isum, scales_lo, scales_hi = _isum_q3_k(w, o, yq, yb * QK_K)
        # the - 4 of every quant: sum over sub-blocks of (scale - 32) * 4 * bsum
        offset = madd_i16(load_i16x16(ybs, 16 * yb), i16x16_words(scales_lo, scales_hi, -32))
        acc = _k_acc(acc, i32x8_sub(isum, i32x8_shl(offset, 2)), w, o + 108, item(yd, yb))
    return hsum_f32x8(acc)


# Q4_K. block: d fp16 | dmin fp16 | scales[12] | qs[128]; 32 bytes give sub-blocks 2c (low nibbles), 2c+1
@njit(cache=True, inline="always")
def _q4_k_quants(w, o, c):
    q = load_i8x32(w, o + 16 + 32 * c)
    return i8x32_and(q, 0x0F), i8x32_shr(q, 4)


@njit(cache=True, inline="always")
def _isum_k32(lo, hi, yq, y, c, scales):
    """Sub-blocks 2c, 2c+1 (32 values each) of a Q4_K/Q5_K super-block against Q8_K quants at y."""
    p_lo = madd_scale(dot_u8(lo, load_i8x32(yq, y + 64 * c)), _byte(scales, 2 * c))
    p_hi = madd_scale(dot_u8(hi, load_i8x32(yq, y + 64 * c + 32)), _byte(scales, 2 * c + 1))
    return i32x8_add(p_lo, p_hi)


@njit(cache=True, inline="always")
def _dot_q4_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 144 * b
        yb = t * nb + b
        scales, mins = _scales_mins_k4(w, o + 4)
        isum = i32x8_zero()
        for c in range(4):
            lo, hi = _q4_k_quants(w, o, c)
            isum = i32x8_add(isum, _isum_k32(lo, hi, yq, yb * QK_K, c, scales))
        msum = madd_i16(load_i16x16(ybs, 16 * yb), i16x16_word_pairs(mins))
        acc = _k_acc_min(acc, isum, msum, w, o, item(yd, yb))
    return hsum_f32x8(acc)


@njit(cache=True, inline="always")
def _dot4_q4_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    a0 = f32x8_zero()
    a1 = f32x8_zero()
    a2 = f32x8_zero()
    a3 = f32x8_zero()
    for b in range(nb):
        o = wo + 144 * b
        yb = t * nb + b  # Q8_K block of token t; token t + i is nb blocks further
        scales, mins = _scales_mins_k4(w, o + 4)
        s0 = s1 = s2 = s3 = i32x8_zero()
        for c in range(4):
            lo, hi = _q4_k_quants(w, o, c)
            s0 = i32x8_add(s0, _isum_k32(lo, hi, yq, yb * QK_K, c, scales))
            s1 = i32x8_add(s1, _isum_k32(lo, hi, yq, (yb + nb) * QK_K, c, scales))
            s2 = i32x8_add(s2, _isum_k32(lo, hi, yq, (yb + 2 * nb) * QK_K, c, scales))
            s3 = i32x8_add(s3, _isum_k32(lo, hi, yq, (yb + 3 * nb) * QK_K, c, scales))
        mins16 = i16x16_word_pairs(mins)
        a0 = _k_acc_min(a0, s0, madd_i16(load_i16x16(ybs, 16 * yb), mins16), w, o, item(yd, yb))
        yb += nb
        a1 = _k_acc_min(a1, s1, madd_i16(load_i16x16(ybs, 16 * yb), mins16), w, o, item(yd, yb))
        yb += nb
        a2 = _k_acc_min(a2, s2, madd_i16(load_i16x16(ybs, 16 * yb), mins16), w, o, item(yd, yb))
        yb += nb
        a3 = _k_acc_min(a3, s3, madd_i16(load_i16x16(ybs, 16 * yb), mins16), w, o, item(yd, yb))
    return hsum_f32x8(a0), hsum_f32x8(a1), hsum_f32x8(a2), hsum_f32x8(a3)


@njit(cache=True, inline="always")
def _k_acc(acc, isum, w, o_d, dy):
    """acc + d_x d_y isum (d_x: the fp16 at o_d)."""
    return fma_i32x8(isum, f16_scale8(w, o_d, dy), acc)


@njit(cache=True, inline="always")
def _k_acc_min(acc, isum, msum, w, o_d, dy):
    """acc + d_x d_y isum - dmin_x d_y msum (d_x, dmin_x: the fp16 at o_d, o_d + 2)."""
    return fma_i32x8(msum, f16_scale8(w, o_d + 2, -dy), _k_acc(acc, isum, w, o_d, dy))


# Q5_K. block: d | dmin | scales[12] | qh[32] | qs[128]; the fifth bit of sub-block s is bit s of qh[l]
@njit(cache=True, inline="always")
def _dot_q5_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 176 * b
        yb = t * nb + b
        scales, mins = _scales_mins_k4(w, o + 4)
        isum = i32x8_zero()
        for c in range(4):
            q = load_i8x32(w, o + 48 + 32 * c)
            lo = i8x32_or(i8x32_and(q, 0x0F), byte_bits_i8x32(w, o + 16, 2 * c, 16))
            hi = i8x32_or(i8x32_shr(q, 4), byte_bits_i8x32(w, o + 16, 2 * c + 1, 16))
            isum = i32x8_add(isum, _isum_k32(lo, hi, yq, yb * QK_K, c, scales))
        msum = madd_i16(load_i16x16(ybs, 16 * yb), i16x16_word_pairs(mins))
        acc = _k_acc_min(acc, isum, msum, w, o, item(yd, yb))
    return hsum_f32x8(acc)


# Q6_K. block: ql[128] | qh[64] | scales int8[16] | d fp16 @208; value = (4 low | 2 high bits << 4) - 32
@njit(cache=True, inline="always")
def _q6_k_quants(ql0, ql1, qh, k):
    """Run k (0..3) of 32 values in a half of 128: low nibbles of ql0, ql1, then their high nibbles;
    the top two bits at shift 2k of qh. Unsigned 0..63."""
    lo = i8x32_and(i8x32_shr(ql0 if k % 2 == 0 else ql1, 4 * (k // 2)), 0x0F)
    return i8x32_or(lo, i8x32_shl(i8x32_and(i8x32_shr(qh, 2 * k), 3), 4))


@njit(cache=True, inline="always")
def _isum_q6_k(q, yq, y, w, s):
    """32 values against Q8_K quants at y; sub-blocks of 16 scaled by the int8 scales at w[s], w[s+1]."""
    return madd_scales2(dot_u8(q, load_i8x32(yq, y)), _i8(item(w, s)), _i8(item(w, s + 1)))


@njit(cache=True, inline="always")
def _offset_q6_k(w, o, ybs, yb):
    """The - 32 of every quant: 32 * sum over sub-blocks of scale * bsum."""
    return i32x8_shl(madd_i16(load_i16x16(ybs, 16 * yb), load_i8x16_i16(w, o + 192)), 5)


@njit(cache=True, inline="always")
def _dot_q6_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 210 * b
        yb = t * nb + b
        isum = i32x8_zero()
        for n in range(2):
            ql0 = load_i8x32(w, o + 64 * n)
            ql1 = load_i8x32(w, o + 64 * n + 32)
            qh = load_i8x32(w, o + 128 + 32 * n)
            for k in range(4):
                q = _q6_k_quants(ql0, ql1, qh, k)
                y = yb * QK_K + 128 * n + 32 * k
                isum = i32x8_add(isum, _isum_q6_k(q, yq, y, w, o + 192 + 8 * n + 2 * k))
        isum = i32x8_sub(isum, _offset_q6_k(w, o, ybs, yb))
        acc = _k_acc(acc, isum, w, o + 208, item(yd, yb))
    return hsum_f32x8(acc)


@njit(cache=True, inline="always")
def _dot4_q6_k(w, wo, nb, yq, yd, ys, ybs, yf, t):
    a0 = f32x8_zero()
    a1 = f32x8_zero()
    a2 = f32x8_zero()
    a3 = f32x8_zero()
    for b in range(nb):
        o = wo + 210 * b
        yb = t * nb + b
        s0 = s1 = s2 = s3 = i32x8_zero()
        for n in range(2):
            ql0 = load_i8x32(w, o + 64 * n)
            ql1 = load_i8x32(w, o + 64 * n + 32)
            qh = load_i8x32(w, o + 128 + 32 * n)
            for k in range(4):
                q = _q6_k_quants(ql0, ql1, qh, k)
                y = yb * QK_K + 128 * n + 32 * k
                s = o + 192 + 8 * n + 2 * k
                s0 = i32x8_add(s0, _isum_q6_k(q, yq, y, w, s))
                s1 = i32x8_add(s1, _isum_q6_k(q, yq, y + nb * QK_K, w, s))
                s2 = i32x8_add(s2, _isum_q6_k(q, yq, y + 2 * nb * QK_K, w, s))
                s3 = i32x8_add(s3, _isum_q6_k(q, yq, y + 3 * nb * QK_K, w, s))
        a0 = _k_acc(a0, i32x8_sub(s0, _offset_q6_k(w, o, ybs, yb)), w, o + 208, item(yd, yb))
        yb += nb
        a1 = _k_acc(a1, i32x8_sub(s1, _offset_q6_k(w, o, ybs, yb)), w, o + 208, item(yd, yb))
        yb += nb
        a2 = _k_acc(a2, i32x8_sub(s2, _offset_q6_k(w, o, ybs, yb)), w, o + 208, item(yd, yb))
        yb += nb
        a3 = _k_acc(a3, i32x8_sub(s3, _offset_q6_k(w, o, ybs, yb)), w, o + 208, item(yd, yb))
    return hsum_f32x8(a0), hsum_f32x8(a1), hsum_f32x8(a2), hsum_f32x8(a3)


# IQ4_XS. block: d fp16 | scales_h u16 | scales_l[4] | qs[128]; sub-block ib of 32: (ls - 32) * kvalues
@njit(cache=True, inline="always")
def _dot_iq4_xs(w, wo, nb, yq, yd, ys, ybs, yf, t):
    acc = f32x8_zero()
    for b in range(nb):
        o = wo + 136 * b
        yb = t * nb + b
        scales_h = u32_at(w, o + 2) & 0xFFFF
        isum = i32x8_zero()
        for ib in range(8):
            ls = ((item(w, o + 4 + ib // 2) >> (4 * (ib % 2))) & 0x0F) | (((scales_h >> (2 * ib)) & 3) << 4)
            x = kvalues_iq4nl_i8x32(nibbles_i8x32(w, o + 8 + 16 * ib))
            p = dot_i8(x, load_i8x32(yq, yb * QK_K + 32 * ib))
            isum = i32x8_add(isum, madd_scale(p, np.int64(ls) - 32))
        acc = _k_acc(acc, isum, w, o, item(yd, yb))
    return hsum_f32x8(acc)


# -- float weights -------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _dot_float(load8, load1, size, w, wo, n, yq, yd, ys, ybs, yf, t):
    """Row of n values (`size` bytes each) dotted with yf[t]: float32 lanes, then the tail."""
    yo = t * n
    acc = f32x8_zero()
    n8 = n - n % 8
    for j in range(0, n8, 8):
        acc = fma_f32x8(load8(w, wo + size * j), load_f32x8(yf, yo + j), acc)
    s = hsum_f32x8(acc)
    for j in range(n8, n):
        s += load1(w, wo + size * j) * yf[yo + j]
    return s


# -- row drivers ---------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _chunk_rows(n_rows, row_bytes):
    """Rows per chunk: about 16 KiB of weights (they stay in L1/L2 across a prefill's token tiles), and
    at least MIN_CHUNKS chunks so that the threads finish together."""
    rows = max(1, min(64, 16384 // max(row_bytes, 1)))
    return max(1, min(rows, (n_rows + MIN_CHUNKS - 1) // MIN_CHUNKS))


# -- the table: one row per weight type ----------------------------------------------------------------
#
# name: the suffix of the generated functions; act: the activation format (ggml's vec_dot_type); dot /
# dot4: the row . token(s) expression in terms of the generic families above (the arguments every dot
# takes, `w, wo, nb, yq, yd, ys, ybs, yf, t`, are appended); dot4 None: no 4-token tile, each token in
# turn; x8: the group-block function of x8.py when the type has a row-interleaved kernel (prepare()
# repacks it then). Block sizes and bytes come from gguf's GGML_QUANT_SIZES.

T = GGMLQuantizationType
FORMATS: dict[GGMLQuantizationType, dict] = {
    T.F32: dict(name="f32", act="ACT_F32", dot="_dot_float(f32x8_at, f32_at, 4", dot4=None, x8=None),
    T.F16: dict(name="f16", act="ACT_F16", dot="_dot_float(f16x8_at, f16_at, 2", dot4=None, x8=None),
    T.BF16: dict(name="bf16", act="ACT_BF16", dot="_dot_float(bf16x8_at, bf16_at, 2", dot4=None, x8=None),
    T.Q4_0: dict(name="q4_0", act="ACT_Q8_0", dot="_dot_legacy(_x_q4_0, True, 18",
                 dot4="_dot4_legacy(_x_q4_0, True, 18", x8="_blk_q4_0"),
    T.Q5_0: dict(name="q5_0", act="ACT_Q8_0", dot="_dot_legacy(_x_q5_0, True, 22",
                 dot4="_dot4_legacy(_x_q5_0, True, 22", x8="_blk_q5_0"),
    T.Q8_0: dict(name="q8_0", act="ACT_Q8_0", dot="_dot_legacy(_x_q8_0, True, 34",
                 dot4="_dot4_legacy(_x_q8_0, True, 34", x8="_blk_q8_0"),
    T.IQ4_NL: dict(name="iq4_nl", act="ACT_Q8_0", dot="_dot_legacy(_x_iq4_nl, True, 18",
                   dot4="_dot4_legacy(_x_iq4_nl, True, 18", x8="_blk_iq4_nl"),
    T.Q4_1: dict(name="q4_1", act="ACT_Q8_1", dot="_dot_legacy_min(_x_q4_1, 20",
                 dot4="_dot4_legacy_min(_x_q4_1, 20", x8=None),
    T.Q5_1: dict(name="q5_1", act="ACT_Q8_1", dot="_dot_legacy_min(_x_q5_1, 24",
                 dot4="_dot4_legacy_min(_x_q5_1, 24", x8=None),
    T.Q2_K: dict(name="q2_k", act="ACT_Q8_K", dot="_dot_q2_k(", dot4=None, x8=None),
    T.Q3_K: dict(name="q3_k", act="ACT_Q8_K", dot="_dot_q3_k(", dot4=None, x8=None),
    T.Q4_K: dict(name="q4_k", act="ACT_Q8_K", dot="_dot_q4_k(", dot4="_dot4_q4_k(", x8="_blk_q4_k"),
    T.Q5_K: dict(name="q5_k", act="ACT_Q8_K", dot="_dot_q5_k(", dot4=None, x8="_blk_q5_k"),
    T.Q6_K: dict(name="q6_k", act="ACT_Q8_K", dot="_dot_q6_k(", dot4="_dot4_q6_k(", x8="_blk_q6_k"),
    T.IQ4_XS: dict(name="iq4_xs", act="ACT_Q8_K", dot="_dot_iq4_xs(", dot4=None, x8="_blk_iq4_xs"),
}  # fmt: skip
# the activation format each weight type is multiplied with (ggml's vec_dot_type)
VEC_DOT_TYPE = {t: {"ACT_F32": T.F32, "ACT_F16": T.F16, "ACT_BF16": T.BF16, "ACT_Q8_0": T.Q8_0,
                    "ACT_Q8_1": T.Q8_1, "ACT_Q8_K": T.Q8_K}[f["act"]] for t, f in FORMATS.items()}  # fmt: skip
del T

# -- the wrappers, generated from the table ------------------------------------------------------------
#
# Per type: `_rows_<name>` (rows r0..r1-1 against token t) and `_rows4_<name>` (tokens t..t+3), the dot
# inlined, compiled without reference counting (_nrt=False: they allocate nothing; otherwise each call
# would count references to its arrays, atomics the threads contend for); `_chunk_<name>`, a chunk of
# rows against every token (tiles of 4, then single tokens); `_matmul_<name>(w, x, out)`, the parallel
# entry (quantize x once, then x8.run: the one loop in which threads take chunks from a counter); and
# for x8 types `_x8rows_<name>` (a chunk of groups) / `_matmul_x8_<name>` over repacked weights. They
# are real module-level functions (compiled from this file's text below, with this file's name), so
# Numba caches each like any other.

_FLOAT_DOT = "(w, wo, nb, yq, yd, ys, ybs, yf, t)"

_TEMPLATE = '''
@njit(cache=True, _nrt=False)
def _rows_{name}(w, row_bytes, r0, r1, nb, yq, yd, ys, ybs, yf, t, of, n_rows):
    for r in range(r0, r1):
        of[t * n_rows + r] = {dot}w, r * row_bytes, nb, yq, yd, ys, ybs, yf, t)
'''
_TEMPLATE4 = '''
@njit(cache=True, _nrt=False)
def _rows4_{name}(w, row_bytes, r0, r1, nb, yq, yd, ys, ybs, yf, t, of, n_rows):
    for r in range(r0, r1):
        y0, y1, y2, y3 = {dot4}w, r * row_bytes, nb, yq, yd, ys, ybs, yf, t)
        of[t * n_rows + r] = y0
        of[(t + 1) * n_rows + r] = y1
        of[(t + 2) * n_rows + r] = y2
        of[(t + 3) * n_rows + r] = y3
'''
_TEMPLATE_CHUNK = '''
@njit(cache=True, _nrt=False)
def _chunk_{name}(w, r0, r1, nc, yq, yd, ys, ybs, yf, yqs, of, n_tokens, n_rows):
    row_bytes = w.size // n_rows
    nb = nc // {block_size}
    t = 0{tiles}
    while t < n_tokens:
        _rows_{name}(w, row_bytes, r0, r1, nb, yq, yd, ys, ybs, yf, t, of, n_rows)
        t += 1


@njit(cache=True, parallel=True)
def _matmul_{name}(w, x, out):
    yq, yd, ys, ybs, yf, yqs = _quantize_activations(x, {act})
    n_rows = out.shape[1]
    x8.run(_chunk_{name}, n_rows, _chunk_rows(n_rows, w.size // n_rows), w, x.shape[1], yq, yd, ys, ybs, yf, yqs, out)
'''
_TILES = '''
    while t + 4 <= n_tokens:
        _rows4_{name}(w, row_bytes, r0, r1, nb, yq, yd, ys, ybs, yf, t, of, n_rows)
        t += 4'''
_TEMPLATE_X8 = '''
@njit(cache=True, _nrt=False)
def _x8rows_{name}(w, g0, g1, nc, yq, yd, ys, ybs, yf, yqs, of, n_tokens, n_rows):
    x8.rows(x8.{x8}, x8.{x8_4}, {group_bytes}, {block_size}, w, g0, g1, nc, yq, yd, yqs, ybs, of, n_tokens, n_rows)


@njit(cache=True, parallel=True)
def _matmul_x8_{name}(w, x, out):
    yq, yd, ys, ybs, yf, yqs = _quantize_activations(x, {act})
    nc = x.shape[1]
    n_groups, per = x8.group_chunks(out.shape[1], nc // {block_size} * {type_size})
    x8.run(_x8rows_{name}, n_groups, per, w, nc, yq, yd, ys, ybs, yf, yqs, out)
'''


def wrapper_source(f: dict, block_size: int, type_size: int) -> str:
    """The generated functions of one table row (FORMATS here, LOWBIT in lowbit.py), as source text."""

    def call(expr: str) -> str:  # the dot expression, ready for its arguments
        return expr if expr.endswith(("(", ", ")) else expr + ", "

    args = dict(f, dot=call(f["dot"]), dot4=call(f["dot4"] or "("), block_size=block_size, type_size=type_size,
                group_bytes=8 * type_size)  # fmt: skip
    src = [_TEMPLATE.format(**args)]
    if f["dot4"]:
        src.append(_TEMPLATE4.format(**args))
    src.append(_TEMPLATE_CHUNK.format(tiles=_TILES.format(**args) if f["dot4"] else "", **args))
    if f.get("x8"):  # a format's own 4-token block function where x8.py has one (_blk4_<type>)
        x8_4 = "_blk4" + f["x8"][len("_blk"):]
        src.append(_TEMPLATE_X8.format(x8_4=x8_4 if hasattr(x8, x8_4) else "_each4", **args))
    return "".join(src)


def _generate() -> tuple[dict, dict]:
    src = [wrapper_source(f, *GGML_QUANT_SIZES[t]) for t, f in FORMATS.items()]  # float types: (1, bytes)
    exec(compile("".join(src), __file__, "exec"), globals())
    plain = {t: globals()[f"_matmul_{f['name']}"] for t, f in FORMATS.items()}
    packed = {t: globals()[f"_matmul_x8_{f['name']}"] for t, f in FORMATS.items() if f["x8"]}
    return plain, packed


MATMUL_KERNELS, X8_KERNELS = _generate()


# -- checked entry points ------------------------------------------------------------------------------


# weight type -> (kernel, values per block, bytes per block)
_MATMUL = {t: (k, *GGML_QUANT_SIZES[t]) for t, k in MATMUL_KERNELS.items()}


def _weight_bytes(w: QTensor, block_size: int, type_size: int) -> np.ndarray:
    """The weight's bytes as one flat uint8 array, read-only (so that each kernel compiles once whether
    the weight is an mmap or a fresh array), after checking them against the shape. Kept per QTensor
    while it lives: the checks cost more than a small matmul."""
    entry = _FLAT.get(id(w))
    if entry is not None and entry[0]() is w:
        return entry[1]
    _require_plain(w)
    raw = w.raw
    if raw.ndim != 2:
        raise ValueError(
            f"{w.name}: matmul takes a 2-D weight (n_rows, n_cols), not raw bytes of shape {raw.shape}; "
            "index a 3-D (expert) tensor down to one matrix first."
        )
    n_rows, n_cols = w.n_rows, w.n_cols
    need = (n_rows, n_cols // block_size * type_size)
    if raw.dtype != np.uint8 or raw.shape != need or n_cols % block_size:
        raise ValueError(
            f"{w.name}: a {w.ggml_type.name} weight of {n_rows} rows x {n_cols} columns needs raw uint8 of "
            f"shape {need} (columns a multiple of {block_size}), not {raw.dtype} {raw.shape}."
        )
    flat = np.ascontiguousarray(raw).reshape(-1)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False
    _FLAT[id(w)] = (weakref.ref(w), flat)
    weakref.finalize(w, _FLAT.pop, id(w), None)
    return flat


_FLAT: dict[int, tuple[weakref.ref, np.ndarray]] = {}  # id(QTensor) -> (the tensor, its flat bytes)
_X8_PLANS: dict[int, tuple] = {}  # id(QTensor) -> (the tensor, kernel, flat bytes) of an x8 weight


def repack_enabled() -> bool:
    """Whether prepare() repacks weights at load (EDGEINFER_REPACK=0: no, as for the native backend)."""
    return os.environ.get("EDGEINFER_REPACK", "1").strip().lower() not in ("0", "off", "false", "no")


def prepare(w: QTensor) -> QTensor:
    """w repacked to the x8 layout (x8.py: rows interleaved eight at a time, native/x8.h's bytes) when
    its type has an x8 kernel here, else w itself."""
    if w.layout != "plain" or w.ggml_type not in X8_KERNELS or w.raw.ndim != 2 or w.n_rows < 1:
        return w
    if not repack_enabled():
        return w
    block_size, type_size = GGML_QUANT_SIZES[w.ggml_type]
    flat = _weight_bytes(w, block_size, type_size)  # checked against the shape
    packed = x8.pack(w.ggml_type, flat.reshape(w.n_rows, -1), type_size)
    return QTensor(w.name, w.ggml_type, w.ne, packed, layout="x8")


def to_plain(w: QTensor) -> QTensor:
    """The file's layout of an x8 weight (lookups, dequantization; types without an x8 kernel here)."""
    if w.layout != "x8":
        return w
    _, type_size = GGML_QUANT_SIZES[w.ggml_type]
    return QTensor(w.name, w.ggml_type, w.ne, x8.unpack(w.ggml_type, w.raw, w.n_rows, type_size))


def _x8_plan(w: QTensor, plain_kernel, block_size: int, type_size: int):
    """(kernel, flat bytes) of an x8 weight, checked once per QTensor; a type without an x8 kernel here
    (repacked by the native backend) runs in the file's layout, unpacked once."""
    entry = _X8_PLANS.get(id(w))
    if entry is not None and entry[0]() is w:
        return entry[1], entry[2]
    if w.ggml_type not in x8.FIELDS:
        raise ValueError(f"{w.name}: {w.ggml_type.name} has no x8 layout")
    raw = w.raw
    need = ((w.n_rows + 7) // 8 * 8, w.n_cols // block_size * type_size)
    if raw.dtype != np.uint8 or raw.shape != need or w.n_cols % block_size:
        raise ValueError(
            f"{w.name}: an x8 {w.ggml_type.name} weight of {w.n_rows} rows x {w.n_cols} columns needs raw "
            f"uint8 of shape {need}, not {raw.dtype} {raw.shape}."
        )
    kernel = X8_KERNELS.get(w.ggml_type)
    if kernel is None:
        kernel, flat = plain_kernel, _weight_bytes(to_plain(w), block_size, type_size)
    else:
        flat = np.ascontiguousarray(raw).reshape(-1)
        if flat.flags.writeable:
            flat = flat.view()
            flat.flags.writeable = False
    _X8_PLANS[id(w)] = (weakref.ref(w), kernel, flat)
    weakref.finalize(w, _X8_PLANS.pop, id(w), None)
    return kernel, flat


def _activations(w: QTensor, x) -> np.ndarray:
    """x as C-contiguous float32 (n_tokens, n_cols): floats converted, anything else refused."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{w.name}: x must hold floats (float32), not {x.dtype}.")
        x = x.astype(np.float32)
    if x.ndim != 2 or x.shape[1] != w.n_cols:
        raise ValueError(f"{w.name}: x has shape {x.shape}, expected (n_tokens, {w.n_cols}).")
    return np.ascontiguousarray(x)


def matmul(w: QTensor, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T: x float32 (n_tokens, n_cols) -> y float32 (n_tokens, n_rows), llama.cpp's way.

    x of another float dtype or memory layout is converted. `out`, if given, must be a writeable
    C-contiguous float32 (n_tokens, n_rows); it may overlap x (x is copied, quantized or rounded, before
    any output is written). Threads: numba.set_num_threads (the backend sets it).
    """
    entry = _MATMUL.get(w.ggml_type)
    if entry is None:
        get_format(w.ggml_type, w.name)  # UnsupportedTypeError for a type edgeinfer cannot decode at all
        name = GGMLQuantizationType(w.ggml_type).name
        raise UnsupportedTypeError(
            f"{w.name}: the Numba backend has no matmul for {name} weights; "
            f"it multiplies {', '.join(t.name for t in MATMUL_KERNELS)}."
        )
    kernel, block_size, type_size = entry
    if w.layout == "x8":
        kernel, flat = _x8_plan(w, kernel, block_size, type_size)
    else:
        flat = _weight_bytes(w, block_size, type_size)
    if type(x) is not np.ndarray or x.dtype is not _F32 or x.ndim != 2 or not x.flags.c_contiguous:
        x = _activations(w, x)
    elif x.shape[1] != w.ne[0]:
        raise ValueError(f"{w.name}: x has shape {x.shape}, expected (n_tokens, {w.n_cols}).")
    shape = (x.shape[0], w.n_rows)
    if out is None:
        out = np.empty(shape, _F32)
    elif type(out) is not np.ndarray or out.dtype is not _F32 or out.shape != shape or not _writeable_c(out):
        raise ValueError(
            f"{w.name}: out must be a writeable C-contiguous float32 array of shape {shape}, "
            f"not {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}."
        )
    if out.size:
        kernel(flat, x, out)
    return out


_F32 = np.dtype(np.float32)


def _writeable_c(a: np.ndarray) -> bool:
    flags = a.flags
    return flags.c_contiguous and flags.writeable


def _require_plain(w: QTensor) -> None:
    if w.layout != "plain":
        raise ValueError(
            f"{w.name}: its blocks are in the {w.layout!r} layout of the backend that prepared it; "
            "run it on that backend (or load the model again for this one)."
        )


def get_rows(w: QTensor, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of W dequantized: float32 (len(ids), n_cols) (embedding lookup)."""
    w = to_plain(w)
    _require_plain(w)
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{w.name}: row ids must be integers, not {ids.dtype}.")
    ids = ids.reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= w.n_rows):
        raise IndexError(f"{w.name}: row ids must lie in 0..{w.n_rows - 1}, got {ids.min()}..{ids.max()}.")
    raw = w.raw.reshape(-1, w.raw.shape[-1])
    return dequant.dequantize_rows(np.ascontiguousarray(raw[ids]), w.ggml_type)


def dequantize(w: QTensor) -> np.ndarray:
    """The whole tensor as float32, numpy-order shape."""
    w = to_plain(w)
    _require_plain(w)
    return dequant.dequantize(w.raw, w.ggml_type, w.shape, w.name)
